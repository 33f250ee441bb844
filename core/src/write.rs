//! One Kafka write as the plan asks for it, and Kafka's refusal of it as far as what to do
//! next is concerned. The sink turns a `Write` into a record and a Kafka error into a
//! [`Failure`]; everything that decides lives here and in [`crate::plan`].

use bytes::Bytes;
use std::borrow::Cow;
use std::sync::Arc;

/// One Kafka header. weir's own names are static and user-property names owned; values
/// are shared bytes, so a cohort's identity goes onto every record without a copy.
pub type HeaderField = (Cow<'static, str>, Bytes);

/// One Kafka write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Topic (shared with the topology, not copied for each write).
    pub topic: Arc<str>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<HeaderField>,
}

/// Why a write failed, as far as what to do next is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The record is larger than Kafka accepts: writing it again cannot work, a smaller
    /// one might.
    TooLarge(String),
    /// Kafka refuses this record for good (invalid, no such topic).
    Permanent(String),
    /// weir's principal may not write the topic (an ACL): not the message's fault, and an
    /// operator can fix it while weir runs, so the write is held and retried, never
    /// quarantined.
    Unauthorized(String),
    /// Anything else: worth writing again.
    Transient(String),
}

impl Failure {
    /// What Kafka said.
    pub fn reason(&self) -> &str {
        match self {
            Failure::TooLarge(w)
            | Failure::Permanent(w)
            | Failure::Unauthorized(w)
            | Failure::Transient(w) => w,
        }
    }
}
