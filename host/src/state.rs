//! What the servers share: the plugins serving now, metrics, the bound on
//! concurrent plugin calls, and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::contract::Kind;
use crate::metrics::{KindLabels, LoadLabels, Metrics};
use crate::registry::{LoadReport, Registry};

/// Shared by every connection of every listener.
pub struct HostState {
    registry: ArcSwap<Registry>,
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

    /// Serves `report`'s plugins from the next request on, counts the load,
    /// and marks the host ready.
    pub fn install(&self, report: LoadReport) {
        let loaded = report.registry.len() as u64;
        self.metrics.plugin_loads.get_or_create(&LoadLabels { result: "loaded" }).inc_by(loaded);
        self.metrics.plugin_loads.get_or_create(&LoadLabels { result: "refused" }).inc_by(report.refused.len() as u64);
        for kind in Kind::ALL {
            let count = report.registry.of_kind(kind).count() as i64;
            self.metrics.plugins.get_or_create(&KindLabels { kind: kind.interface() }).set(count);
        }
        self.registry.store(Arc::new(report.registry));
        self.ready.store(true, Ordering::Release);
    }

    /// True once the plugins have been loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
