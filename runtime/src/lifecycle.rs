//! The plugin lifecycle: push a version into the store, promote it to a cohort behind a
//! gate, roll back, and keep every process's live plugins equal to the control topic's pins.
//!
//! The live set ([`Live`]) is one value the pipeline reads at the start of every batch, so
//! a swap happens between batches: every message is processed entirely by one version and
//! its records carry that version's sha256. A new version is loaded, compiled and
//! initialised off the data path, then swapped in; the pipeline reports the first message
//! each new version took (the cutover), which is written to the audit trail.
//!
//! A promote writes the pin to the control topic; every process (this one included)
//! installs it when it reads it, so N processes converge on the same pin and a restart
//! keeps it. The pin in `weir.toml` is only the pin a cohort starts with.

use crate::config::Config;
use crate::control::{Action, Audit, Cutover, Fixtures, Key, Log, Pin, Upload, Version, now_ms};
use crate::encode::registry::RegistryClient;
use crate::shadow::{Limit, Report, Shadow, Tap};
use crate::store::Store;
use crate::transform::{Configured, Host, Plugin, PluginInfo};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use weir_core::avro::AvroSchema;
use weir_core::plan::{CohortPlan, Topology};

/// What the pipeline runs: a topology and one configured plugin per cohort, swapped as one.
pub struct Live {
    /// Routing, output topics, schema ids and the identity headers of every cohort.
    pub topology: Arc<Topology>,
    /// The configured plugin of each cohort, by cohort index.
    pub plugins: Vec<Arc<Configured>>,
    /// The version each cohort runs, by cohort index.
    pub versions: Vec<Version>,
}

/// A version the pipeline started using: the cohort, the version and the first message's
/// MQTT topic.
#[derive(Debug, Clone)]
pub struct Switched {
    /// Cohort index.
    pub cohort: usize,
    /// The version now live.
    pub version: Version,
    /// The MQTT topic of the first message it processed.
    pub first_topic: String,
}

/// Why a lifecycle request was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// Something named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored or live (409): an immutable version, an
    /// incompatible schema, nothing to roll back to.
    #[error("{0}")]
    Conflict(String),
    /// The plugin or its config is unusable (422).
    #[error("{0}")]
    Invalid(String),
    /// Kafka, the registry or the store failed (503); retry when it is back.
    #[error("{0}")]
    Unavailable(String),
    /// A key of weir.toml cannot be used as it is (at start-up: a cohort's pin that is
    /// nowhere to be found); 422 when it answers a request.
    #[error("{key}: {problem}")]
    Config {
        /// The config key (`cohort[N].plugin`).
        key: String,
        /// What is wrong, and the fix.
        problem: String,
    },
}

impl LifecycleError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            LifecycleError::NotFound(_) => 404,
            LifecycleError::Conflict(_) => 409,
            LifecycleError::Invalid(_) | LifecycleError::Config { .. } => 422,
            LifecycleError::Unavailable(_) => 503,
        }
    }
}

/// The answer to a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    /// `name@version`.
    pub plugin: String,
    /// sha256 of the component.
    pub sha256: String,
    /// Size, bytes.
    pub size: u64,
    /// False when exactly these bytes were already stored under this version.
    pub new: bool,
}

/// The answer to a promote or a rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promoted {
    /// The cohort.
    pub cohort: String,
    /// The version it ran.
    pub from: Version,
    /// The version it runs now.
    pub to: Version,
    /// Gate (registry check, load, compile, init) duration, ms.
    pub gate_ms: u64,
    /// From the request to the new version being live in this process, ms.
    pub swap_ms: u64,
    /// Where this process switched, when a message arrived within a second of the swap.
    pub cutover: Option<Cutover>,
}

/// A cohort as `weir cohort list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CohortView {
    /// The cohort.
    pub cohort: String,
    /// The version live in this process.
    pub plugin: Version,
    /// When it was pinned (none: the pin from weir.toml).
    pub since_ms: Option<i64>,
    /// Which admin token pinned it (none: weir.toml).
    pub by: Option<String>,
    /// Its Kafka topic.
    pub output_topic: String,
    /// The isolation group it runs in.
    pub group: String,
    /// With scale-out slots: which process holds each of the group's slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<SlotView>>,
}

/// A scale-out slot and its holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotView {
    /// The slot (the MQTT session `<client_id>-<slot>`).
    pub slot: u16,
    /// The process holding it.
    pub process: String,
    /// Held by this process.
    pub here: bool,
}

/// A stored version as `weir plugin list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginView {
    /// The upload.
    #[serde(flatten)]
    pub upload: Upload,
    /// Cohorts that run it in this process.
    pub cohorts: Vec<String>,
}

/// The answer to a shadow run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The cohort.
    pub cohort: String,
    /// The version that was live.
    pub live: Version,
    /// The version shadowed.
    pub candidate: Version,
    /// What was found.
    #[serde(flatten)]
    pub report: Report,
}

/// Built and initialised off the data path, ready to swap in.
struct Built {
    plan: CohortPlan,
    configured: Arc<Configured>,
    /// The cohort's subject for this version, and the version's schema.
    subject: String,
    schema: String,
}

/// A promote or rollback of one cohort from one version to another, as it is recorded.
struct Change<'a> {
    cohort: &'a str,
    from: &'a Version,
    to: &'a Version,
    action: Action,
    by: &'a str,
    at_ms: i64,
}

impl Change<'_> {
    /// The pin and the audit entry that record the change over `current` (the cohort's
    /// pin, if any). A promote adds the version it leaves to the rollback chain; a
    /// rollback cuts the chain back to below the version it returns to.
    fn records(&self, current: Option<&Pin>) -> (Pin, Audit) {
        let mut rollback_to = current.map(|p| p.rollback_to.clone()).unwrap_or_default();
        if self.action == Action::Rollback {
            if let Some(i) = rollback_to.iter().rposition(|v| v.sha256 == self.to.sha256) {
                rollback_to.truncate(i);
            }
        } else {
            rollback_to.push(self.from.clone());
        }
        let pin = Pin {
            cohort: self.cohort.to_owned(),
            plugin: self.to.clone(),
            previous: Some(self.from.clone()),
            rollback_to,
            replaces: current.map(|p| p.plugin.sha256.clone()),
            seq: current.map_or(1, |p| p.seq + 1),
            at_ms: self.at_ms,
            by: self.by.to_owned(),
            signer: None,
        };
        let audit = Audit {
            cohort: Some(self.cohort.to_owned()),
            action: self.action,
            plugin: self.to.id(),
            old_sha256: Some(self.from.sha256.clone()),
            new_sha256: self.to.sha256.clone(),
            at_ms: self.at_ms,
            by: self.by.to_owned(),
            cutover: None,
            signer: None,
        };
        (pin, audit)
    }
}

