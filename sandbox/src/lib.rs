//! The transform stage: run a cohort's pinned Wasm plugin over batches of messages,
//! sandboxed and bounded, and turn what it returns into validated Avro records.
//!
//! - [`Host`] owns the wasmtime engine (component model, epoch interruption, NaN
//!   canonicalisation, pooling allocator) and the precompiled-artifact cache.
//! - [`Plugin`] is one loaded Wasm file: its identity (name, version, sha256), its declared
//!   schema, and a pre-instantiated component.
//! - [`Configured::process`] runs a batch on an initialised instance. If the batch traps, it
//!   bisects, on instances that have not failed, until the guilty message(s) are isolated,
//!   so healthy messages in the same batch still emit; a batch that timed out is run one
//!   message at a time instead (bisecting would re-run the spin at every level). Once a
//!   configured plugin's cost per message is known, a batch may take only a multiple of
//!   it ([`COST_HEADROOM`]) before that happens, so one spinning message costs its
//!   neighbours a short wait, not the sum of all their budgets.
//!
//! Instances are reused: measured here, a fresh instance + `init` per batch cost ≈40 µs,
//! which at batch 1 was 20x the plugin's own work. Reuse cannot break replay for a plugin
//! that obeys the contract (no state between calls); for one that does not, fresh instances
//! per batch would not have saved replay either, since replay batches differ from live
//! ones. An instance is dropped after any failure, and replaced after
//! [`CALLS_PER_INSTANCE`] calls to bound what a leaky plugin can accumulate; at most
//! [`IDLE_INSTANCES`] are kept per configured plugin.

mod cache;
pub mod log;
pub mod priority;
mod sandbox;

pub use sandbox::{CallLimits, Limits, MAX_CORE_INSTANCES_PER_COMPONENT};
pub use weir_core::message::Message;
pub use weir_core::outcome::{Outcome, Record};

use sandbox::{CallError, Instance};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use weir_core::avro::{AvroSchema, EncodeError};

/// Idle, initialised instances kept per configured plugin.
pub const IDLE_INSTANCES: usize = 4;
/// Calls an instance serves before it is replaced by a fresh one.
pub const CALLS_PER_INSTANCE: u32 = 1000;

/// An instance after a call, with the calls it has served.
type Served = (Instance, u32);

/// A batch may take this many times its measured cost (at least 20 ms) before it is cut
/// short and re-run one message at a time; see [`Configured::process`].
pub const COST_HEADROOM: u64 = 8;

/// Failure codes a message can get from this stage (beyond the plugin's own rejections);
/// the full list is [`weir_sdk::codes::Code`].
pub mod codes {
    use weir_sdk::codes::Code;
    /// The plugin trapped (panic, unreachable, out-of-bounds, stack overflow).
    pub const TRAP: Code = Code::PluginTrap;
    /// The plugin ran past its CPU deadline.
    pub const TIMEOUT: Code = Code::PluginTimeout;
    /// The plugin hit its memory cap.
    pub const OOM: Code = Code::PluginOom;
    /// The plugin broke the contract (e.g. wrong number of outcomes, a malformed code).
    pub const CONTRACT: Code = Code::PluginContract;
    /// The plugin's output exceeded the size limits.
    pub const OUTPUT_TOO_LARGE: Code = Code::PluginOutputTooLarge;
    /// A record did not match the declared schema.
    pub const SCHEMA_VIOLATION: Code = Code::SchemaViolation;
}

/// Errors loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a Wasm component at all.
    #[error("{0}")]
    NotAComponent(String),
    /// A component, but of no `weir:transform` world (`plugin`, `packed-plugin`,
    /// `framed-plugin`).
    #[error(
        "not a weir plugin: {0}. A plugin must target the weir:transform `plugin` (1.0), `packed-plugin` (1.1) or `framed-plugin` (1.2) world and import nothing but `weir:transform/host` (build it with weir-sdk and `cargo xtask plugins`)"
    )]
    WrongWorld(String),
    /// `describe` failed or returned something unusable.
    #[error("the plugin's `describe` failed: {0}")]
    Describe(String),
    /// The declared schema is not valid Avro.
    #[error("the plugin's declared schema is invalid: {0}")]
    Schema(String),
    /// The engine failed in a way that is not the plugin's fault.
    #[error("wasmtime: {0}")]
    Engine(String),
}

