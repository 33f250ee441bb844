//! One Kafka write as the plan asks for it, and Kafka's refusal of it as far as what to do
//! next is concerned. The sink turns a `Write` into a record and a Kafka error into a
//! [`Failure`]; everything that decides lives here and in [`crate::plan`].

use bytes::Bytes;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::sync::Arc;

/// One Kafka header. weir's own names are static and user-property names owned; values
/// are `Bytes`, cheap to clone where a field is copied (a quarantine entry's headers).
pub type HeaderField = (Cow<'static, str>, Bytes);

/// Header fields held together: the names, and the values end to end in one buffer. A
/// message's list is then two allocations (its `Arc` and the buffer), where a list of
/// separately owned values was one per value, the list and the `Arc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    /// Each name, with the end of its value in `bytes` (it starts where the one before ends).
    names: SmallVec<[(Cow<'static, str>, usize); 6]>,
    bytes: Vec<u8>,
}

impl HeaderList {
    /// An empty list with room for `bytes` bytes of values.
    pub fn with_capacity(bytes: usize) -> Self {
        HeaderList {
            names: SmallVec::new(),
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Add a field after the others.
    pub fn push(&mut self, name: impl Into<Cow<'static, str>>, value: &[u8]) {
        self.bytes.extend_from_slice(value);
        self.names.push((name.into(), self.bytes.len()));
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Cow<'static, str>, &[u8])> {
        let mut start = 0;
        self.names.iter().map(move |(name, end)| {
            let value = &self.bytes[start..*end];
            start = *end;
            (name, value)
        })
    }

    /// Every field as one of its own (a write that changes its headers, a quarantine entry).
    pub fn to_fields(&self) -> impl Iterator<Item = HeaderField> + '_ {
        self.iter()
            .map(|(name, value)| (name.clone(), Bytes::copy_from_slice(value)))
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl From<Vec<HeaderField>> for HeaderList {
    fn from(fields: Vec<HeaderField>) -> Self {
        let mut list = HeaderList::default();
        for (name, value) in fields {
            list.push(name, &value);
        }
        list
    }
}

/// Headers held in common: a plugin version's identity (every record of the version) or a
/// message's own headers (every write of the message).
pub type SharedHeaders = Arc<HeaderList>;

/// A write's headers, in order: the shared lists, then the write's own fields.
///
/// A write holds a shared list by one reference count instead of a copy of each field:
/// each field copied would be an atomic count touched twice (clone and drop) and a slot in a
/// list allocated per write.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    shared: SmallVec<[SharedHeaders; 2]>,
    own: Vec<HeaderField>,
}

impl Headers {
    /// The shared lists, in order, and no fields of the write's own yet.
    pub fn shared(lists: impl IntoIterator<Item = SharedHeaders>) -> Self {
        Self {
            shared: lists.into_iter().collect(),
            own: Vec::new(),
        }
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Cow<'static, str>, &[u8])> {
        self.shared
            .iter()
            .flat_map(|l| l.iter())
            .chain(self.own.iter().map(|(name, value)| (name, value.as_ref())))
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.shared.iter().map(|l| l.len()).sum::<usize>() + self.own.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add a field after the others.
    pub fn push(&mut self, field: HeaderField) {
        self.own.push(field);
    }

    /// Every field as this write's own, to change them (rare: shrinking a quarantine entry).
    pub fn to_mut(&mut self) -> &mut Vec<HeaderField> {
        if !self.shared.is_empty() {
            let mut all: Vec<HeaderField> = Vec::with_capacity(self.len());
            for list in self.shared.drain(..) {
                all.extend(list.to_fields());
            }
            all.append(&mut self.own);
            self.own = all;
        }
        &mut self.own
    }
}

impl From<Vec<HeaderField>> for Headers {
    fn from(own: Vec<HeaderField>) -> Self {
        Self {
            shared: SmallVec::new(),
            own,
        }
    }
}

/// Equal when the fields are, however they are held.
impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

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
    pub headers: Headers,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn field(k: &'static str, v: &'static str) -> HeaderField {
        (k.into(), Bytes::from_static(v.as_bytes()))
    }

    fn shared(fields: Vec<HeaderField>) -> SharedHeaders {
        Arc::new(HeaderList::from(fields))
    }

    fn names(h: &Headers) -> Vec<&str> {
        h.iter().map(|(k, _)| k.as_ref()).collect()
    }

    #[test]
    fn shared_lists_come_first_in_order_then_the_writes_own() {
        let identity = shared(vec![field("a", "1"), field("b", "2")]);
        let message = shared(vec![field("c", "3")]);
        let mut h = Headers::shared([identity.clone(), message]);
        h.push(field("d", "4"));
        assert_eq!(names(&h), ["a", "b", "c", "d"]);
        assert_eq!(h.len(), 4);
        // Held by reference, not copied.
        assert_eq!(Arc::strong_count(&identity), 2);
    }

    #[test]
    fn equality_is_of_the_fields_however_held() {
        let held = Headers::shared([shared(vec![field("a", "1")])]);
        assert_eq!(held, Headers::from(vec![field("a", "1")]));
        assert_ne!(held, Headers::from(vec![field("a", "2")]));
        assert_ne!(held, Headers::default());
        assert!(Headers::default().is_empty());
    }

    #[test]
    fn changing_fields_copies_the_shared_ones_and_leaves_the_lists_alone() {
        let identity = shared(vec![field("a", "1"), field("b", "2")]);
        let mut h = Headers::shared([identity.clone()]);
        h.push(field("c", "3"));
        h.to_mut().retain(|(k, _)| k != "b");
        assert_eq!(names(&h), ["a", "c"]);
        assert_eq!(identity.len(), 2);
        assert_eq!(Arc::strong_count(&identity), 1);
    }

    #[test]
    fn a_list_gives_back_each_value_whole_and_in_order() {
        let mut list = HeaderList::default();
        list.push("id", b"r-1");
        list.push("empty", b"");
        let long = vec![b'x'; 1000];
        list.push(String::from("mqtt.site"), &long);
        list.push("last", b"z");
        let fields: Vec<(&str, &[u8])> = list.iter().map(|(k, v)| (k.as_ref(), v)).collect();
        assert_eq!(
            fields,
            [
                ("id", &b"r-1"[..]),
                ("empty", b""),
                ("mqtt.site", &long),
                ("last", b"z")
            ]
        );
        assert_eq!(list.len(), 4);
        assert!(HeaderList::default().is_empty());
    }
}