/// The registry subject of a plugin's schema when its records go to `output_topic`, as
/// `registry.subject_strategy` names it.
pub fn subject(config: &Config, output_topic: &str, info: &PluginInfo) -> String {
    let record_name = crate::encode::registry::record_full_name(&info.schema)
        .unwrap_or_else(|| info.name.clone());
    crate::encode::registry::subject(config.registry.subject_strategy, output_topic, &record_name)
}

/// What the planning core needs to run cohort `c` on `plugin`, writing to `output_topic`
/// with `schema_id`: every record carries the plugin's name@version, sha256 and the cohort.
pub fn cohort_plan(
    c: &crate::config::Cohort,
    plugin: &Plugin,
    schema_id: u32,
    output_topic: &str,
) -> CohortPlan {
    let info = plugin.info();
    CohortPlan {
        name: c.name.clone(),
        output_topic: output_topic.into(),
        key: c.key_template.clone(),
        schema_id,
        schema: AvroSchema::clone(plugin.schema()),
        identity: std::sync::Arc::new(
            vec![
                (weir_core::headers::PLUGIN.into(), info.id().into()),
                (
                    weir_core::headers::PLUGIN_SHA256.into(),
                    info.sha256.clone().into(),
                ),
                (weir_core::headers::COHORT.into(), c.name.clone().into()),
            ]
            .into(),
        ),
    }
}

/// The lifecycle of one weir process.
pub struct Lifecycle {
    config: Config,
    host: Arc<Host>,
    store: Store,
    control: Arc<dyn Log>,
    registry: RegistryClient,
    process: String,
    live: watch::Sender<Arc<Live>>,
    /// Versions the gate built, taken by the install that follows.
    built: Mutex<HashMap<(usize, String), Built>>,
    /// One change at a time.
    changes: tokio::sync::Mutex<()>,
    /// Shadow runs the pipeline feeds.
    taps: Mutex<Vec<Arc<Tap>>>,
}

impl Lifecycle {
    /// Control-topic entries not applied for want of a trusted signature, so far.
    pub fn control_rejected(&self) -> prometheus_client::metrics::counter::Counter {
        self.control.rejected()
    }

