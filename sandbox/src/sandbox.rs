//! The wasmtime sandbox: engine configuration, the one import a plugin gets (`log`), limits
//! and trap classification. Nothing else is linked, so a component that imports anything
//! more (WASI filesystem, clocks, random, ...) fails to instantiate and is refused at load.

use super::{LoadError, codes, log};
use crate::priority::{thread_cpu, thread_cpu_at_most};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use weir_core::message::Message;

mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
    });
}

/// The `packed-plugin` world (contract 1.1): the same types and host, its own `process`.
mod packed {
    wasmtime::component::bindgen!({
        world: "packed-plugin",
        path: "../wit",
        with: {
            "weir:transform/types": super::bindings::weir::transform::types,
            "weir:transform/host": super::bindings::weir::transform::host,
        },
    });
}

/// The `framed-plugin` world (contract 1.2): the batch and its outcomes framed in one buffer
/// each (`weir_sdk::frame`).
mod framed {
    wasmtime::component::bindgen!({
        world: "framed-plugin",
        path: "../wit",
        with: {
            "weir:transform/types": super::bindings::weir::transform::types,
            "weir:transform/host": super::bindings::weir::transform::host,
        },
    });
}

pub use bindings::weir::transform::types::{
    Level, Message as WitMessage, Outcome as WitOutcome, PackedOutcome, PackedRecord, PluginInfo,
    Record as WitRecord, Rejection as WitRejection,
};

/// Limits applied to every plugin call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear-memory cap per instance, bytes.
    pub memory_bytes: usize,
    /// CPU time budget per message in a call: the calling thread's CPU time, checked at
    /// each epoch tick. CPU time, not wall time, so that a plugin is not cut off for
    /// time the scheduler gave to others (a busy host, a worker at a low priority).
    pub time_per_message: Duration,
    /// Least CPU time budget of a call with the host's budget, and of instantiation,
    /// `describe` and `init` always (a cohort's own `process` budget has no floor).
    pub min_call_time: Duration,
    /// Wasm stack size, bytes.
    pub stack_bytes: usize,
    /// Most records one message may produce.
    pub max_records_per_message: usize,
    /// Largest record value (JSON text, or MessagePack) a plugin may return.
    pub max_record_bytes: usize,
    /// Most bytes the records of one message may total (values, keys and headers, each
    /// record counting 64 bytes and each header 48 besides their text: about what the host
    /// holds for one). The
    /// canonical ABI lets every record point at the same bytes of the plugin's memory, so
    /// the memory cap does not bound what the host copies out: this does.
    pub max_output_bytes_per_message: usize,
    /// Most bytes the host copies out of one `process` call, whatever its batch size.
    pub max_output_bytes_per_call: usize,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            time_per_message: Duration::from_millis(20),
            min_call_time: Duration::from_millis(100),
            stack_bytes: 512 << 10,
            max_records_per_message: 10_000,
            max_record_bytes: 1 << 20,
            max_output_bytes_per_message: 4 << 20,
            max_output_bytes_per_call: 64 << 20,
            max_instances: 64,
        }
    }
}

/// A cohort's own, tighter limits (`plugin_time_ms`, `plugin_memory_mib` in its config):
/// unset fields take the host's [`Limits`]. A noisy cohort can be held to less than others.
/// A cohort's time budget applies as given (the host's `min_call_time` floor is for its
/// default budget only): a cohort held to 5 ms per message gets 5 ms, not the floor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallLimits {
    /// Budget per message in a call.
    pub time_per_message: Option<Duration>,
    /// Linear-memory cap per instance, bytes (at most the host's).
    pub memory_bytes: Option<usize>,
    /// Output bytes per message (at most the host's).
    pub output_bytes_per_message: Option<usize>,
}

impl CallLimits {
    /// A cohort's own plugin limits (replay and redrive apply the same ones, so a
    /// replayed message meets the limits it met live).
    pub fn of(cohort: &weir_config::Cohort) -> Self {
        CallLimits {
            time_per_message: cohort.plugin_time_ms.map(Duration::from_millis),
            memory_bytes: cohort.plugin_memory_mib.map(|m| m << 20),
            output_bytes_per_message: cohort.plugin_output_kib.map(|k| k << 10),
        }
    }

