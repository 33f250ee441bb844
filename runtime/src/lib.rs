//! weir: MQTT → sandboxed Wasm transforms → governed Avro on Kafka.
//!
//! One module per stage of the data path; stages talk through small types.

#![deny(unsafe_code)] // Allowed only in `credentials` (librdkafka's call to change a running
// client's SASL password), `sink::events` (a producer's event queue read by a thread of
// weir's) and, in test builds only, `sink` (librdkafka's fatal-error injection). The
// sandbox crate has the rest (precompiled artifacts, thread priority).

/// The memory allocator of every weir process (`#[global_allocator]` in the binary and in
/// the instruction-count benchmark). Not glibc's: a message's buffers are allocated on one
/// thread (the MQTT reader, the transform worker) and freed on another (the courier), and
/// glibc's per-thread arenas make such frees slow (locking the owning arena, consolidating
/// its fast bins): profiled draining a backlog, glibc's malloc and free took a fifth of
/// weir's CPU. Built without transparent huge pages (`no_thp`): mimalloc would ask for them
/// on its arenas, and each one it returns and touches again is a fresh 2 MiB the kernel
/// zeroes; without them peak RSS draining a backlog fell from 82–92 MiB to 54–56 MiB at
/// the same CPU per message.
///
/// It also replaces `malloc` and `free` for the C code linked in (mimalloc's `override`).
/// librdkafka allocates each record it is given and each of its headers on the thread that
/// produces it and frees them on the one that takes Kafka's answers: the pattern above,
/// where glibc's `malloc` took about a seventh of the I/O thread's CPU draining a backlog.
pub type Allocator = mimalloc::MiMalloc;

// Crates of their own, under the names the stages use: the config (a leaf, read by every
// part) and the Wasm sandbox (wasmtime, limits, the compiled cache, thread priority).
pub use weir_config as config;
pub use weir_config::signing;
pub use weir_sandbox as transform;
pub use weir_sandbox::priority;

pub mod admin;
pub mod admin_client;
pub mod capture;
pub mod control;
pub mod credentials;
pub mod deliver;
pub mod dryrun;
pub mod encode;
pub mod jobs;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod quarantine;
pub mod replay;
pub mod shadow;
pub mod sink;
pub mod source;
pub mod status;
pub mod store;
pub mod topics;
pub mod transactions;

/// Test builds only: panic here when `WEIR_FAILPOINT` names `point`, so that the tests can
/// show what weir does when a task dies (release builds have no such switch).
#[cfg(debug_assertions)]
pub(crate) fn failpoint(point: &str) {
    if std::env::var("WEIR_FAILPOINT").is_ok_and(|p| p == point) {
        panic!("failpoint {point}");
    }
}

/// Debug builds only: whether `WEIR_FAILPOINT` names `point` (for faults other than a
/// panic). Read once: it is asked on the data path.
#[cfg(debug_assertions)]
pub(crate) fn failpoint_armed(point: &str) -> bool {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("WEIR_FAILPOINT").ok())
        .as_deref()
        == Some(point)
}

/// What a panic said, for the error that reports it.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