    /// Count plugin calls waiting long for room in the host's instance pool in `gauge`.
    pub fn count_capacity_waits_in(&self, gauge: prometheus_client::metrics::gauge::Gauge) {
        self.host.count_capacity_waits_in(gauge);
    }
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("process", &self.process)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> LifecycleError {
    LifecycleError::Unavailable(e.to_string())
}

impl Lifecycle {
    /// Seed the store from `[plugins] dir`, read the control topic, and build every cohort
    /// at its pin (the control topic's, else weir.toml's).
    pub async fn start(
        config: Config,
        host: Arc<Host>,
        store: Store,
        control: Arc<dyn Log>,
        seeds: Vec<(Plugin, Vec<u8>)>,
    ) -> Result<Arc<Lifecycle>, LifecycleError> {
        let registry = RegistryClient::for_config(&config.registry);
        let placeholder = Arc::new(Live {
            topology: Arc::new(Topology {
                cohorts: vec![],
                rules: vec![],
                quarantine_topic: config.output.quarantine_topic.as_str().into(),
                raw_topic: config.output.raw_topic.as_deref().map(Arc::from),
            }),
            plugins: vec![],
            versions: vec![],
        });
        let (live, _) = watch::channel(placeholder);
        let lc = Lifecycle {
            process: config.process_name(),
            config,
            host,
            store,
            control,
            registry,
            live,
            built: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            taps: Mutex::new(Vec::new()),
        };
        for (plugin, bytes) in seeds {
            lc.seed(&plugin, &bytes).await?;
        }
        lc.mirror_index();
        let state = lc.control.state();
        let mut plans = Vec::new();
        let mut plugins = Vec::new();
        let mut versions = Vec::new();
        for ci in 0..lc.config.cohorts.len() {
            let (version, built) = lc.start_cohort(ci, &state).await?;
            plans.push(built.plan);
            plugins.push(built.configured);
            versions.push(version);
        }
        let rules = lc
            .config
            .cohorts
            .iter()
            .map(|c| weir_core::route::Rule {
                filter: c.topic.clone(),
                properties: c
                    .properties
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect();
        lc.live.send_replace(Arc::new(Live {
            topology: Arc::new(Topology {
                cohorts: plans,
                rules,
                quarantine_topic: lc.config.output.quarantine_topic.as_str().into(),
                raw_topic: lc.config.output.raw_topic.as_deref().map(Arc::from),
            }),
            plugins,
            versions,
        }));
        Ok(Arc::new(lc))
    }

    /// Build cohort `ci` at its pin: the control topic's, else weir.toml's. A pinned version
    /// that no longer starts (its config or the registry changed) falls back to weir.toml's,
    /// loudly, rather than not running at all.
    async fn start_cohort(
        &self,
        ci: usize,
        state: &crate::control::State,
    ) -> Result<(Version, Built), LifecycleError> {
        let c = &self.config.cohorts[ci];
        let first = || state.uploads.get(&c.plugin).map(|u| u.plugin.clone());
        let version = match state.pins.get(&c.name) {
            Some(pin) => {
                tracing::info!(cohort = %c.name, plugin = %pin.plugin.id(), by = %pin.by, "pinned by the control topic (weir.toml's pin is only the first)");
                pin.plugin.clone()
            }
            None => first().ok_or_else(|| LifecycleError::Config {
                key: format!("cohort[{ci}].plugin"),
                problem: format!(
                    "{} is not in {} nor in the plugin store (found: {:?}); build it, push it, or pin a version that is there",
                    c.plugin,
                    self.config.plugins.dir.display(),
                    state.uploads.keys().collect::<Vec<_>>()
                ),
            })?,
        };
        let register = Some(self.config.registry.auto_register);
        match self.build(ci, &version, register).await {
            Ok(built) => Ok((version, built)),
            Err(e) if state.pins.contains_key(&c.name) => {
                tracing::error!(cohort = %c.name, plugin = %version.id(), error = %e, "the control topic's pin does not start; running weir.toml's pin instead — promote a working version");
                let first = first().ok_or(e)?;
                let built = self.build(ci, &first, register).await?;
                Ok((first, built))
            }
            Err(e) => Err(e),
        }
    }

    /// A receiver of the live set; the pipeline reads it once per batch.
    pub fn live(&self) -> watch::Receiver<Arc<Live>> {
        self.live.subscribe()
    }

    /// The config this process runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Put a file from `[plugins] dir` into the store and, if the control topic does not
    /// have its version yet, upload it; a version the control topic has with other bytes
    /// is skipped with a warning (a version is immutable, the topic is the record).
    async fn seed(&self, plugin: &Plugin, bytes: &[u8]) -> Result<(), LifecycleError> {
        let info = plugin.info();
        self.store.put(bytes).map_err(unavailable)?;
        match self.control.state().uploads.get(&info.id()) {
            Some(u) if u.plugin.sha256 == info.sha256 => Ok(()),
            Some(u) => {
                tracing::warn!(plugin = %info.id(), file_sha256 = %info.sha256, stored_sha256 = %u.plugin.sha256, "a file in plugins.dir differs from the stored version of the same name@version; the stored one is used (bump the file's version)");
                Ok(())
            }
            None => self.upload(plugin, bytes, "seed").await.map(|_| ()),
        }
    }

    async fn upload(
        &self,
        plugin: &Plugin,
        bytes: &[u8],
        by: &str,
    ) -> Result<Upload, LifecycleError> {
        let info = plugin.info();
        let upload = Upload {
            plugin: Version {
                name: info.name.clone(),
                version: info.version.clone(),
                sha256: info.sha256.clone(),
            },
            size: bytes.len() as u64,
            schema: info.schema.clone(),
            at_ms: now_ms(),
            by: by.to_owned(),
        };
        // The component (whole, or in parts), then the claim that names it.
        if bytes.len() > crate::control::MAX_COMPONENT_BYTES {
            return Err(LifecycleError::Invalid(format!(
                "{} is {} bytes; the control topic carries components of up to {}",
                info.id(),
                bytes.len(),
                crate::control::MAX_COMPONENT_BYTES
            )));
        }
        let mut entries = crate::control::component_entries(&info.sha256, bytes);
        entries.push((
            Key::Upload {
                plugin: info.id(),
                sha256: info.sha256.clone(),
            },
            crate::control::encode(&upload),
        ));
        self.control.append(entries).await.map_err(unavailable)?;
        // Another process may have claimed the version first with other bytes.
        match self.control.state().uploads.get(&info.id()) {
            Some(u) if u.plugin.sha256 != info.sha256 => Err(LifecycleError::Conflict(format!(
                "{} was stored concurrently with sha256 {}; a version is immutable — bump the plugin's version and push again",
                info.id(),
                u.plugin.sha256
            ))),
            _ => Ok(upload),
        }
    }

    fn mirror_index(&self) {
        let index = self
            .control
            .state()
            .uploads
            .iter()
            .map(|(id, u)| (id.clone(), u.plugin.sha256.clone()))
            .collect();
        if let Err(e) = self.store.write_index(&index) {
            tracing::warn!(error = %e, "cannot mirror the plugin index");
        }
    }

    /// Validate a component (world, imports, `describe`, schema) and store it.
    pub async fn push(&self, bytes: Vec<u8>, by: &str) -> Result<Pushed, LifecycleError> {
        const MAX: usize = crate::control::MAX_COMPONENT_BYTES;
        if bytes.len() > MAX {
            return Err(LifecycleError::Invalid(format!(
                "the component is {} bytes; the store takes up to {MAX}",
                bytes.len()
            )));
        }
        let plugin = self.load(bytes.clone()).await?;
        let _one = self.changes.lock().await;
        let info = plugin.info();
        let pushed = |new| Pushed {
            plugin: info.id(),
            sha256: info.sha256.clone(),
            size: bytes.len() as u64,
            new,
        };
        if let Some(u) = self.control.state().uploads.get(&info.id()) {
            if u.plugin.sha256 == info.sha256 {
                return Ok(pushed(false));
            }
            return Err(LifecycleError::Conflict(format!(
                "{} is already stored with sha256 {}; a version is immutable — bump the plugin's version and push again",
                info.id(),
                u.plugin.sha256
            )));
        }
        self.store.put(&bytes).map_err(unavailable)?;
        self.upload(&plugin, &bytes, by).await?;
        self.control
            .audit(&Audit {
                cohort: None,
                action: Action::Push,
                plugin: info.id(),
                old_sha256: None,
                new_sha256: info.sha256.clone(),
                at_ms: now_ms(),
                by: by.to_owned(),
                cutover: None,
                signer: None,
            })
            .await
            .map_err(unavailable)?;
        self.mirror_index();
        tracing::info!(plugin = %info.id(), sha256 = %info.sha256, by, "plugin pushed");
        Ok(pushed(true))
    }

    /// Store fixtures for a stored version (replacing earlier ones); the promote gate runs
    /// them. Input and expected must have as many non-empty lines.
    pub async fn put_fixtures(
        &self,
        id: &str,
        input: String,
        expected: String,
        by: &str,
    ) -> Result<(), LifecycleError> {
        self.stored(id)?;
        let count = |t: &str| t.lines().filter(|l| !l.trim().is_empty()).count();
        if count(&input) != count(&expected) || count(&input) == 0 {
            return Err(LifecycleError::Invalid(format!(
                "fixtures need one expected line per input line: input has {}, expected {}",
                count(&input),
                count(&expected)
            )));
        }
        let f = Fixtures {
            plugin: id.to_owned(),
            input,
            expected,
            at_ms: now_ms(),
            by: by.to_owned(),
        };
        self.control
            .append(vec![(
                Key::Fixtures {
                    plugin: id.to_owned(),
                },
                crate::control::encode(&f),
            )])
            .await
            .map_err(unavailable)
    }

    /// Run `id`'s fixtures, if it has any, on `configured`; the first mismatch refuses.
    async fn check_fixtures(
        &self,
        id: &str,
        configured: Arc<Configured>,
    ) -> Result<(), LifecycleError> {
        let Some(f) = self.control.state().fixtures.get(id).cloned() else {
            return Ok(());
        };
        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            crate::dryrun::run(&configured, f.input.as_bytes(), &mut out, 64).map(|_| (f, out))
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
        let (f, got) = out;
        let got = String::from_utf8_lossy(&got);
        let expected = f.expected.lines().filter(|l| !l.trim().is_empty());
        let inputs = f.input.lines().filter(|l| !l.trim().is_empty());
        for (n, ((got, want), input)) in got.lines().zip(expected).zip(inputs).enumerate() {
            let parse = |l: &str| serde_json::from_str::<weir_sdk::dryrun::LineOutcome>(l).ok();
            let matched = match (parse(got), parse(want)) {
                (Some(got), Some(want)) => got.matches(&want),
                _ => false,
            };
            if !matched {
                return Err(LifecycleError::Invalid(format!(
                    "{id} fails its fixture line {}: input {input}; got {got}; expected {want}. Fix the plugin or push corrected fixtures (weir plugin push FILE --fixtures DIR)",
                    n + 1
                )));
            }
        }
        Ok(())
    }

    /// The stored version `id` (`name@version`).
    fn stored(&self, id: &str) -> Result<Upload, LifecycleError> {
        self.control
            .state()
            .uploads
            .get(id)
            .cloned()
            .ok_or_else(|| {
                LifecycleError::NotFound(format!(
                    "{id} is not in the plugin store; push it first: weir plugin push FILE.wasm"
                ))
            })
    }

    /// Initialise `plugin` with cohort `ci`'s config, off the async threads.
    async fn configure(
        &self,
        ci: usize,
        plugin: &Plugin,
        label: String,
    ) -> Result<Configured, LifecycleError> {
        let c = &self.config.cohorts[ci];
        let (p, settings, limits) = (
            plugin.clone(),
            c.settings(),
            crate::transform::CallLimits::of(c),
        );
        tokio::task::spawn_blocking(move || p.configure_with(settings, label, limits))
            .await
            .map_err(unavailable)?
            .map_err(|e| {
                LifecycleError::Invalid(format!(
                    "{} refused cohort {:?}'s config: {e}",
                    plugin.info().id(),
                    c.name
                ))
            })
    }

    async fn load(&self, bytes: Vec<u8>) -> Result<Plugin, LifecycleError> {
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || host.load(&bytes))
            .await
            .map_err(unavailable)?
            .map_err(|e| LifecycleError::Invalid(e.to_string()))
    }

    fn cohort_index(&self, cohort: &str) -> Result<usize, LifecycleError> {
        self.config
            .cohorts
            .iter()
            .position(|c| c.name == cohort)
            .ok_or_else(|| {
                LifecycleError::NotFound(format!(
                    "no cohort {cohort:?}; cohorts: {:?}",
                    self.config
                        .cohorts
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                ))
            })
    }

    /// Load, compile and initialise `version` for cohort `ci`, and get its schema id
    /// (registering it when `register` is `Some(true)`; `None` leaves the id to the caller).
    async fn build(
        &self,
        ci: usize,
        version: &Version,
        register: Option<bool>,
    ) -> Result<Built, LifecycleError> {
        let c = &self.config.cohorts[ci];
        let bytes = self
            .store
            .get(&version.sha256)
            .map_err(unavailable)?
            .ok_or_else(|| {
                LifecycleError::Unavailable(format!(
                    "{} (sha256 {}) is not in the plugin store {}",
                    version.id(),
                    version.sha256,
                    self.store.dir().display()
                ))
            })?;
        let plugin = self.load(bytes).await?;
        let info = plugin.info().clone();
        if info.name != version.name || info.version != version.version {
            return Err(LifecycleError::Invalid(format!(
                "sha256 {} describes itself as {}, not {}",
                version.sha256,
                info.id(),
                version.id()
            )));
        }
        let configured = self
            .configure(ci, &plugin, format!("{}:{}", c.name, info.id()))
            .await?;
        let subject = subject(&self.config, &c.output_topic, &info);
        let schema_id = match register {
            Some(register) => {
                let id = self.schema_id(&subject, &info.schema, register).await?;
                tracing::info!(cohort = %c.name, plugin = %info.id(), sha256 = %info.sha256, %subject, schema_id = id, "cohort ready");
                id
            }
            None => 0,
        };
        let plan = cohort_plan(c, &plugin, schema_id, &c.output_topic);
        Ok(Built {
            plan,
            configured: Arc::new(configured),
            subject,
            schema: info.schema,
        })
    }

    /// Register (or look up) a schema, retrying for a while when the registry is away.
    async fn schema_id(
        &self,
        subject: &str,
        schema: &str,
        register: bool,
    ) -> Result<u32, LifecycleError> {
        let mut attempt = 0u32;
        loop {
            match self.registry.schema_id(subject, schema, register).await {
                Ok(id) => return Ok(id),
                Err(e) if e.is_transient() && attempt < 25 => {
                    attempt += 1;
                    let wait = Duration::from_millis(200 * u64::from(attempt));
                    tracing::warn!(error = %e, attempt, retry_in = ?wait, "schema registry unavailable; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) if e.is_transient() => return Err(unavailable(e)),
                Err(e) => return Err(LifecycleError::Conflict(e.to_string())),
            }
        }
    }

    /// Gate `id` for `cohort`, then pin it and wait until this process runs it.
    pub async fn promote(
        &self,
        cohort: &str,
        id: &str,
        by: &str,
    ) -> Result<Promoted, LifecycleError> {
        let ci = self.cohort_index(cohort)?;
        let upload = self.stored(id)?;
        self.change(ci, upload.plugin, by, Action::Promote).await
    }

    /// Pin the version the cohort ran before its current pin (each rollback goes one pin
    /// further back).
    pub async fn rollback(&self, cohort: &str, by: &str) -> Result<Promoted, LifecycleError> {
        let ci = self.cohort_index(cohort)?;
        let previous = self
            .control
            .state()
            .pins
            .get(cohort)
            .and_then(|p| {
                p.rollback_to
                    .iter()
                    .rev()
                    .find(|v| v.sha256 != p.plugin.sha256)
                    .cloned()
            })
            .ok_or_else(|| {
                LifecycleError::Conflict(format!(
                    "cohort {cohort:?} runs the first version it was pinned to; there is nothing to roll back to"
                ))
            })?;
        // The version ran before, so its schema is in the subject's history: no
        // compatibility gate (the registry answers an existing schema with its id).
        self.change(ci, previous, by, Action::Rollback).await
    }

    async fn change(
        &self,
        ci: usize,
        to: Version,
        by: &str,
        action: Action,
    ) -> Result<Promoted, LifecycleError> {
        let _one = self.changes.lock().await;
        let started = Instant::now();
        let cohort = self.config.cohorts[ci].name.clone();
        let current = self.control.state().pins.get(&cohort).cloned();
        let from = match &current {
            Some(pin) => pin.plugin.clone(),
            None => self.live.borrow().versions[ci].clone(),
        };
        if from.sha256 == to.sha256 {
            return Err(LifecycleError::Conflict(format!(
                "cohort {cohort:?} already runs {} (sha256 {})",
                to.id(),
                to.sha256
            )));
        }
        let mut built = self.build(ci, &to, None).await?;
        // A promote is gated; a rollback returns to a version whose schema is already in
        // the subject's history and which ran with this config before.
        if action == Action::Promote {
            self.gate(&to, &built).await?;
        }
        // The gate passed: only now register the schema (a refused promote leaves the
        // subject as it was).
        built.plan.schema_id = self
            .schema_id(
                &built.subject,
                &built.schema,
                self.config.registry.auto_register,
            )
            .await?;
        let gate_ms = started.elapsed().as_millis() as u64;
        self.built
            .lock()
            .expect("not poisoned")
            .insert((ci, to.sha256.clone()), built);
        let change = Change {
            cohort: &cohort,
            from: &from,
            to: &to,
            action,
            by,
            at_ms: now_ms(),
        };
        let (pin, audit) = change.records(current.as_ref());
        self.write_pin(ci, pin, audit).await?;
        self.wait_live(ci, &to).await?;
        let swap_ms = started.elapsed().as_millis() as u64;
        tracing::info!(%cohort, from = %from.id(), to = %to.id(), by, gate_ms, swap_ms, "{action}: new version live");
        let cutover = self
            .cutover(&cohort, &to.sha256, Duration::from_secs(1))
            .await;
        Ok(Promoted {
            cohort,
            from,
            to,
            gate_ms,
            swap_ms,
            cutover,
        })
    }

    /// A promote's gate: the registry accepts the schema under the cohort's subject, and
    /// the version passes its fixtures.
    async fn gate(&self, to: &Version, built: &Built) -> Result<(), LifecycleError> {
        let subject = &built.subject;
        if let Err(reasons) = self
            .registry
            .check_compatible(subject, &built.schema)
            .await
            .map_err(unavailable)?
        {
            return Err(LifecycleError::Conflict(format!(
                "the schema registry refuses {}'s schema under subject {subject:?}: {}; publish an evolution the subject's compatibility level accepts, or a new cohort and topic",
                to.id(),
                if reasons.is_empty() {
                    "incompatible".to_owned()
                } else {
                    reasons.join("; ")
                }
            )));
        }
        self.check_fixtures(&to.id(), built.configured.clone())
            .await
    }

    /// Write the pin and its audit entry; the change stands only if the pin this process
    /// then applies is this one (another process may have written first).
    async fn write_pin(&self, ci: usize, pin: Pin, audit: Audit) -> Result<(), LifecycleError> {
        let cohort = pin.cohort.clone();
        let sha = pin.plugin.sha256.clone();
        let written = self
            .control
            .append(vec![
                (
                    Key::Pin {
                        cohort: cohort.clone(),
                    },
                    crate::control::encode(&pin),
                ),
                (Key::audit(&audit), crate::control::encode(&audit)),
            ])
            .await;
        // The pin as applied also names the key it was verified under.
        let won = self
            .control
            .state()
            .pins
            .get(&cohort)
            .is_some_and(|applied| {
                Pin {
                    signer: None,
                    ..applied.clone()
                } == pin
            });
        if written.is_err() || !won {
            self.built.lock().expect("not poisoned").remove(&(ci, sha));
        }
        written.map_err(unavailable)?;
        if !won {
            return Err(LifecycleError::Conflict(format!(
                "another change to cohort {cohort:?} was written first; see `weir plugin history {cohort}` and try again"
            )));
        }
        Ok(())
    }

    /// Wait (at most 30 s) until this process runs `to` for cohort `ci`.
    async fn wait_live(&self, ci: usize, to: &Version) -> Result<(), LifecycleError> {
        let mut live = self.live.subscribe();
        let swapped = tokio::time::timeout(
            Duration::from_secs(30),
            live.wait_for(|l| l.versions.get(ci).is_some_and(|v| v.sha256 == to.sha256)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !swapped {
            return Err(LifecycleError::Unavailable(format!(
                "{} is pinned but this process did not switch to it within 30 s; see its log",
                to.id()
            )));
        }
        Ok(())
    }

    /// This process's cutover to `sha256` for `cohort`, waiting up to `wait` for it.
    async fn cutover(&self, cohort: &str, sha256: &str, wait: Duration) -> Option<Cutover> {
        let mut rx = self.control.subscribe();
        let find = |s: &crate::control::State| {
            s.audit
                .iter()
                .rev()
                .find(|a| {
                    a.action == Action::Cutover
                        && a.cohort.as_deref() == Some(cohort)
                        && a.new_sha256 == sha256
                        && a.cutover
                            .as_ref()
                            .is_some_and(|c| c.process == self.process)
                })
                .and_then(|a| a.cutover.clone())
        };
        match tokio::time::timeout(wait, rx.wait_for(|s| find(s).is_some())).await {
            Ok(Ok(s)) => find(&s),
            _ => None,
        }
    }

    /// Keep the live set equal to the control topic's pins, and record cutovers the
    /// pipeline reports. Runs until the pipeline's channel closes.
    pub async fn follow(self: Arc<Self>, mut switched: mpsc::UnboundedReceiver<Switched>) {
        let mut state = self.control.subscribe();
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                s = switched.recv() => match s {
                    Some(s) => {
                        #[cfg(debug_assertions)]
                        crate::failpoint("follower-panic");
                        let me = self.clone();
                        tokio::spawn(async move { me.record_cutover(s).await });
                        continue
                    }
                    None => return,
                },
                _ = retry.tick() => {}
            }
            self.mirror_index();
            self.converge().await;
        }
    }

    async fn record_cutover(&self, s: Switched) {
        let cohort = self.config.cohorts[s.cohort].name.clone();
        let at_ms = now_ms();
        tracing::info!(%cohort, plugin = %s.version.id(), first_topic = %weir_core::untrusted::Untrusted(&s.first_topic), "cutover: first message through the new version");
        let audit = Audit {
            cohort: Some(cohort),
            action: Action::Cutover,
            plugin: s.version.id(),
            old_sha256: None,
            new_sha256: s.version.sha256.clone(),
            at_ms,
            by: self.process.clone(),
            cutover: Some(Cutover {
                process: self.process.clone(),
                at_ms,
                first_topic: s.first_topic,
            }),
            signer: None,
        };
        if let Err(e) = self.control.audit(&audit).await {
            tracing::error!(error = %e, "cannot record a cutover in the control topic");
        }
    }

    /// Install every pin this process does not run yet.
    async fn converge(&self) {
        let state = self.control.state();
        for (ci, c) in self.config.cohorts.iter().enumerate() {
            let Some(pin) = state.pins.get(&c.name) else {
                continue;
            };
            if self.live.borrow().versions[ci].sha256 == pin.plugin.sha256 {
                continue;
            }
            let prebuilt = self
                .built
                .lock()
                .expect("not poisoned")
                .remove(&(ci, pin.plugin.sha256.clone()));
            let built = match prebuilt {
                Some(b) => b,
                None => match self.build(ci, &pin.plugin, Some(false)).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(cohort = %c.name, plugin = %pin.plugin.id(), error = %e, "cannot switch to the pinned version; retrying");
                        continue;
                    }
                },
            };
            let still = self
                .control
                .state()
                .pins
                .get(&c.name)
                .is_some_and(|p| p.plugin.sha256 == pin.plugin.sha256);
            if !still {
                continue;
            }
            self.live.send_modify(|live| {
                let mut cohorts = live.topology.cohorts.clone();
                cohorts[ci] = built.plan;
                let mut plugins = live.plugins.clone();
                plugins[ci] = built.configured;
                let mut versions = live.versions.clone();
                versions[ci] = pin.plugin.clone();
                *live = Arc::new(Live {
                    topology: Arc::new(Topology {
                        cohorts,
                        rules: live.topology.rules.clone(),
                        quarantine_topic: live.topology.quarantine_topic.clone(),
                        raw_topic: live.topology.raw_topic.clone(),
                    }),
                    plugins,
                    versions,
                });
            });
            tracing::info!(cohort = %c.name, plugin = %pin.plugin.id(), sha256 = %pin.plugin.sha256, "switched to the pinned version; the next batch uses it");
        }
    }

    /// The shadow runs the pipeline should feed (usually none).
    pub fn taps(&self) -> Vec<Arc<Tap>> {
        self.taps.lock().expect("not poisoned").clone()
    }

    /// Run stored version `id` beside `cohort`'s live version on a copy of its messages
    /// until `limit` (at most 10 minutes); nothing is published.
    pub async fn shadow(
        &self,
        cohort: &str,
        id: &str,
        limit: Limit,
    ) -> Result<ShadowReport, LifecycleError> {
        const CAP: Duration = Duration::from_secs(600);
        let ci = self.cohort_index(cohort)?;
        let upload = self.stored(id)?;
        let bytes = self
            .store
            .get(&upload.plugin.sha256)
            .map_err(unavailable)?
            .ok_or_else(|| unavailable(format!("{id} is not in the local store yet")))?;
        let plugin = self.load(bytes).await?;
        let label = format!("{}:shadow:{id}", self.config.cohorts[ci].name);
        let candidate = self.configure(ci, &plugin, label).await?;
        let (live, live_version) = {
            let l = self.live.borrow();
            (l.plugins[ci].clone(), l.versions[ci].clone())
        };
        let shadow = Shadow::new(ci);
        let tap = shadow.tap.clone();
        {
            let mut taps = self.taps.lock().expect("not poisoned");
            if taps.iter().any(|t| t.cohort == ci) {
                return Err(LifecycleError::Conflict(format!(
                    "a shadow run of cohort {cohort:?} is in progress; wait for it to finish"
                )));
            }
            taps.push(tap.clone());
        }
        tracing::info!(cohort, candidate = id, live = %live_version.id(), ?limit, "shadow run started");
        let report =
            tokio::task::spawn_blocking(move || shadow.run(&live, &candidate, limit, CAP)).await;
        self.taps
            .lock()
            .expect("not poisoned")
            .retain(|t| !Arc::ptr_eq(t, &tap));
        let report = report.map_err(unavailable)?;
        tracing::info!(
            cohort,
            candidate = id,
            messages = report.messages,
            identical = report.identical,
            different = report.different,
            live_rejected = report.live_rejected,
            candidate_rejected = report.candidate_rejected,
            candidate_failed = report.candidate_failed,
            skipped = report.skipped,
            "shadow run finished"
        );
        Ok(ShadowReport {
            cohort: cohort.to_owned(),
            live: live_version,
            candidate: upload.plugin,
            report,
        })
    }

    /// Every cohort and the version it runs here.
    pub fn cohorts(&self) -> Vec<CohortView> {
        let state = self.control.state();
        let live = self.live.borrow().clone();
        self.config
            .cohorts
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let pin = state
                    .pins
                    .get(&c.name)
                    .filter(|p| p.plugin.sha256 == live.versions[ci].sha256);
                CohortView {
                    cohort: c.name.clone(),
                    plugin: live.versions[ci].clone(),
                    since_ms: pin.map(|p| p.at_ms),
                    by: pin.map(|p| p.by.clone()),
                    output_topic: c.output_topic.clone(),
                    group: c
                        .group
                        .clone()
                        .unwrap_or_else(|| crate::config::DEFAULT_GROUP.into()),
                    slots: None,
                }
            })
            .collect()
    }