    /// The output bound per message under `host`'s limits.
    pub fn output_per_message(&self, host: &Limits) -> usize {
        self.output_bytes_per_message
            .map_or(host.max_output_bytes_per_message, |b| {
                b.min(host.max_output_bytes_per_message)
            })
    }
}

/// How often the epoch advances: a call's CPU time is checked at most this often, so it
/// may run up to a tick past its budget (and up to [`FRESH`](crate::priority::FRESH)
/// more, the bound on how far its start's reading may be above the clock).
const TICK: Duration = Duration::from_millis(5);
/// Core Wasm instances one plugin component may hold.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Linear memories one plugin component may hold.
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
/// Tables one plugin component may hold.
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// Least budget of a batch cut short by its expected cost: a few ticks.
const MIN_QUICK_BATCH: Duration = Duration::from_millis(20);

struct Shared {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    ticker: Arc<Ticker>,
    /// Every configured plugin's idle instances: a cache that gives its pool slots back
    /// when the pool is full.
    idle_lists: std::sync::Mutex<Vec<std::sync::Weak<IdleList>>>,
    /// Where calls waiting long for room in the full pool are counted (`/readyz` shows
    /// them), once someone watches.
    waits: std::sync::OnceLock<prometheus_client::metrics::gauge::Gauge>,
}

/// A configured plugin's idle, initialised instances, with the calls each has served.
pub(super) type IdleList = std::sync::Mutex<Vec<(Instance, u32)>>;

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// The epoch thread's orders: it advances the epoch every [`TICK`] while any call into a
/// plugin runs, and sleeps while none does (an idle weir then wakes no thread 200 times a
/// second). Epoch deadlines count ticks from when a call is armed, so ticks not counted
/// while idle take nothing from a call's budget.
#[derive(Default)]
struct Ticker {
    state: Mutex<Ticking>,
    wake: Condvar,
}

#[derive(Default)]
struct Ticking {
    /// Calls into plugins running now.
    running: usize,
    /// Whether the epoch thread waits for a call: only then is it woken (a wake is a
    /// system call even when no one waits, and calls start one after another).
    idle: bool,
    stop: bool,
}

impl Ticker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ticking> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep the epoch advancing until the returned guard goes.
    fn run(self: &Arc<Self>) -> Running {
        let mut t = self.lock();
        t.running += 1;
        if t.idle {
            t.idle = false;
            self.wake.notify_one();
        }
        Running(self.clone())
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }

    /// Wait until a call runs; `false` once told to stop.
    fn wait_for_calls(&self) -> bool {
        let mut t = self.lock();
        while t.running == 0 && !t.stop {
            t.idle = true;
            t = self
                .wake
                .wait(t)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        t.idle = false;
        !t.stop
    }
}

/// A call into a plugin, running: the epoch advances while one lives.
struct Running(Arc<Ticker>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
    }
}

/// Engine + linker + limits, shared by every plugin of a host.
#[derive(Clone)]
pub(super) struct Sandbox(Arc<Shared>);

/// A component pre-instantiated against the linker, by the world it targets.
pub(super) enum Pre {
    /// `plugin`: record values as JSON text.
    Plain(bindings::PluginPre<State>),
    /// `packed-plugin`: record values as MessagePack.
    Packed(packed::PackedPluginPre<State>),
    /// `framed-plugin`: the batch and its outcomes framed, record values as MessagePack.
    Framed(framed::FramedPluginPre<State>),
}

impl Pre {
    /// The contract (and world) the plugin was built against, as `weir plugin inspect`
    /// shows it.
    pub(super) fn contract(&self) -> &'static str {
        match self {
            Pre::Plain(_) => "weir:transform@1.0.0",
            Pre::Packed(_) => "weir:transform@1.1.0 (packed-plugin)",
            Pre::Framed(_) => "weir:transform@1.2.0 (framed-plugin)",
        }
    }
}

/// An instance's exports, by the world it targets.
enum Exports {
    Plain(bindings::Plugin),
    Packed(packed::PackedPlugin),
    Framed(framed::FramedPlugin),
}

