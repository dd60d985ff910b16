//! Rate limits for log lines that clients can cause (failed TLS handshakes,
//! oversized bodies, refused requests): a client repeating a mistake must
//! not flood the log or hide everything else in it, but the first events of
//! a burst are always logged, and the next logged line says how many were
//! dropped in between.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a budget of log lines lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// At most `per_window` events are logged per [`WINDOW`]; the rest are
/// counted. One per kind of event, as a `static` beside the log line.
#[derive(Debug)]
pub struct Throttle {
    per_window: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Throttle {
    /// A throttle letting `per_window` events through per [`WINDOW`].
    pub const fn new(per_window: u32) -> Self {
        Self { per_window, state: Mutex::new(Window { started: None, logged: 0, suppressed: 0 }) }
    }

    /// Whether this event may be logged now: `Some(n)` with the number of
    /// events dropped since the last one logged, or `None` to drop it.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a thread panicked while counting; the
        // counts are still usable.
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if window.started.is_none_or(|started| now.duration_since(started) >= WINDOW) {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged < self.per_window {
            window.logged += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_and_the_next_window_reports_what_was_dropped() {
        let throttle = Throttle::new(2);
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        assert_eq!(throttle.admit_at(start), Some(0));
        assert_eq!(throttle.admit_at(start), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at(start + WINDOW), Some(2), "the first line of a new window counts the dropped");
        assert_eq!(throttle.admit_at(start + WINDOW), Some(0));
    }
}