    /// How this process names itself.
    pub fn process(&self) -> &str {
        &self.process
    }

    /// Every stored version and the cohorts that run it here.
    pub fn plugins(&self) -> Vec<PluginView> {
        let live = self.live.borrow().clone();
        self.control
            .state()
            .uploads
            .values()
            .map(|u| PluginView {
                upload: u.clone(),
                cohorts: self
                    .config
                    .cohorts
                    .iter()
                    .zip(&live.versions)
                    .filter(|(_, v)| v.sha256 == u.plugin.sha256)
                    .map(|(c, _)| c.name.clone())
                    .collect(),
            })
            .collect()
    }

    /// The last `n` promotes and rollbacks of any cohort, oldest first.
    pub fn recent_changes(&self, n: usize) -> Vec<Audit> {
        let mut changes: Vec<Audit> = self
            .control
            .state()
            .audit
            .iter()
            .rev()
            .filter(|a| matches!(a.action, Action::Promote | Action::Rollback))
            .take(n)
            .cloned()
            .collect();
        changes.reverse();
        changes
    }

    /// The audit entries of a cohort, oldest first.
    pub fn history(&self, cohort: &str) -> Result<Vec<Audit>, LifecycleError> {
        self.cohort_index(cohort)?;
        Ok(self
            .control
            .state()
            .audit
            .iter()
            .filter(|a| a.cohort.as_deref() == Some(cohort))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: &str) -> Version {
        Version {
            name: "thermostat".into(),
            version: version.into(),
            sha256: format!("sha-{version}"),
        }
    }

    fn change<'a>(from: &'a Version, to: &'a Version, action: Action) -> Change<'a> {
        Change {
            cohort: "thermostats",
            from,
            to,
            action,
            by: "ops",
            at_ms: 7,
        }
    }

    #[test]
    fn promotes_stack_the_versions_they_leave_and_rollbacks_unwind_them() {
        let (v1, v2, v3) = (v("1"), v("2"), v("3"));
        // The first promote over weir.toml's version: nothing pinned before.
        let (p2, audit) = change(&v1, &v2, Action::Promote).records(None);
        assert_eq!(p2.plugin, v2);
        assert_eq!(p2.rollback_to, vec![v1.clone()]);
        assert_eq!(p2.replaces, None);
        assert_eq!(p2.previous, Some(v1.clone()));
        assert_eq!(
            (
                audit.action,
                audit.plugin.as_str(),
                audit.new_sha256.as_str()
            ),
            (Action::Promote, "thermostat@2", "sha-2")
        );
        assert_eq!(audit.old_sha256.as_deref(), Some("sha-1"));
        let (p3, _) = change(&v2, &v3, Action::Promote).records(Some(&p2));
        assert_eq!(p3.rollback_to, vec![v1.clone(), v2.clone()]);
        assert_eq!(p3.replaces.as_deref(), Some("sha-2"));
        assert_eq!(
            (p2.seq, p3.seq),
            (1, 2),
            "each pin one more than the one it replaces"
        );
        // Rolling back to 2 leaves only what was below it; a second rollback reaches 1.
        let (back, audit) = change(&v3, &v2, Action::Rollback).records(Some(&p3));
        assert_eq!(back.plugin, v2);
        assert_eq!(back.rollback_to, vec![v1.clone()]);
        assert_eq!(back.replaces.as_deref(), Some("sha-3"));
        assert_eq!(audit.action, Action::Rollback);
        let (first, _) = change(&v2, &v1, Action::Rollback).records(Some(&back));
        assert!(first.rollback_to.is_empty());
        // Records name who and when, and never a signer: that comes from the signature.
        assert_eq!((first.by.as_str(), first.at_ms), ("ops", 7));
        assert!(first.signer.is_none());
    }

    #[test]
    fn a_rollback_to_a_version_deep_in_the_chain_drops_everything_above_it() {
        let (v1, v2, v3, v4) = (v("1"), v("2"), v("3"), v("4"));
        let pin = Pin {
            cohort: "thermostats".into(),
            plugin: v4.clone(),
            previous: Some(v3.clone()),
            rollback_to: vec![v1.clone(), v2.clone(), v3.clone()],
            replaces: Some("sha-3".into()),
            seq: 3,
            at_ms: 1,
            by: "ops".into(),
            signer: None,
        };
        let (back, _) = change(&v4, &v2, Action::Rollback).records(Some(&pin));
        assert_eq!(back.rollback_to, vec![v1]);
        assert_eq!(back.seq, 4);
        assert_eq!(back.previous, Some(v4));
    }

    /// Processes that share one control log (in memory) and one schema registry (weir's
    /// own, in this process on loopback): what the lifecycle decides, without Kafka.
    mod processes {
        use super::*;
        use crate::control::Memory;

        struct Bed {
            log: Arc<Memory>,
            store: Store,
            host: Arc<Host>,
            registry: String,
            _dirs: (tempfile::TempDir, tempfile::TempDir),
        }

        fn plugins_dir() -> std::path::PathBuf {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
                })
                .join("plugins")
        }