/// Who a plugin is: what every record it produces is attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Declared name.
    pub name: String,
    /// Declared semantic version.
    pub version: String,
    /// sha256 of the Wasm file, lowercase hex.
    pub sha256: String,
    /// The contract version it was built against.
    pub contract: &'static str,
    /// Its declared Avro schema (JSON text, as declared).
    pub schema: String,
}

impl PluginInfo {
    /// `name@version`, as carried in the `weir.plugin` header.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The wasmtime engine and everything shared between plugins.
pub struct Host {
    sandbox: sandbox::Sandbox,
    cache: Option<cache::Cache>,
}

impl Host {
    /// An engine with these limits, caching precompiled plugins in `cache_dir` (if given).
    pub fn new(limits: Limits, cache_dir: Option<&Path>) -> Result<Self, LoadError> {
        let sandbox = sandbox::Sandbox::new(limits)?;
        let cache = cache_dir.and_then(|d| cache::Cache::new(d, sandbox.engine()));
        Ok(Host { sandbox, cache })
    }

    /// Count the plugin calls that have waited over a second for room in the host's full
    /// instance pool in `gauge` (a stall `/readyz` must show: they wait, never fail).
    pub fn count_capacity_waits_in(&self, gauge: prometheus_client::metrics::gauge::Gauge) {
        self.sandbox.count_waits_in(gauge);
    }

    /// Load a plugin from a file.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Load a plugin from its bytes: check it is a component of the right world, compile it
    /// (or take the cached artifact), ask it to describe itself and compile its schema.
    pub fn load(&self, bytes: &[u8]) -> Result<Plugin, LoadError> {
        check_header(bytes)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let component = match &self.cache {
            Some(cache) => cache.load_or_compile(&sha256, bytes)?,
            None => self.sandbox.compile(bytes)?,
        };
        let pre = self.sandbox.prepare(&component)?;
        let describing = || {
            Instance::new(
                &self.sandbox,
                &pre,
                "describe",
                CallLimits::default(),
                Arc::default(),
            )
        };
        let described = match describing() {
            // A full pool gives back its idle instances first.
            Err(CallError::HostCapacity(_)) if self.sandbox.release_idle() > 0 => describing(),
            other => other,
        }
        .and_then(|mut i| i.describe())
        .map_err(|e| LoadError::Describe(e.to_string()))?;
        let schema =
            AvroSchema::parse(&described.schema).map_err(|e| LoadError::Schema(e.to_string()))?;
        Ok(Plugin {
            inner: Arc::new(Inner {
                info: PluginInfo {
                    name: described.name,
                    version: described.version,
                    sha256,
                    contract: pre.contract(),
                    schema: described.schema,
                },
                schema,
                pre,
                sandbox: self.sandbox.clone(),
            }),
        })
    }
}

/// Refuse what is not a Wasm component, with a line that says what it is instead.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent(
            "not a WebAssembly file (no \\0asm header); give the .wasm component built by `cargo xtask plugins`".into(),
        ));
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(LoadError::NotAComponent(
            "this is a core Wasm module, not a component; `cargo xtask plugins` wraps a plugin's module into a component".into(),
        )),
        _ => Err(LoadError::NotAComponent(
            "unsupported WebAssembly version or layer; expected a component (version 0x0d, layer 1)".into(),
        )),
    }
}

struct Inner {
    info: PluginInfo,
    schema: AvroSchema,
    pre: sandbox::Pre,
    sandbox: sandbox::Sandbox,
}

/// A loaded plugin; cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.inner.info)
            .finish()
    }
}

/// A plugin instance configured for one cohort.
pub struct Configured {
    plugin: Plugin,
    config: Vec<(String, String)>,
    label: String,
    limits: CallLimits,
    /// Its log budget, shared by its instances.
    log_rate: Arc<log::Rate>,
    /// CPU nanoseconds per message of its clean calls, smoothed; 0 until one is seen.
    cost_ns: std::sync::atomic::AtomicU64,
    /// Initialised instances ready for a call, with the calls each has served; emptied by
    /// the host when its pool is full.
    idle: Arc<sandbox::IdleList>,
}

