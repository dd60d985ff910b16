//! Time for guests: the engine's epoch, advanced by a plain thread. At each
//! tick a running guest yields and its store checks the call's deadline
//! (`sandbox`); the serving engine and the snapshot engine each tick their
//! own.

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