        async fn bed() -> Bed {
            let (store_dir, registry_dir) =
                (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let registry = format!("http://{}", listener.local_addr().unwrap());
            let data = registry_dir.path().to_owned();
            tokio::spawn(async move {
                weir_registry::serve(
                    listener,
                    &data,
                    weir_registry::api::ApiConfig::default(),
                    std::future::pending(),
                )
                .await
            });
            let store = Store::open(store_dir.path()).unwrap();
            Bed {
                log: Arc::new(Memory::new(store.clone())),
                store,
                host: Arc::new(Host::new(Default::default(), None).unwrap()),
                registry,
                _dirs: (store_dir, registry_dir),
            }
        }

        /// A process named `name` running cohort `thermostats` (first pinned by its config
        /// to thermostat 1.0.0), following the shared log; its channel for cutovers.
        async fn process(
            bed: &Bed,
            name: &str,
        ) -> (Arc<Lifecycle>, mpsc::UnboundedSender<Switched>) {
            let text = format!(
                r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "{name}"
subscriptions = ["plant/#"]
[kafka]
bootstrap = "127.0.0.1:9092"
[registry]
url = "{registry}"
[plugins]
dir = "{dir}"
[[cohort]]
name = "thermostats"
topic = "plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "telemetry.thermostat"
"#,
                registry = bed.registry,
                dir = plugins_dir().display(),
            );
            let config = Config::parse("weir.toml", &text, &[]).unwrap();
            let seeds = ["thermostat-1.0.0.wasm", "thermostat-1.1.0.wasm"]
                .map(|f| {
                    let bytes = std::fs::read(plugins_dir().join(f)).unwrap_or_else(|e| {
                        panic!("{f}: {e}; build the plugins (cargo xtask plugins)")
                    });
                    (bed.host.load(&bytes).unwrap(), bytes)
                })
                .into();
            let log: Arc<dyn Log> = bed.log.clone();
            let lc = Lifecycle::start(config, bed.host.clone(), bed.store.clone(), log, seeds)
                .await
                .unwrap();
            let (switched, rx) = mpsc::unbounded_channel();
            tokio::spawn(lc.clone().follow(rx));
            (lc, switched)
        }

        fn running(lc: &Lifecycle) -> String {
            lc.live().borrow().versions[0].id()
        }

        /// Until `lc` runs `id` for the cohort (it follows the log by itself).
        async fn runs(lc: &Lifecycle, id: &str) {
            let mut live = lc.live();
            tokio::time::timeout(
                Duration::from_secs(30),
                live.wait_for(|l| l.versions[0].id() == id),
            )
            .await
            .unwrap_or_else(|_| panic!("{} still runs {}", lc.process(), running(lc)))
            .unwrap();
        }

        /// Two operators promote the same cohort at once through two processes: exactly
        /// one change is written, the other is refused as a conflict, and both processes
        /// end up running the winner.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn of_two_concurrent_promotes_one_wins_and_every_process_runs_it() {
            let bed = bed().await;
            let ((a, _ta), (b, _tb)) = (process(&bed, "a").await, process(&bed, "b").await);
            assert_eq!(running(&a), "thermostat@1.0.0");
            let (pa, pb) = tokio::join!(
                a.promote("thermostats", "thermostat@1.1.0", "alice"),
                b.promote("thermostats", "thermostat@1.1.0", "bob"),
            );
            let won = usize::from(pa.is_ok()) + usize::from(pb.is_ok());
            assert_eq!(won, 1, "{pa:?} / {pb:?}");
            let lost = if pa.is_ok() { pb } else { pa };
            assert!(matches!(lost, Err(LifecycleError::Conflict(_))), "{lost:?}");
            runs(&a, "thermostat@1.1.0").await;
            runs(&b, "thermostat@1.1.0").await;
            let state = bed.log.state();
            let promotes = state
                .audit
                .iter()
                .filter(|e| e.action == Action::Promote)
                .count();
            assert_eq!(promotes, 1, "{:?}", state.audit);
        }