impl Plugin {
    /// Identity and schema.
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }

    /// The compiled output schema.
    pub fn schema(&self) -> &AvroSchema {
        &self.inner.schema
    }

    /// Bind a cohort's config, checking that the plugin accepts it (its `init`).
    pub fn configure(
        &self,
        config: Vec<(String, String)>,
        label: impl Into<String>,
    ) -> Result<Configured, String> {
        self.configure_with(config, label, CallLimits::default())
    }

    /// As [`Plugin::configure`], under a cohort's own limits.
    pub fn configure_with(
        &self,
        config: Vec<(String, String)>,
        label: impl Into<String>,
        limits: CallLimits,
    ) -> Result<Configured, String> {
        let label = label.into();
        let log_rate = Arc::new(log::Rate::default());
        let instance = fresh_instance(
            &self.inner,
            &label,
            limits,
            &log_rate,
            &config,
            Some(SETUP_CAPACITY_WAIT),
        )
        .map_err(|e| e.to_string())?;
        let idle = Arc::new(std::sync::Mutex::new(vec![(instance, 0)]));
        self.inner.sandbox.register_idle(&idle);
        Ok(Configured {
            plugin: self.clone(),
            config,
            label,
            limits,
            log_rate,
            cost_ns: std::sync::atomic::AtomicU64::new(0),
            idle,
        })
    }
}