/// What one `process` call returned, by the world the plugin targets.
pub(super) enum Outcomes {
    Plain(Vec<WitOutcome>),
    Packed(Vec<PackedOutcome>),
    /// Framed outcomes, not yet read (`weir_sdk::frame::read_outcomes`).
    Framed(Vec<u8>),
}

impl Outcomes {
    /// How many outcomes came back; `None` for framed ones until they are read.
    pub(super) fn len(&self) -> Option<usize> {
        match self {
            Outcomes::Plain(v) => Some(v.len()),
            Outcomes::Packed(v) => Some(v.len()),
            Outcomes::Framed(_) => None,
        }
    }
}

impl Sandbox {
    pub(super) fn new(limits: Limits) -> Result<Self, LoadError> {
        // Per-component limits, so that no one plugin can take the pool: a component over
        // them is refused when it is loaded (push, promote, start-up), with wasmtime's
        // reason; the totals leave room for fat components (an interpreter built into a
        // component is a dozen or more core instances).
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(limits.max_instances)
            .total_core_instances(limits.max_instances * 16)
            .total_memories(limits.max_instances * 4)
            .total_tables(limits.max_instances * 8)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .concurrency_support(false)
            .max_wasm_stack(limits.stack_bytes)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `perf` names plugin functions from /tmp/perf-<pid>.map when this is set: for
        // profiling a plugin in place (`perf record -p <pid>`), never needed otherwise.
        if std::env::var_os("WEIR_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let ticker = Arc::new(Ticker::default());
        let (weak, orders) = (engine.weak(), ticker.clone());
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while orders.wait_for_calls() {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Sandbox(Arc::new(Shared {
            engine,
            linker,
            limits,
            ticker,
            idle_lists: std::sync::Mutex::new(Vec::new()),
            waits: std::sync::OnceLock::new(),
        })))
    }

    /// Count calls waiting long for room in the full pool in `gauge` (the first one given).
    pub(super) fn count_waits_in(&self, gauge: prometheus_client::metrics::gauge::Gauge) {
        let _ = self.0.waits.set(gauge);
    }

    /// The gauge of long waits, if one is watched.
    pub(super) fn waits(&self) -> Option<&prometheus_client::metrics::gauge::Gauge> {
        self.0.waits.get()
    }

    /// Track `list` so that [`Sandbox::release_idle`] can empty it.
    pub(super) fn register_idle(&self, list: &Arc<IdleList>) {
        let mut lists = self.0.idle_lists.lock().unwrap_or_else(|p| p.into_inner());
        lists.retain(|l| l.strong_count() > 0);
        lists.push(Arc::downgrade(list));
    }

    /// Drop every idle instance of every configured plugin, giving their pool slots back;
    /// how many there were.
    pub(super) fn release_idle(&self) -> usize {
        let lists: Vec<Arc<IdleList>> = self
            .0
            .idle_lists
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        lists
            .iter()
            .map(|l| {
                let dropped: Vec<_> =
                    std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner()));
                dropped.len()
            })
            .sum()
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.0.limits
    }

    pub(super) fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        Component::new(&self.0.engine, bytes).map_err(|e| {
            LoadError::NotAComponent(format!(
                "not a valid Wasm component, or over this host's limits: {e:#}"
            ))
        })
    }

    pub(super) fn prepare(&self, component: &Component) -> Result<Pre, LoadError> {
        let ungranted: Vec<String> = component
            .component_type()
            .imports(&self.0.engine)
            .map(|(name, _)| name.to_owned())
            .filter(|name| !name.starts_with("weir:transform/"))
            .collect();
        if !ungranted.is_empty() {
            return Err(LoadError::WrongWorld(format!(
                "it imports {}, which weir does not grant",
                ungranted.join(", ")
            )));
        }
        let pre = self
            .0
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        // The world is told by the `process` it exports; each is then type-checked whole.
        let exports = component.component_type();
        let exports: Vec<&str> = exports
            .exports(&self.0.engine)
            .map(|(name, _)| name)
            .collect();
        if exports.contains(&"process-framed") {
            framed::FramedPluginPre::new(pre).map(Pre::Framed)
        } else if exports.contains(&"process-packed") {
            packed::PackedPluginPre::new(pre).map(Pre::Packed)
        } else {
            bindings::PluginPre::new(pre).map(Pre::Plain)
        }
        .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))
    }

    /// The CPU budget of instantiation, `describe` and `init`: the host's floor at least,
    /// whatever a cohort's budget per message.
    fn setup_budget(&self, own: &CallLimits) -> Duration {
        self.budget(1, own)
            .max(self.budget(1, &CallLimits::default()))
    }

    /// The CPU budget of a `process` call of `messages` messages.
    fn budget(&self, messages: usize, own: &CallLimits) -> Duration {
        let l = &self.0.limits;
        let messages = u32::try_from(messages).unwrap_or(u32::MAX);
        // A cohort's own budget is exact; the host's default has a floor for short calls.
        match own.time_per_message {
            Some(t) => t.saturating_mul(messages),
            None => l
                .time_per_message
                .saturating_mul(messages)
                .max(l.min_call_time),
        }
    }
}

