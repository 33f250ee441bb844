//! What the one-off jobs (`weir replay`, `weir quarantine redrive`) share with each other:
//! opening the plugin store and the control plane once Kafka answers, preparing a stored
//! version for one cohort, a one-cohort topology to write through, and a writer that keeps
//! a bounded number of writes awaiting Kafka.

use crate::config::{Cohort, Config};
use crate::control::{Control, ControlError, State};
use crate::encode::registry::{RegistryClient, RegistryClientError};
use crate::lifecycle::{cohort_plan, subject};
use crate::sink::Sink;
use crate::store::{Store, StoreError};
use crate::transform::{CallLimits, Configured, Host, LoadError, Plugin};
use std::sync::Arc;
use weir_core::plan::Topology;
use weir_core::write::Write;

/// Why a job could not open what it needs or prepare a version.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The plugin store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka did not answer (the probe names the cause: refused login, TLS, unreachable).
    #[error(transparent)]
    Kafka(#[from] crate::capture::CaptureError),
    /// The control topic could not be read.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A stored component did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The plugin refused the cohort's settings.
    #[error("{plugin} refused cohort {cohort:?}'s config: {reason}")]
    Refused {
        /// name@version.
        plugin: String,
        /// The cohort.
        cohort: String,
        /// What the plugin said.
        reason: String,
    },
    /// The schema registry did not give the schema an id.
    #[error(transparent)]
    Registry(#[from] RegistryClientError),
}

/// The plugin store and the control plane's state, opened after Kafka answered: a refused
/// login or a failed TLS handshake is reported as itself, not as an unreadable topic.
pub struct Opened {
    /// The local plugin store.
    pub store: Store,
    /// Uploads and pins as the control topic holds them.
    pub state: Arc<State>,
    /// Kept for as long as the job runs.
    _control: Control,
}

/// Probe Kafka, then open the store and read the control topic `config` names.
pub async fn open(config: &Config) -> Result<Opened, JobError> {
    let store = Store::open(&config.plugins.store)?;
    crate::capture::probe(&config.kafka).await?;
    let control = Control::for_config(config, store.clone()).await?;
    Ok(Opened {
        store,
        state: control.state(),
        _control: control,
    })
}

/// A stored version loaded, compiled and configured for cohort `c` with its settings and
/// limits; `label` names the instance in the plugin's log lines.
pub fn prepare(
    host: &Host,
    bytes: &[u8],
    c: &Cohort,
    label: impl FnOnce(&Plugin) -> String,
) -> Result<(Plugin, Configured), JobError> {
    let plugin = host.load(bytes)?;
    let configured = plugin
        .configure_with(c.settings(), label(&plugin), CallLimits::of(c))
        .map_err(|reason| JobError::Refused {
            plugin: plugin.info().id(),
            cohort: c.name.clone(),
            reason,
        })?;
    Ok((plugin, configured))
}

/// Cohort `c` running `plugin` as the only cohort of a topology that writes its records to
/// `output_topic` and its quarantine entries to `quarantine_topic`. The schema is
/// registered (or looked up, as `registry.auto_register` says) under the subject for
/// `output_topic`; `dry_run` leaves the registry alone (schema id 0).
pub async fn one_cohort(
    config: &Config,
    registry: &RegistryClient,
    (c, plugin): (&Cohort, &Plugin),
    output_topic: &str,
    quarantine_topic: String,
    dry_run: bool,
) -> Result<Topology, JobError> {
    let schema_id = if dry_run {
        0
    } else {
        let info = plugin.info();
        let subject = subject(config, output_topic, info);
        registry
            .schema_id(&subject, &info.schema, config.registry.auto_register)
            .await?
    };
    let plan = cohort_plan(c, plugin, schema_id, output_topic);
    Ok(Topology {
        cohorts: vec![plan],
        rules: vec![],
        quarantine_topic: quarantine_topic.into(),
        raw_topic: None,
    })
}

/// Writes a job holds before it sends them, at most: this many...
const PENDING_WRITES: usize = 100;
/// ...or this many bytes of keys, values and headers.
const PENDING_BYTES: usize = 4 << 20;

/// Whether a job's `pending` writes are due to be sent: enough of them, or enough bytes,
/// that holding more would let memory grow with what the job scans.
pub fn send_due(pending: &[Write]) -> bool {
    pending.len() >= PENDING_WRITES
        || pending
            .iter()
            .map(|w| {
                w.value.len()
                    + w.key.as_ref().map_or(0, Vec::len)
                    + w.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            })
            .sum::<usize>()
            >= PENDING_BYTES
}

/// Writes sent as a job scans, their answers awaited once more than `in_flight` wait, so
/// memory stays bounded and Kafka sets the pace. Without a sink (a dry run, a verify) writes
/// are dropped. Called from inside a blocking scan on a multi-threaded runtime.
pub struct Writer<'a> {
    sink: Option<&'a Sink>,
    in_flight: usize,
    outstanding: usize,
    handle: tokio::runtime::Handle,
}

impl<'a> Writer<'a> {
    /// A writer to `sink` keeping at most `in_flight` writes unanswered between calls.
    pub fn new(sink: Option<&'a Sink>, in_flight: usize) -> Writer<'a> {
        Writer {
            sink,
            in_flight,
            outstanding: 0,
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Send `writes` (leaving it empty), then wait for answers until at most `in_flight`
    /// (with `drain`, none) are outstanding. Returns how many writes failed for good.
    pub fn send(&mut self, writes: &mut Vec<Write>, drain: bool) -> u64 {
        let Some(sink) = self.sink else {
            writes.clear();
            return 0;
        };
        let keep = if drain { 0 } else { self.in_flight };
        let outstanding = &mut self.outstanding;
        tokio::task::block_in_place(|| {
            self.handle.block_on(async {
                let mut failed = 0u64;
                for w in writes.drain(..) {
                    match sink.send(&w, 0).await {
                        Ok(()) => *outstanding += 1,
                        Err(_) => failed += 1,
                    }
                }
                failed + sink.settle(outstanding, keep).await as u64
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(value_bytes: usize) -> Write {
        Write {
            topic: "t".into(),
            key: Some(b"k".to_vec()),
            value: vec![0; value_bytes],
            headers: vec![("h".into(), bytes::Bytes::from_static(b"v"))].into(),
        }
    }

    #[test]
    fn pending_writes_are_sent_by_count_or_by_bytes() {
        assert!(!send_due(&[]));
        assert!(!send_due(&vec![write(10); PENDING_WRITES - 1]));
        assert!(send_due(&vec![write(10); PENDING_WRITES]));
        // A few large ones are due long before the count.
        assert!(!send_due(&[write(1 << 20), write(1 << 20)]));
        assert!(send_due(&[write(2 << 20), write(2 << 20)]));
    }
}