/// Longest a plugin's set-up (push, promote, start-up) waits for room in a full instance
/// pool before it is refused.
const SETUP_CAPACITY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A new, initialised instance. When the host's instance pool is full, every configured
/// plugin's idle instances are dropped to make room, then it waits for one to be given
/// back: for at most `wait` (`None`: for as long as it takes, warning every ten seconds),
/// since a full pool is the host's state, not the plugin's fault.
fn fresh_instance(
    inner: &Inner,
    label: &str,
    limits: CallLimits,
    log_rate: &Arc<log::Rate>,
    config: &[(String, String)],
    wait: Option<std::time::Duration>,
) -> Result<Instance, CallError> {
    let started = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(5);
    let mut warned = None::<std::time::Instant>;
    let mut released = false;
    let mut counted = Counted(None);
    loop {
        match Instance::new(&inner.sandbox, &inner.pre, label, limits, log_rate.clone()) {
            Ok(mut instance) => {
                drop(counted);
                instance.init(config)?;
                return Ok(instance);
            }
            Err(CallError::HostCapacity(n)) => {
                if !released {
                    released = true;
                    let dropped = inner.sandbox.release_idle();
                    tracing::debug!(plugin = %label, dropped, "instance pool full: dropped idle instances");
                    continue;
                }
                if wait.is_some_and(|w| started.elapsed() >= w) {
                    return Err(CallError::HostCapacity(n));
                }
                if counted.0.is_none()
                    && started.elapsed() >= std::time::Duration::from_secs(1)
                    && let Some(gauge) = inner.sandbox.waits()
                {
                    gauge.inc();
                    counted.0 = Some(gauge.clone());
                }
                if warned.is_none_or(|w| w.elapsed() >= std::time::Duration::from_secs(10)) {
                    warned = Some(std::time::Instant::now());
                    tracing::warn!(plugin = %label, instances = n, waited_s = started.elapsed().as_secs(), "the host's plugin instance pool is full; this plugin's messages wait for an instance (more cohorts or replays run than the pool holds)");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(std::time::Duration::from_millis(500));
                released = false;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A long wait for room in the pool, counted while it lasts.
struct Counted(Option<prometheus_client::metrics::gauge::Gauge>);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("plugin", &self.plugin)
            .field("label", &self.label)
            .finish()
    }
}

impl Configured {
    /// The plugin behind this configuration.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Transform a batch: exactly one outcome per message, in order. A plugin of contract
    /// 1.0 or 1.1 is lent the messages without copying them (moved into the binding types
    /// and back), hence `&mut`; they are unchanged afterwards.
    pub fn process(&self, batch: &mut [Message]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(batch.len());
        self.process_into(batch, &mut out);
        out
    }

    fn process_into(&self, batch: &mut [Message], out: &mut Vec<Outcome>) {
        if batch.is_empty() {
            return;
        }
        let limits = self.plugin.inner.sandbox.limits();
        let output = self.limits.output_per_message(limits);
        let schema = &self.plugin.inner.schema;
        let framed;
        let outcomes = match self.call(batch) {
            Ok((sandbox::Outcomes::Plain(o), instance)) => {
                self.keep(instance);
                return out.extend(
                    o.into_iter()
                        .map(|o| plain_outcome(schema, limits, output, o)),
                );
            }
            Ok((sandbox::Outcomes::Packed(o), instance)) => {
                self.keep(instance);
                return out.extend(
                    o.into_iter()
                        .map(|o| packed_outcome(schema, limits, output, o)),
                );
            }
            Ok((sandbox::Outcomes::Framed(reply), instance)) => {
                framed = reply;
                let read = weir_sdk::frame::read_outcomes(
                    &framed,
                    batch.len(),
                    limits.max_records_per_message,
                );
                // An instance that broke the frame is not trusted with another call.
                if read.is_ok() {
                    self.keep(instance);
                }
                read.map_err(|e| CallError::Contract(format!("`process-framed` returned {e}")))
            }
            Err(e) => Err(e),
        };
        match outcomes {
            Ok(o) => out.extend(
                o.into_iter()
                    .map(|o| framed_outcome(schema, limits, output, o)),
            ),
            Err(e) if batch.len() == 1 => out.push(Outcome::Fail {
                code: e.code(),
                reason: e.to_string(),
            }),
            Err(CallError::Timeout(_)) => {
                // Not bisected: halving would run the spinning message again at every
                // level (2n - 1 calls to their deadlines). Each message runs alone against
                // its own budget (a cohort's `plugin_time_ms`, else the host's per message
                // with its floor per call), so a batch costs its budget plus n of those.
                tracing::debug!(plugin = %self.label, size = batch.len(), "batch timed out; running its messages one by one");
                for one in batch.chunks_mut(1) {
                    self.process_into(one, out);
                }
            }
            Err(e) => {
                tracing::debug!(plugin = %self.label, size = batch.len(), error = %e, "batch failed; bisecting to isolate the failing message(s)");
                let (left, right) = batch.split_at_mut(batch.len() / 2);
                self.process_into(left, out);
                self.process_into(right, out);
            }
        }
    }

    /// What a batch of `n` may cost before it is cut short and re-run message by message:
    /// [`COST_HEADROOM`] times its measured cost; `None` before any call was measured.
    fn expected(&self, n: usize) -> Option<std::time::Duration> {
        let per = self.cost_ns.load(std::sync::atomic::Ordering::Relaxed);
        (per > 0).then(|| {
            std::time::Duration::from_nanos(
                per.saturating_mul(COST_HEADROOM).saturating_mul(n as u64),
            )
        })
    }

    /// Fold a clean call's CPU time into the cost per message (an eighth of the new one).
    fn observe(&self, used: std::time::Duration, n: usize) {
        let new = u64::try_from(used.as_nanos() / n.max(1) as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.cost_ns.try_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |old| Some(if old == 0 { new } else { (old * 7 + new) / 8 }),
        );
    }

    /// One call of `process` on an initialised instance: an idle one, or a fresh one; with
    /// the instance and the calls it has served, for [`Configured::keep`] once its outcomes
    /// are found well formed. A failed call drops its instance.
    fn call(&self, batch: &mut [Message]) -> Result<(sandbox::Outcomes, Served), CallError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut instance, calls) = match idle {
            Some(pair) => pair,
            None => (
                fresh_instance(
                    &self.plugin.inner,
                    &self.label,
                    self.limits,
                    &self.log_rate,
                    &self.config,
                    None,
                )?,
                0,
            ),
        };
        let (outcomes, used) = instance.process(batch, self.expected(batch.len()))?;
        self.observe(used, batch.len());
        if let Some(n) = outcomes.len()
            && n != batch.len()
        {
            return Err(CallError::Contract(format!(
                "`process` returned {n} outcomes for {} messages",
                batch.len()
            )));
        }
        Ok((outcomes, (instance, calls + 1)))
    }

    /// Put an instance whose call went well back in the idle list, unless it has served its
    /// share of calls or the list is full.
    fn keep(&self, (instance, calls): Served) {
        if calls < CALLS_PER_INSTANCE {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_INSTANCES {
                idle.push((instance, calls));
            }
        }
    }
}

/// Validate and encode one outcome's records (contract 1.0: values as JSON text); any
/// violation fails the whole message (a message's records are published all or none).
/// `output` bounds the bytes of all its records together.
fn plain_outcome(
    schema: &AvroSchema,
    limits: &Limits,
    output: usize,
    o: sandbox::WitOutcome,
) -> Outcome {
    use sandbox::WitOutcome as W;
    match o {
        W::Skip => Outcome::Skip,
        W::Reject(r) => rejected(r),
        W::Emit(records) => emitted(schema, limits, output, records),
    }
}

/// As [`plain_outcome`], for contract 1.1's `packed-plugin` (values as MessagePack).
fn packed_outcome(
    schema: &AvroSchema,
    limits: &Limits,
    output: usize,
    o: sandbox::PackedOutcome,
) -> Outcome {
    use sandbox::PackedOutcome as W;
    match o {
        W::Skip => Outcome::Skip,
        W::Reject(r) => rejected(r),
        W::Emit(records) => emitted(schema, limits, output, records),
    }
}

/// As [`plain_outcome`], for contract 1.2's `framed-plugin` (values as MessagePack, read in
/// place from the framed reply).
fn framed_outcome(
    schema: &AvroSchema,
    limits: &Limits,
    output: usize,
    o: weir_sdk::frame::OutcomeRef<'_>,
) -> Outcome {
    use weir_sdk::frame::OutcomeRef as F;
    match o {
        F::Skip => Outcome::Skip,
        F::Reject { code, reason } => rejected(sandbox::WitRejection {
            code: code.to_owned(),
            reason: reason.to_owned(),
        }),
        F::TooManyRecords(n) => {
            let (code, reason) = too_many_records(n, limits);
            Outcome::Fail { code, reason }
        }
        F::Emit(records) => emitted(schema, limits, output, records),
    }
}

/// A plugin's rejection, its code checked.
fn rejected(r: sandbox::WitRejection) -> Outcome {
    match weir_sdk::codes::check_plugin_code(&r.code) {
        Ok(()) => Outcome::Reject {
            code: r.code,
            reason: r.reason,
        },
        Err(why) => Outcome::Fail {
            code: codes::CONTRACT,
            reason: format!(
                "the plugin rejected the message with a malformed code: {why} (its reason: {})",
                r.reason
            ),
        },
    }
}

/// A message's records, checked and encoded, or its failure.
fn emitted<R: Returned>(
    schema: &AvroSchema,
    limits: &Limits,
    output: usize,
    records: Vec<R>,
) -> Outcome {
    encode_records(schema, limits, output, records).map_or_else(
        |(code, reason)| Outcome::Fail { code, reason },
        Outcome::Emit,
    )
}

/// A record value as a plugin returned it: JSON text (world `plugin`) or MessagePack
/// (`packed-plugin`, `framed-plugin`), checked against the schema and encoded to Avro
/// accordingly.
trait Value {
    /// What the value is written as, for messages.
    const FORM: &'static str;
    fn len(&self) -> usize;
    /// Encode it as Avro into `out`, refused past `limit` bytes of Avro.
    fn encode(&self, schema: &AvroSchema, limit: usize, out: &mut Vec<u8>) -> Encoded;
}

/// A value's Avro, written, or why not.
type Encoded = Result<(), EncodeError>;

impl Value for String {
    const FORM: &'static str = "JSON";
    fn len(&self) -> usize {
        self.len()
    }
    fn encode(&self, schema: &AvroSchema, limit: usize, out: &mut Vec<u8>) -> Encoded {
        schema.encode_json(self, limit, out)
    }
}

impl Value for &[u8] {
    const FORM: &'static str = "MessagePack";
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn encode(&self, schema: &AvroSchema, limit: usize, out: &mut Vec<u8>) -> Encoded {
        schema.encode_packed(self, limit, out)
    }
}

/// As `&[u8]`: contract 1.1 copies each value out on its own.
impl Value for Vec<u8> {
    const FORM: &'static str = <&[u8] as Value>::FORM;
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn encode(&self, schema: &AvroSchema, limit: usize, out: &mut Vec<u8>) -> Encoded {
        self.as_slice().encode(schema, limit, out)
    }
}

/// A record as a plugin returned it, in any world: its value, and the rest of it as the
/// record to publish (its value still to be encoded).
trait Returned {
    type Value: Value;
    /// The bytes it counts toward its message's output bound ([`record_size`]).
    fn size(&self) -> usize;
    fn split(self) -> (Self::Value, Record);
}

/// The headers' count and text bytes.
fn header_sizes(headers: &[(String, String)]) -> (usize, usize) {
    (
        headers.len(),
        headers.iter().map(|(k, v)| k.len() + v.len()).sum(),
    )
}

impl Returned for sandbox::WitRecord {
    type Value = String;
    fn size(&self) -> usize {
        let (n, text) = header_sizes(&self.headers);
        record_size(self.value.len(), self.key.as_deref(), n, text)
    }
    fn split(self) -> (String, Record) {
        let (key, headers) = (self.key, self.headers);
        (
            self.value,
            Record {
                key,
                value: Vec::new(),
                headers,
            },
        )
    }
}

impl Returned for sandbox::PackedRecord {
    type Value = Vec<u8>;
    fn size(&self) -> usize {
        let (n, text) = header_sizes(&self.headers);
        record_size(self.value.len(), self.key.as_deref(), n, text)
    }
    fn split(self) -> (Vec<u8>, Record) {
        let (key, headers) = (self.key, self.headers);
        (
            self.value,
            Record {
                key,
                value: Vec::new(),
                headers,
            },
        )
    }
}

impl<'a> Returned for weir_sdk::frame::RecordRef<'a> {
    type Value = &'a [u8];
    fn size(&self) -> usize {
        record_size(
            self.value.len(),
            self.key,
            self.headers.len(),
            self.headers.text_len(),
        )
    }
    fn split(self) -> (&'a [u8], Record) {
        (
            self.value,
            Record {
                key: self.key.map(str::to_owned),
                value: Vec::new(),
                headers: self
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            },
        )
    }
}

/// Why a message's records cannot be published: its code and reason.
type Refusal = (weir_sdk::codes::Code, String);

/// Every record of one message, checked and encoded, or the first refusal.
///
/// The output bound counts each record's value as the larger of what the plugin returned
/// and its Avro encoding: a schema's field defaults can make a small reply a large record,
/// and the host holds the Avro until Kafka has it.
fn encode_records<R: Returned>(
    schema: &AvroSchema,
    limits: &Limits,
    output: usize,
    records: Vec<R>,
) -> Result<Vec<Record>, Refusal> {
    if records.len() > limits.max_records_per_message {
        return Err(too_many_records(records.len(), limits));
    }
    let mut out = Vec::with_capacity(records.len());
    let mut total = 0usize;
    for (i, r) in records.into_iter().enumerate() {
        total += r.size();
        if total > output {
            return Err((
                codes::OUTPUT_TOO_LARGE,
                format!(
                    "the records of one message total more than {output} bytes by record {i}; the limit is {output} (plugin_output_kib)"
                ),
            ));
        }
        let (value, record) = r.split();
        // The Avro may take the record limit, or what the message has left if that is less.
        let room = limits.max_record_bytes.min(output - (total - value.len()));
        let record = encode_record(schema, limits, i, room, &value, record)?;
        total += record.value.len().saturating_sub(value.len());
        out.push(record);
    }
    Ok(out)
}

/// The refusal of a message that returned `n` records, over the limit.
fn too_many_records(n: usize, limits: &Limits) -> Refusal {
    (
        codes::OUTPUT_TOO_LARGE,
        format!(
            "{n} records from one message; the limit is {}",
            limits.max_records_per_message
        ),
    )
}

/// What a record, and each of its headers, counts toward a message's output bound besides
/// its bytes: about what the host holds for one, so that a plugin cannot make the host hold
/// much more than the bound with many empty records or headers.
const RECORD_COST: usize = 64;
const HEADER_COST: usize = 48;

/// The bytes a record counts toward its message's output bound.
fn record_size(value: usize, key: Option<&str>, headers: usize, header_text: usize) -> usize {
    RECORD_COST + value + key.map_or(0, str::len) + header_text + headers * HEADER_COST
}

/// Record `i` of a message: within the size bound, no reserved header, its `value` valid
/// for the declared schema and encoded as Avro into `record`, in at most `room` bytes.
fn encode_record<V: Value>(
    schema: &AvroSchema,
    limits: &Limits,
    i: usize,
    room: usize,
    value: &V,
    mut record: Record,
) -> Result<Record, Refusal> {
    if value.len() > limits.max_record_bytes {
        return Err((
            codes::OUTPUT_TOO_LARGE,
            format!(
                "record {i} is {} bytes of {}; the limit is {}",
                value.len(),
                V::FORM,
                limits.max_record_bytes
            ),
        ));
    }
    if let Some((name, _)) = record.headers.iter().find(|(k, _)| k.starts_with("weir.")) {
        return Err((
            codes::CONTRACT,
            format!(
                "record {i} sets header {name:?}; names starting with `weir.` are reserved for weir"
            ),
        ));
    }
    // Room for the wire-format header the plan puts in front, so that framing moves the
    // bytes within this allocation instead of copying them to another.
    record
        .value
        .reserve_exact(value.len() + weir_core::frame::HEADER_LEN);
    match value.encode(schema, room, &mut record.value) {
        Ok(()) => Ok(record),
        Err(EncodeError::Violation(why)) => Err((
            codes::SCHEMA_VIOLATION,
            format!("record {i} does not match the declared schema: {why}"),
        )),
        Err(EncodeError::TooLarge { limit, by_defaults }) => Err((
            codes::OUTPUT_TOO_LARGE,
            format!(
                "record {i}'s Avro would pass the {limit} bytes left for it by the record limit ({} bytes) and the message's (plugin_output_kib){}",
                limits.max_record_bytes,
                if by_defaults {
                    ": the field defaults written for the fields it leaves out passed it; give those fields in the record, or give the schema smaller defaults"
                } else {
                    "; return smaller records, or fewer in one message"
                }
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of a kilobyte's default each: an empty map in `pads` (one byte of
    /// MessagePack) writes the whole default.
    fn padded() -> AvroSchema {
        let fill = "x".repeat(1000);
        AvroSchema::parse(&format!(
            r#"{{"type":"record","name":"P","fields":[
                {{"name":"pads","type":{{"type":"array","items":{{"type":"record","name":"Pad",
                    "fields":[{{"name":"fill","type":"string","default":"{fill}"}}]}}}}}}]}}"#
        ))
        .unwrap()
    }

    /// A record of `n` defaulted pads, as a contract 1.1 plugin returns it.
    fn pads(n: u16) -> sandbox::PackedRecord {
        let mut value = vec![0x81, 0xa4];
        value.extend_from_slice(b"pads");
        value.push(0xdc);
        value.extend_from_slice(&n.to_be_bytes());
        value.extend(std::iter::repeat_n(0x80, n.into()));
        sandbox::PackedRecord {
            key: None,
            value,
            headers: Vec::new(),
        }
    }

    fn refusal(outcome: Outcome) -> (weir_sdk::codes::Code, String) {
        match outcome {
            Outcome::Fail { code, reason } => (code, reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_is_bounded_by_its_avro_not_only_by_its_reply() {
        let (schema, limits) = (padded(), Limits::default());
        let output = limits.max_output_bytes_per_message;
        // 2,000 bytes of reply, 2 MB of Avro: past the 1 MiB record limit.
        let (code, reason) = refusal(emitted(&schema, &limits, output, vec![pads(2000)]));
        assert_eq!(code, codes::OUTPUT_TOO_LARGE);
        assert!(reason.contains("field defaults"), "{reason}");
        assert!(reason.contains("give those fields"), "{reason}");
        assert!(reason.contains("record 0"), "{reason}");
        // Within it, the record is written whole.
        let Outcome::Emit(records) = emitted(&schema, &limits, output, vec![pads(1000)]) else {
            panic!("1,000 pads fit")
        };
        assert!(records[0].value.len() > 1_000_000);
    }

    #[test]
    fn a_message_is_bounded_by_its_records_avro_together() {
        let (schema, limits) = (padded(), Limits::default());
        // Each record's Avro (about 100 KB) fits the record limit; three do not fit 250 KB.
        let (code, reason) = refusal(emitted(
            &schema,
            &limits,
            250_000,
            vec![pads(100), pads(100), pads(100)],
        ));
        assert_eq!(code, codes::OUTPUT_TOO_LARGE);
        assert!(reason.contains("record 2"), "{reason}");
        let Outcome::Emit(records) = emitted(&schema, &limits, 250_000, vec![pads(100), pads(100)])
        else {
            panic!("two fit")
        };
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn a_value_that_breaks_the_schema_is_still_a_violation() {
        let (schema, limits) = (padded(), Limits::default());
        let mut bad = pads(1);
        bad.value = vec![0x81, 0xa4, b'p', b'a', b'd', b's', 0x05];
        let output = limits.max_output_bytes_per_message;
        let (code, reason) = refusal(emitted(&schema, &limits, output, vec![bad]));
        assert_eq!(code, codes::SCHEMA_VIOLATION, "{reason}");
    }
}
