//! Time for guests: the engine's epoch, advanced by a plain thread, and
//! deadlines counted in its ticks. A call is given a deadline by setting how
//! many ticks it may run; the serving engine and the snapshot engine each
//! tick their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances; deadlines are accurate to about one tick,
/// and a long call yields to other tasks once a tick. Each tick wakes a
/// thread: at 2 ms that cost an idle-ish server a few µs per request (more
/// context switches and migrations), and deadlines are hundreds of ms.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Converts a deadline into epoch ticks, rounding up, at least one.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_micros().div_ceil(EPOCH_TICK.as_micros());
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped. A plain
/// thread, not a task, so a busy async runtime cannot delay a deadline.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{EPOCH_TICK, deadline_ticks};
    use std::time::Duration;

    #[test]
    fn deadlines_round_up_to_whole_ticks() {
        assert_eq!(deadline_ticks(Duration::ZERO), 1);
        assert_eq!(deadline_ticks(EPOCH_TICK), 1);
        assert_eq!(deadline_ticks(EPOCH_TICK + Duration::from_micros(1)), 2);
    }
}