/// Epoch ticks until `left` has passed, at least one: when they have, the call's CPU
/// time is checked again.
fn ticks(left: Duration) -> u64 {
    u64::try_from(left.as_micros().div_ceil(TICK.as_micros()))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// When the epoch reaches a call's deadline: interrupt it if its thread has used its CPU
/// budget since the call began, else look again when the rest could have been used.
fn on_deadline(state: &State) -> UpdateDeadline {
    let used = thread_cpu().saturating_sub(state.cpu_start);
    match state.cpu_budget.checked_sub(used) {
        Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
        _ => UpdateDeadline::Interrupt,
    }
}

/// Per-store state: the memory limiter and the log of this call.
pub(super) struct State {
    label: String,
    /// One cap for the whole instance: every linear memory and table it grows counts.
    memory_cap: usize,
    /// Bytes of memories and tables the instance holds now.
    memory_used: usize,
    hit_memory_cap: bool,
    /// The configured plugin's log budget, shared by its instances.
    log_rate: Arc<log::Rate>,
    /// The last error-level line (a panic message, usually), to explain a trap.
    last_error: Option<String>,
    /// The calling thread's CPU time when the call began, or up to
    /// [`FRESH`](crate::priority::FRESH) above it ([`thread_cpu_at_most`]): the budget is
    /// counted from it, so a call may get that much more, never less.
    cpu_start: Duration,
    /// CPU time the call may use.
    cpu_budget: Duration,
}

impl wasmtime::ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current * TABLE_ELEMENT_BYTES, desired * TABLE_ELEMENT_BYTES))
    }
}

/// What a table element is charged against the memory cap (a pointer-sized reference plus
/// wasmtime's bookkeeping).
const TABLE_ELEMENT_BYTES: usize = 16;

impl State {
    /// Charge growth from `current` to `desired` bytes against the instance's one cap.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let after = self.memory_used - current.min(self.memory_used) + desired;
        if after > self.memory_cap {
            self.hit_memory_cap = true;
            return false;
        }
        self.memory_used = after;
        true
    }
}

impl bindings::weir::transform::types::Host for State {}

impl bindings::weir::transform::host::Host for State {
    fn log(&mut self, level: Level, mut message: String) {
        log::truncate(&mut message);
        // The last error line explains a trap, whether or not the log had room for it.
        if matches!(level, Level::Error) {
            self.last_error = Some(message.clone());
        }
        let plugin = &self.label;
        match self.log_rate.admit(std::time::Instant::now()) {
            log::Admit::No => return,
            log::Admit::AfterDropped(n) => {
                let most = log::LINES_PER_SECOND;
                tracing::warn!(%plugin, dropped = n, "the plugin logged more than {most} lines a second; the rest were dropped");
            }
            log::Admit::Yes => {}
        }
        let line = log::Untrusted(&message);
        match level {
            Level::Trace => tracing::trace!(%plugin, "{line}"),
            Level::Debug => tracing::debug!(%plugin, "{line}"),
            Level::Info => tracing::info!(%plugin, "{line}"),
            Level::Warn | Level::Error => tracing::warn!(%plugin, "{line}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error(
        "the plugin used more than its CPU time budget of {0:?}: a loop that does not end, or work too slow for the budget (raise the cohort's plugin_time_ms, or --plugin-time-ms)"
    )]
    Timeout(Duration),
    #[error("{0}")]
    Oom(String),
    #[error("{0}")]
    Trap(String),
    #[error("{0}")]
    Contract(String),
    #[error(
        "the plugin returned more than {0} bytes from one call (its records, keys and headers as copied out of its memory); raise the cohort's plugin_output_kib or --plugin-output-kib if that much is meant"
    )]
    OutputTooLarge(usize),
    #[error("plugin refused its config: {0}")]
    Config(String),
    #[error("cannot instantiate the plugin: {0}")]
    Instantiate(String),
    /// The host's instance pool is full: not the plugin's fault, and it passes.
    #[error(
        "the host's plugin instance pool is full ({0} instances in use); the call waits for one"
    )]
    HostCapacity(u32),
}