        /// A rollback written by one process is followed by the other; a second rollback
        /// has nothing left to go back to.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_rollback_through_one_process_is_run_by_every_process() {
            let bed = bed().await;
            let ((a, _ta), (b, _tb)) = (process(&bed, "a").await, process(&bed, "b").await);
            a.promote("thermostats", "thermostat@1.1.0", "alice")
                .await
                .unwrap();
            runs(&b, "thermostat@1.1.0").await;
            let back = b.rollback("thermostats", "bob").await.unwrap();
            assert_eq!(back.to.id(), "thermostat@1.0.0");
            runs(&a, "thermostat@1.0.0").await;
            let again = a.rollback("thermostats", "alice").await;
            assert!(
                matches!(again, Err(LifecycleError::Conflict(_))),
                "{again:?}"
            );
            let actions: Vec<Action> = a
                .history("thermostats")
                .unwrap()
                .iter()
                .map(|e| e.action)
                .collect();
            assert_eq!(actions, [Action::Promote, Action::Rollback]);
        }

        /// The pipeline reports the first message through the new version: the log records
        /// this process's cutover for every process to see (the promote's answer carries it
        /// too when it comes within its one-second wait, which a loaded machine may miss).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_cutover_the_pipeline_reports_is_recorded() {
            let bed = bed().await;
            let (a, switched) = process(&bed, "a").await;
            let mut live = a.live();
            let pipeline = tokio::spawn(async move {
                let live = live
                    .wait_for(|l| l.versions[0].id() == "thermostat@1.1.0")
                    .await
                    .unwrap()
                    .clone();
                switched
                    .send(Switched {
                        cohort: 0,
                        version: live.versions[0].clone(),
                        first_topic: "plant/1/thermostat/t-1".into(),
                    })
                    .unwrap();
                switched
            });
            let promoted = a
                .promote("thermostats", "thermostat@1.1.0", "alice")
                .await
                .unwrap();
            let _switched = pipeline.await.unwrap();
            let mut log = bed.log.subscribe();
            let recorded = tokio::time::timeout(
                Duration::from_secs(30),
                log.wait_for(|s| s.audit.iter().any(|e| e.action == Action::Cutover)),
            )
            .await
            .expect("the cutover is recorded within 30 s")
            .unwrap()
            .audit
            .iter()
            .find_map(|e| e.cutover.clone())
            .unwrap();
            assert_eq!(recorded.process, "a");
            assert_eq!(recorded.first_topic, "plant/1/thermostat/t-1");
            if let Some(answered) = promoted.cutover {
                assert_eq!(answered, recorded);
            }
        }
    }
}
