//! What the servers share: the plugins serving now, metrics, the bound on
//! concurrent plugin calls, and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::contract::Kind;
use crate::metrics::{KindLabels, LoadLabels, Metrics};
use crate::registry::Registry;
use crate::summary::RefusalSummary;

/// Shared by every connection of every listener.
pub struct HostState {
    registry: ArcSwap<Registry>,
    refused: ArcSwap<Vec<RefusalSummary>>,
    /// Metrics of this host.
    pub metrics: Metrics,
    /// One permit per plugin instance that may run at once; requests wait
    /// for one (backpressure) rather than exhausting the instance pool.
    pub permits: Arc<Semaphore>,
    ready: AtomicBool,
}

impl HostState {
    /// A host with no plugins yet, not ready.
    pub fn new(max_concurrent_calls: usize) -> Self {
        Self {
            registry: ArcSwap::from_pointee(Registry::default()),
            refused: ArcSwap::from_pointee(Vec::new()),
            metrics: Metrics::default(),
            permits: Arc::new(Semaphore::new(max_concurrent_calls)),
            ready: AtomicBool::new(false),
        }
    }

    /// The plugins serving now. Requests keep the snapshot they started
    /// with, so a swap never changes a plugin under a running request.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Serves `registry` from the next request on (requests already running
    /// finish with the registry they started with), and marks the host ready.
    pub fn install(&self, registry: Registry) {
        for kind in Kind::ALL {
            let count = registry.of_kind(kind).count() as i64;
            self.metrics.plugins.get_or_create(&KindLabels { kind: kind.interface() }).set(count);
        }
        self.registry.store(Arc::new(registry));
        self.ready.store(true, Ordering::Release);
    }

    /// Remembers the files refused by the latest load or rescan, for the
    /// status endpoint (the last error of each file).
    pub fn set_refused(&self, refused: &[crate::error::LoadError]) {
        self.refused.store(Arc::new(refused.iter().map(RefusalSummary::from).collect()));
    }

    /// Files refused by the latest load or rescan.
    pub fn refused(&self) -> Arc<Vec<RefusalSummary>> {
        self.refused.load_full()
    }

    /// Counts plugin files loaded and refused.
    pub fn count_loads(&self, loaded: usize, refused: usize) {
        self.metrics.plugin_loads.get_or_create(&LoadLabels { result: "loaded" }).inc_by(loaded as u64);
        self.metrics.plugin_loads.get_or_create(&LoadLabels { result: "refused" }).inc_by(refused as u64);
    }

    /// True once the plugins have been loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