impl CallError {
    pub(super) fn code(&self) -> weir_sdk::codes::Code {
        match self {
            CallError::Timeout(_) => codes::TIMEOUT,
            CallError::Oom(_) => codes::OOM,
            CallError::Trap(_) | CallError::Instantiate(_) => codes::TRAP,
            // Never an outcome: a call waits for capacity (`Configured::call`); at set-up
            // (`configure`) it is an error, not a code.
            CallError::HostCapacity(_) => codes::TRAP,
            CallError::Contract(_) | CallError::Config(_) => codes::CONTRACT,
            CallError::OutputTooLarge(_) => codes::OUTPUT_TOO_LARGE,
        }
    }
}

/// A fresh instance in its own store.
pub(super) struct Instance {
    store: Store<State>,
    plugin: Exports,
    sandbox: Sandbox,
    limits: CallLimits,
    /// The hostcall fuel the current call was given.
    output_fuel: usize,
}

impl Instance {
    pub(super) fn new(
        sandbox: &Sandbox,
        pre: &Pre,
        label: &str,
        limits: CallLimits,
        log_rate: Arc<log::Rate>,
    ) -> Result<Self, CallError> {
        let host = sandbox.0.limits.memory_bytes;
        let state = State {
            label: label.to_owned(),
            memory_cap: limits.memory_bytes.map_or(host, |m| m.min(host)),
            memory_used: 0,
            hit_memory_cap: false,
            log_rate,
            last_error: None,
            cpu_start: thread_cpu(),
            cpu_budget: sandbox.setup_budget(&limits),
        };
        let mut store = Store::new(&sandbox.0.engine, state);
        store.limiter(|s| s);
        store.epoch_deadline_callback(|store| Ok(on_deadline(store.data())));
        store.set_epoch_deadline(ticks(sandbox.setup_budget(&limits)));
        let running = sandbox.0.ticker.run();
        let plugin = match pre {
            Pre::Plain(pre) => pre.instantiate(&mut store).map(Exports::Plain),
            Pre::Packed(pre) => pre.instantiate(&mut store).map(Exports::Packed),
            Pre::Framed(pre) => pre.instantiate(&mut store).map(Exports::Framed),
        }
        .map_err(|e| {
            match e.downcast_ref::<wasmtime::Trap>() {
                // Its start-up code spins: a timeout, as in any other call.
                Some(wasmtime::Trap::Interrupt) => {
                    CallError::Timeout(sandbox.setup_budget(&limits))
                }
                _ if e
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some() =>
                {
                    CallError::HostCapacity(sandbox.0.limits.max_instances)
                }
                _ => CallError::Instantiate(format!("{e:#}")),
            }
        })?;
        drop(running);
        Ok(Instance {
            store,
            plugin,
            sandbox: sandbox.clone(),
            limits,
            output_fuel: 0,
        })
    }

    /// Reset the call's state, give it `budget` of CPU time from now and let the host copy
    /// at most `output` bytes out of it (wasmtime's hostcall fuel bounds every string and
    /// list lifted from the guest, as it is lifted). The epoch advances while the returned
    /// guard lives: hold it for the call.
    #[must_use]
    fn arm(&mut self, budget: Duration, output: usize) -> Running {
        self.store.set_hostcall_fuel(output);
        self.output_fuel = output;
        let state = self.store.data_mut();
        state.hit_memory_cap = false;
        state.last_error = None;
        state.cpu_start = thread_cpu_at_most();
        state.cpu_budget = budget;
        self.store.set_epoch_deadline(ticks(budget));
        self.sandbox.0.ticker.run()
    }

