//! CPU priority of weir's threads: a group's threads at its `nice`, and a transform worker
//! whose plugin ran past its budget at the lowest priority Linux has.
//!
//! Unprivileged, a thread can lower its priority but never raise it again, so a worker
//! that recovers is replaced by a new thread rather than restored.

// Two foreign calls: `sched_setscheduler` for SCHED_IDLE, which rustix leaves out on
// purpose and no maintained crate offers alone (thread-priority's also resets the nice
// value, which a thread of a niced group may not do); and `clock_gettime` for the thread's
// CPU clock, through libc because rustix's parses the vDSO first, which valgrind cannot
// run (rustix issue 1559) and the instruction-count guard runs weir under valgrind.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How old this thread's last CPU-clock reading may be for [`thread_cpu_at_most`] to answer
/// from it. A tenth of the epoch tick: a call's budget is checked only once a tick anyway.
pub const FRESH: Duration = Duration::from_micros(500);

thread_local! {
    /// This thread's last CPU-clock reading, with a wall-clock instant taken just before it.
    static LAST_READING: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// CPU time the calling thread has used. A system call (Linux's vDSO does not serve this
/// clock) that takes the scheduler's lock: about 1.3 µs on a virtual machine, against
/// 30 ns for the wall clock. Where an upper bound will do, [`thread_cpu_at_most`] is cheaper.
pub fn thread_cpu() -> Duration {
    let at = Instant::now();
    let cpu = read_thread_cpu();
    LAST_READING.set(Some((at, cpu)));
    cpu
}

/// This thread's CPU time now, or at most [`FRESH`] above it: the last reading on this
/// thread plus the wall-clock time since, while that reading is fresh (a thread's CPU
/// time cannot grow faster than the wall clock); else a new reading. What a call's
/// start is measured from: its budget is then counted short by at most [`FRESH`], never
/// long, and back-to-back calls pay for one reading between them, not one each.
pub fn thread_cpu_at_most() -> Duration {
    let now = Instant::now();
    match LAST_READING.get() {
        Some((at, cpu)) if now.duration_since(at) < FRESH => cpu + now.duration_since(at),
        _ => thread_cpu(),
    }
}

fn read_thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec the call may write; the clock id is a constant Linux
    // has always had. On failure `t` stays zero.
    let _ = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The nice value a group with `[[group]] nice = increment` runs at: weir's own plus the
/// increment, at most 19; `None` for 0 (its threads keep weir's).
pub fn group_nice(increment: u8) -> Option<i32> {
    if increment == 0 {
        return None;
    }
    // The group's is relative to the one weir was started with (`nice -n 5 weir run` and
    // a group at +10 run at 15).
    let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0);
    Some((own + i32::from(increment)).min(i32::from(weir_config::MAX_NICE)))
}

/// Set the calling thread's nice value; whether it worked (if not, it says so and the
/// thread goes on at the one it has).
pub fn set_nice(nice: i32) -> bool {
    // On Linux the nice value is per thread: PRIO_PROCESS with a thread id sets that
    // thread's alone, and threads it starts inherit it.
    match rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(nice, error = %e, "cannot lower this thread's CPU priority; it keeps the one it has");
            false
        }
    }
}

/// Put the calling thread at the lowest priority: `SCHED_IDLE`, or nice 19 where that is
/// refused. Whether either worked.
///
/// Why not nice 19 alone: a thread at nice 19 still keeps a core to the end of its time
/// slice when a normal thread wakes, so a thread spinning at 19 delays every wake-up of
/// the others on its core by up to a slice (milliseconds: a healthy group's p99 beside
/// a spinning one rose by up to 10 %). A `SCHED_IDLE` thread is preempted at once by any
/// other that wakes, and gets almost no CPU (a weight of 3 against nice 0's 1024) while
/// other work of its cgroup is runnable. Against other cgroups (other services, other
/// containers) weir's cgroup weight decides, as for all of weir's threads.
///
/// A thread this low can be preempted while it holds a lock that normal threads share
/// (the log writer, the allocator, wasmtime's instance pool); on a host with no spare
/// CPU they may then wait for it until it gets a slice. Those locks are held for
/// microseconds, and a thread that blocks on one frees its core for the holder.
pub fn set_idle() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives the call, which
    // only reads it; pid 0 is the calling thread (on Linux the policy is per thread).
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result == 0 {
        return true;
    }
    let error = std::io::Error::last_os_error();
    tracing::warn!(%error, "cannot put this thread under SCHED_IDLE; it runs at nice 19 instead");
    set_nice(i32::from(weir_config::MAX_NICE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheap reading is never below the thread's CPU time, and at most `FRESH` above
    /// it: while the last reading is fresh, the wall-clock time since is added to it.
    #[test]
    fn cpu_at_most_bounds_the_clock_from_above_within_fresh() {
        std::thread::spawn(|| {
            for spin in [Duration::ZERO, FRESH / 2, FRESH * 2] {
                thread_cpu();
                let until = Instant::now() + spin;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                let bound = thread_cpu_at_most();
                let exact = read_thread_cpu();
                // `exact` was read after `bound`: only the few microseconds between the two
                // calls may separate them the wrong way.
                assert!(
                    bound + Duration::from_micros(50) >= exact,
                    "after {spin:?}: {bound:?} is below the clock's {exact:?}"
                );
                assert!(
                    bound <= exact + FRESH,
                    "after {spin:?}: {bound:?} is over {FRESH:?} above the clock's {exact:?}"
                );
            }
        })
        .join()
        .unwrap();
    }

    /// A thread put at the lowest priority is under SCHED_IDLE, and others are not.
    #[test]
    fn idle_applies_to_the_calling_thread_alone() {
        let idle = std::thread::spawn(|| {
            assert!(set_idle());
            // SAFETY: no arguments; reads the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(idle, libc::SCHED_IDLE);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    /// A group's nice value is weir's plus its increment, held to 19.
    #[test]
    fn group_nice_is_relative_and_capped() {
        let own = std::thread::spawn(|| {
            let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            (own, group_nice(0), group_nice(5), group_nice(19))
        })
        .join()
        .unwrap();
        assert_eq!(own.1, None);
        assert_eq!(own.2, Some((own.0 + 5).min(19)));
        assert_eq!(own.3, Some(19));
    }
}
