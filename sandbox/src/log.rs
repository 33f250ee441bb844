//! What a plugin may write to weir's log: lines escaped so they cannot forge weir's own,
//! and a volume bound per second per configured plugin (all its instances together), so a
//! chatty or hostile plugin cannot flood the log or slow the host with it.

use std::sync::Mutex;
use std::time::{Duration, Instant};
pub use weir_core::untrusted::Untrusted;

/// Lines a configured plugin may log per second; more are counted and dropped.
pub const LINES_PER_SECOND: u32 = 100;
/// Longest line kept, bytes; the rest is cut (marked with `…`).
pub const MAX_LINE: usize = 2048;

/// Cut `line` to [`MAX_LINE`] bytes at a character boundary.
pub fn truncate(line: &mut String) {
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
}

/// The answer for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it.
    Yes,
    /// Log it, after saying that this many lines were dropped in the last second.
    AfterDropped(u32),
    /// Drop it.
    No,
}

/// One configured plugin's log budget: [`LINES_PER_SECOND`] in each one-second window.
#[derive(Debug)]
pub struct Rate {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    dropped: u32,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            window: Mutex::new(Window {
                start: Instant::now(),
                lines: 0,
                dropped: 0,
            }),
        }
    }
}

impl Rate {
    /// May a line be logged at `now`?
    pub fn admit(&self, now: Instant) -> Admit {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped_before = 0;
        if now.saturating_duration_since(w.start) >= Duration::from_secs(1) {
            dropped_before = w.dropped;
            *w = Window {
                start: now,
                lines: 0,
                dropped: 0,
            };
        }
        if w.lines >= LINES_PER_SECOND {
            w.dropped += 1;
            return Admit::No;
        }
        w.lines += 1;
        if dropped_before > 0 {
            Admit::AfterDropped(dropped_before)
        } else {
            Admit::Yes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let mut line = "é".repeat(MAX_LINE);
        truncate(&mut line);
        assert!(line.len() <= MAX_LINE + '…'.len_utf8());
        assert!(line.ends_with('…'));
    }

    #[test]
    fn lines_beyond_the_rate_are_dropped_then_counted_in_the_next_second() {
        let rate = Rate::default();
        let t0 = Instant::now();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(rate.admit(t0), Admit::Yes);
        }
        for i in 0..5 {
            assert_eq!(rate.admit(t0 + Duration::from_millis(i * 100)), Admit::No);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(rate.admit(t1), Admit::AfterDropped(5));
        assert_eq!(rate.admit(t1), Admit::Yes);
    }
}