    fn classify(&mut self, err: wasmtime::Error, budget: Duration) -> CallError {
        // wasmtime reports spent hostcall fuel as a plain error with this text, not as a
        // trap; the host tests pin it with a plugin that aliases its output.
        if err.downcast_ref::<wasmtime::Trap>().is_none()
            && format!("{err:#}").contains("too much data is being copied")
        {
            return CallError::OutputTooLarge(self.output_fuel);
        }
        let state = self.store.data_mut();
        if state.hit_memory_cap {
            let mut why = format!(
                "the plugin exceeded its memory cap of {} MiB",
                state.memory_cap >> 20
            );
            if let Some(logged) = state.last_error.take() {
                why = format!("{why} ({logged})");
            }
            return CallError::Oom(why);
        }
        match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => CallError::Timeout(budget),
            Some(trap) => {
                let mut why = match state.last_error.take() {
                    Some(logged) => format!("{logged} ({trap})"),
                    None => format!("the plugin trapped: {trap}"),
                };
                match trap {
                    wasmtime::Trap::StackOverflow => {
                        why = format!(
                            "the plugin overflowed its {} KiB Wasm stack (unbounded recursion?)",
                            self.sandbox.0.limits.stack_bytes >> 10
                        );
                    }
                    // Rust and C guests keep a shadow stack at the bottom of linear memory;
                    // overflowing it walks off the start of memory.
                    wasmtime::Trap::MemoryOutOfBounds => {
                        why.push_str(
                            " (a bug in the plugin, or its stack overflowing: deep recursion)",
                        );
                    }
                    _ => {}
                }
                CallError::Trap(why)
            }
            None => CallError::Trap(format!("{err:#}")),
        }
    }

    /// The output bound of a call of `messages` messages.
    fn output_bound(&self, messages: usize) -> usize {
        let host = &self.sandbox.0.limits;
        self.limits
            .output_per_message(host)
            .saturating_mul(messages)
            .min(host.max_output_bytes_per_call)
    }

    pub(super) fn describe(&mut self) -> Result<PluginInfo, CallError> {
        let budget = self.sandbox.setup_budget(&self.limits);
        let running = self.arm(budget, self.output_bound(1));
        let info = match &self.plugin {
            Exports::Plain(p) => p.call_describe(&mut self.store),
            Exports::Packed(p) => p.call_describe(&mut self.store),
            Exports::Framed(p) => p.call_describe(&mut self.store),
        };
        drop(running);
        info.map_err(|e| self.classify(e, budget))
    }

    pub(super) fn init(&mut self, config: &[(String, String)]) -> Result<(), CallError> {
        let budget = self.sandbox.setup_budget(&self.limits);
        let running = self.arm(budget, self.output_bound(1));
        let result = match &self.plugin {
            Exports::Plain(p) => p.call_init(&mut self.store, config),
            Exports::Packed(p) => p.call_init(&mut self.store, config),
            Exports::Framed(p) => p.call_init(&mut self.store, config),
        };
        drop(running);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(CallError::Config(msg)),
            Err(e) => Err(self.classify(e, budget)),
        }
    }

    /// Run `batch`; with the CPU time it took, to within [`FRESH`](crate::priority::FRESH)
    /// (a call shorter than that is timed by the wall clock, which spares it two readings
    /// of the CPU clock). `expected`, the batch's cost as measured on
    /// earlier calls, cuts a batch's budget short of the sum of its messages' budgets
    /// (never below [`MIN_QUICK_BATCH`]): a batch that runs past it is re-run one message
    /// at a time by the caller, each message with its full budget, so no message gets less
    /// than its own; but one spinning message no longer burns a whole batch's worth of
    /// budgets (64 × 20 ms) before its neighbours are served.
    pub(super) fn process(
        &mut self,
        batch: &mut [Message],
        expected: Option<Duration>,
    ) -> Result<(Outcomes, Duration), CallError> {
        let full = self.sandbox.budget(batch.len(), &self.limits);
        let budget = match expected {
            Some(e) if batch.len() > 1 => e.max(MIN_QUICK_BATCH).min(full),
            _ => full,
        };
        // Framed before the clock starts: the host's copy is not the plugin's time.
        let framed = matches!(self.plugin, Exports::Framed(_)).then(|| frame_batch(batch));
        let running = self.arm(budget, self.output_bound(batch.len()));
        let outcomes = match &self.plugin {
            Exports::Plain(p) => lent(batch, |wit| {
                p.call_process(&mut self.store, wit).map(Outcomes::Plain)
            }),
            Exports::Packed(p) => lent(batch, |wit| {
                p.call_process_packed(&mut self.store, wit)
                    .map(Outcomes::Packed)
            }),
            Exports::Framed(p) => p
                .call_process_framed(&mut self.store, framed.as_deref().unwrap_or_default())
                .map(Outcomes::Framed),
        };
        drop(running);
        let used = thread_cpu_at_most().saturating_sub(self.store.data().cpu_start);
        outcomes
            .map(|o| (o, used))
            .map_err(|e| self.classify(e, budget))
    }
}

