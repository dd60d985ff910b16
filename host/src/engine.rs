//! The one wasmtime [`Engine`] a host runs, with the limits every plugin
//! call lives under: a pooling allocator, a per-instance memory cap, and epoch
//! interruption ticked by a plain thread so a call can be given a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;

use crate::compile_cache::FunctionCache;
use crate::jwt::Verifier;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::EngineError;
use crate::sandbox::Sandbox;
use crate::snapshot::Snapshotter;

/// How often the epoch advances; deadlines are accurate to about one tick,
/// and a long call yields to other tasks once a tick. Each tick wakes a
/// thread: at 2 ms that cost an idle-ish server a few µs per request (more
/// context switches and migrations), and deadlines are hundreds of ms.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each memory and table kept resident between uses of a pool slot:
/// covers a Rust guest's stack, data and a typical request's heap.
const KEEP_RESIDENT: usize = 4 << 20;

/// Limits for the engine and for every call into a plugin.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Linear memory one plugin instance may use.
    pub max_memory_bytes: usize,
    /// Plugin calls that may run at once. The pool holds twice as many
    /// instances: as many again may wait idle for reuse.
    pub max_instances: u32,
    /// Calls one instance serves before it is dropped for a fresh one
    /// (1: a fresh instance for every call). See [`crate::instances`].
    pub calls_per_instance: u32,
    /// Deadline for `metadata` and `configure` at load time.
    pub load_deadline: Duration,
    /// Deadline for one call of a gateway plugin (admission plugins get
    /// their webhook timeout less a margin, see `Plugin::call_deadline`).
    pub call_deadline: Duration,
    /// Use the pooling allocator (fast instantiation). It reserves about
    /// 4 GiB of address space per instance slot up front, which profilers
    /// such as valgrind and `ulimit -v` environments refuse; off, instances
    /// are allocated on demand.
    pub pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 << 20,
            max_instances: 128,
            calls_per_instance: 10_000,
            load_deadline: Duration::from_secs(1),
            call_deadline: Duration::from_secs(1),
            pooling: true,
        }
    }
}

/// The engine, the linker every plugin is instantiated against, and the
/// thread that ticks the epoch. Cheap to share behind an [`Arc`].
pub struct Runtime {
    engine: Engine,
    linker: Linker<Sandbox>,
    options: EngineOptions,
    snapshotter: Option<Snapshotter>,
    verifier: Arc<Verifier>,
    idle_slots: IdleSlots,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine and linker. Guests get WASI with no capabilities:
    /// no files, no network, no environment; clocks and randomness only.
    pub fn new(options: EngineOptions) -> Result<Self, EngineError> {
        let mut pool = PoolingAllocationConfig::default();
        // Running calls plus as many idle instances kept for reuse.
        let instances = options.max_instances.saturating_mul(2);
        // A Rust wasip2 component has one memory but a few core instances
        // and tables (the main module plus shims wit-component adds).
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances)
            .total_tables(instances.saturating_mul(4))
            // One fiber stack per running call (calls are async).
            .total_stacks(instances)
            .max_memory_size(options.max_memory_bytes)
            // A fresh instance per request page-faults on every page it
            // touches unless the slot's pages stay resident. With
            // PAGEMAP_SCAN (Linux 6.7+) wasmtime resets only the pages a call
            // dirtied, so keeping the whole touched range resident is cheap.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);

        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        // Names guest functions in `perf report` (writes /tmp/perf-PID.map);
        // for profiling only, see BENCHMARKS.md.
        if std::env::var_os("TOLLGATE_PERF_MAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        config
            .enable_incremental_compilation(Arc::new(FunctionCache::default()))
            .map_err(|e| EngineError::Config(format!("{e:#}")))?;
        if options.pooling {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| EngineError::Config(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| EngineError::Config(format!("{e:#}")))?;
        crate::contract::add_services_to_linker(&mut linker).map_err(|e| EngineError::Config(format!("{e:#}")))?;

        let _ticker = EpochTicker::start(engine.clone());
        let snapshotter = match Snapshotter::new(options.max_memory_bytes) {
            Ok(snapshotter) => Some(snapshotter),
            Err(error) => {
                tracing::warn!(%error, "configured snapshots unavailable; plugins will be configured on every call");
                None
            }
        };
        let idle_slots = IdleSlots::new(options.max_instances as usize);
        Ok(Self { engine, linker, options, snapshotter, verifier: Arc::default(), idle_slots, _ticker })
    }

    /// The engine that takes configured snapshots, if it could be built.
    pub fn snapshotter(&self) -> Option<&Snapshotter> {
        self.snapshotter.as_ref()
    }

    /// The JWT verifier and its caches, shared by every plugin call.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// The pool slots idle instances may hold, shared by all plugins.
    pub(crate) fn idle_slots(&self) -> &IdleSlots {
        &self.idle_slots
    }

    /// The engine, for compiling components.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker, for pre-instantiating components.
    pub fn linker(&self) -> &Linker<Sandbox> {
        &self.linker
    }

    /// The limits this runtime was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Converts a deadline into epoch ticks, rounding up, at least one.
    pub fn deadline_ticks(deadline: Duration) -> u64 {
        let ticks = deadline.as_micros().div_ceil(EPOCH_TICK.as_micros());
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}

/// A count of the pool slots that idle instances may still take. The pool is
/// sized for every permitted call to run at once with this many idle beside
/// them, so keeping instances never makes a new one fail.
pub(crate) struct IdleSlots {
    free: AtomicUsize,
}

impl IdleSlots {
    fn new(slots: usize) -> Self {
        Self { free: AtomicUsize::new(slots) }
    }

    /// Takes `n` slots if that many are free.
    pub(crate) fn acquire(&self, n: usize) -> bool {
        self.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| free.checked_sub(n)).is_ok()
    }

    /// Gives `n` slots back.
    pub(crate) fn release(&self, n: usize) {
        self.free.fetch_add(n, Ordering::AcqRel);
    }
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
    use super::{IdleSlots, Runtime};
    use std::time::Duration;

    #[test]
    fn idle_slots_are_never_overdrawn() {
        let slots = IdleSlots::new(2);
        assert!(slots.acquire(1));
        assert!(slots.acquire(1));
        assert!(!slots.acquire(1), "a third slot would let idle instances starve running calls");
        slots.release(2);
        assert!(slots.acquire(2));
        assert!(!slots.acquire(1));
    }

    #[test]
    fn deadlines_round_up_to_whole_ticks() {
        assert_eq!(Runtime::deadline_ticks(Duration::ZERO), 1);
        assert_eq!(Runtime::deadline_ticks(super::EPOCH_TICK), 1);
        assert_eq!(Runtime::deadline_ticks(super::EPOCH_TICK + Duration::from_micros(1)), 2);
    }
}
