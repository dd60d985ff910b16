//! The one wasmtime [`Engine`] a host runs, with the limits every plugin
//! call lives under: a pooling allocator, a per-instance memory cap, and epoch
//! interruption ticked by a plain thread so a call can be given a deadline.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::runtime::epoch::EpochTicker;
use crate::runtime::error::EngineError;
use crate::runtime::function_cache::FunctionCache;
use crate::runtime::instances::{IdleSlots, Pool};
use crate::runtime::jwt::Verifier;
use crate::runtime::sandbox::{self, Sandbox, StoreFactory};
use crate::runtime::snapshot::Snapshotter;

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
    /// (1: a fresh instance for every call); see the `instances` module.
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
    /// How instances are made and kept, shared by every plugin's instances.
    pool: Arc<Pool>,
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

        let linker = sandbox::linker(&engine).map_err(|e| EngineError::Config(format!("{e:#}")))?;

        let _ticker = EpochTicker::start(engine.clone());
        let snapshotter = match Snapshotter::new(options.max_memory_bytes) {
            Ok(snapshotter) => Some(snapshotter),
            Err(error) => {
                tracing::warn!(%error, "configured snapshots unavailable; plugins will be configured on every call");
                None
            }
        };
        let stores = StoreFactory::new(engine.clone(), options.max_memory_bytes, Arc::<Verifier>::default());
        let pool = Arc::new(Pool {
            stores,
            calls_per_instance: options.calls_per_instance,
            idle_slots: IdleSlots::new(options.max_instances as usize),
        });
        Ok(Self { engine, linker, options, snapshotter, pool, _ticker })
    }

    /// The engine that takes configured snapshots, if it could be built.
    pub fn snapshotter(&self) -> Option<&Snapshotter> {
        self.snapshotter.as_ref()
    }

    /// How instances are made and kept, for a plugin's [`crate::runtime::instances::Instances`].
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// How stores are made, for a one-off call ([`sandbox::call`]).
    pub(crate) fn stores(&self) -> &StoreFactory {
        &self.pool.stores
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
}