/// `f` given `batch` as the binding types (contracts 1.0 and 1.1), its messages moved into
/// them and back rather than copied.
fn lent<T>(batch: &mut [Message], f: impl FnOnce(&[WitMessage]) -> T) -> T {
    let wit: Vec<WitMessage> = batch
        .iter_mut()
        .map(|m| WitMessage {
            topic: std::mem::take(&mut m.topic),
            payload: std::mem::take(&mut m.payload),
            properties: std::mem::take(&mut m.properties),
            content_type: m.content_type.take(),
            received_at_ms: m.received_at_ms,
        })
        .collect();
    let result = f(&wit);
    for (m, w) in batch.iter_mut().zip(wit) {
        m.topic = w.topic;
        m.payload = w.payload;
        m.properties = w.properties;
        m.content_type = w.content_type;
    }
    result
}

/// `batch` framed for `process-framed` (contract 1.2).
fn frame_batch(batch: &[Message]) -> Vec<u8> {
    use weir_sdk::frame;
    let size: usize = batch
        .iter()
        .map(|m| {
            // Three lengths, the content type's presence and the receive time: 21 bytes.
            21 + m.topic.len()
                + m.payload.len()
                + m.properties
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.len())
                    .sum::<usize>()
                + m.content_type.as_ref().map_or(0, |c| 4 + c.len())
        })
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    frame::put_len(&mut out, batch.len());
    for m in batch {
        frame::put_message(
            &mut out,
            &m.topic,
            &m.payload,
            &m.properties,
            m.content_type.as_deref(),
            m.received_at_ms,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// The epoch thread's wait, as `Sandbox::new` runs it, on a thread of its own: its
    /// answer comes through the channel.
    fn waiter(ticker: &Arc<Ticker>) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        let ticker = ticker.clone();
        std::thread::spawn(move || tx.send(ticker.wait_for_calls()).unwrap());
        rx
    }

    /// Until the epoch thread waits.
    fn until_idle(ticker: &Ticker) {
        let until = Instant::now() + Duration::from_secs(10);
        while !ticker.lock().idle {
            assert!(Instant::now() < until, "the waiter never waited");
            std::thread::yield_now();
        }
    }

    /// A waiting epoch thread is woken by a call's start, and told to stop by `stop`; a
    /// call that starts while it is not waiting leaves it be.
    #[test]
    fn the_epoch_thread_wakes_for_a_call_and_for_stop() {
        let ticker = Arc::new(Ticker::default());
        let woken = waiter(&ticker);
        until_idle(&ticker);
        let first = ticker.run();
        assert_eq!(woken.recv_timeout(Duration::from_secs(10)), Ok(true));
        assert!(!ticker.lock().idle);
        // Not waiting: a second call finds nothing to wake.
        let second = ticker.run();
        assert_eq!(ticker.lock().running, 2);
        drop((first, second));
        assert_eq!(ticker.lock().running, 0);

        let stopped = waiter(&ticker);
        until_idle(&ticker);
        ticker.stop();
        assert_eq!(stopped.recv_timeout(Duration::from_secs(10)), Ok(false));
    }
}
