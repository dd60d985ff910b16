//! What the servers share: the plugins serving now, metrics, the bounds on
//! concurrent plugin calls, and readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{KindLabels, ListenerLabels, LoadLabels, Metrics};
use crate::plugins::registry::Registry;
use crate::plugins::summary::{DirCondition, DirStatus, RefusalSummary, SyncHealth, SyncStatus};
use crate::runtime::contract::Kind;

/// Shared by every connection of every listener.
pub struct HostState {
    registry: ArcSwap<Registry>,
    refused: ArcSwap<Vec<RefusalSummary>>,
    plugin_dir: ArcSwapOption<DirStatus>,
    /// Metrics of this host.
    pub metrics: Metrics,
    /// Plugin calls admission and the gateway may each run at once.
    pub calls: CallBudgets,
    ready: AtomicBool,
    sync: OnceLock<Arc<SyncHealth>>,
}

impl HostState {
    /// A host with no plugins yet, not ready.
    pub fn new(calls: CallBudgets) -> Self {
        Self {
            registry: ArcSwap::from_pointee(Registry::default()),
            refused: ArcSwap::from_pointee(Vec::new()),
            plugin_dir: ArcSwapOption::empty(),
            metrics: Metrics::default(),
            calls,
            ready: AtomicBool::new(false),
            sync: OnceLock::new(),
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

    /// Reports webhook sync's `health` in readiness and `/plugins` from now
    /// on. Call it before the first [`HostState::install`], so the host is
    /// never reported ready without its sync check.
    pub fn report_sync(&self, health: Arc<SyncHealth>) {
        let _ = self.sync.set(health);
    }

    /// Remembers the files refused by the latest load or rescan, for the
    /// status endpoint (the last error of each file).
    pub fn set_refused(&self, refused: &[crate::plugins::error::LoadError]) {
        self.refused.store(Arc::new(refused.iter().map(RefusalSummary::from).collect()));
    }

    /// Files refused by the latest load or rescan.
    pub fn refused(&self) -> Arc<Vec<RefusalSummary>> {
        self.refused.load_full()
    }

    /// Records how the plugin directory looks now (`/plugins`, `/readyz`
    /// detail) and sets the `tollgate_plugin_dir_*` gauges.
    pub fn set_plugin_dir(&self, status: DirStatus) {
        let is = |condition| i64::from(status.condition == condition);
        self.metrics.plugin_dir_missing.set(is(DirCondition::Missing));
        self.metrics.plugin_dir_empty.set(is(DirCondition::Empty));
        self.plugin_dir.store(Some(Arc::new(status)));
    }

    /// How the plugin directory looks, when serving one.
    pub fn plugin_dir(&self) -> Option<DirStatus> {
        self.plugin_dir.load_full().map(|status| status.as_ref().clone())
    }

    /// Counts plugin files loaded and refused.
    pub fn count_loads(&self, loaded: usize, refused: usize) {
        self.metrics.plugin_loads.get_or_create(&LoadLabels { result: "loaded" }).inc_by(loaded as u64);
        self.metrics.plugin_loads.get_or_create(&LoadLabels { result: "refused" }).inc_by(refused as u64);
    }

    /// Each readiness check and its result, as `/readyz` shows them.
    ///
    /// A host whose webhook sync never succeeded is not ready (a refused
    /// token, missing RBAC, an unreachable API server at start): a rollout
    /// of it stops instead of replacing replicas that work. Once a sync has
    /// succeeded, later failures do not take the host out of its Service:
    /// what was registered keeps being served, and the failure shows in the
    /// check's detail, the log and `tollgate_webhook_sync_healthy`.
    pub fn readiness(&self) -> Readiness {
        let loaded = self.ready.load(Ordering::Acquire);
        let mut detail = if loaded { "loaded" } else { "loading plugins" }.to_string();
        // What serves is still the last good set: the host stays ready, and
        // says why what serves may not match the directory.
        if let Some(dir) = self.plugin_dir().filter(|d| d.condition != DirCondition::Ok) {
            detail = format!("{detail}; plugin directory {} {}", dir.path, dir.detail);
        }
        let mut checks = vec![Check { name: "plugins", ok: loaded, detail }];
        if let Some(status) = self.sync_status() {
            let (ok, detail) = match (status.ever_applied, status.error) {
                (true, None) => match status.watch_error {
                    None => (true, "applied".to_string()),
                    Some(error) => (true, format!("applied, but changes by others are not seen: {error}")),
                },
                (true, Some(error)) => {
                    (true, format!("latest attempt failed, registered configuration unchanged: {error}"))
                }
                (false, Some(error)) => (false, format!("never applied: {error}")),
                (false, None) => (false, "first sync under way".to_string()),
            };
            checks.push(Check { name: "webhook-sync", ok, detail });
        }
        Readiness { checks }
    }

    /// How webhook sync goes, when syncing.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.sync.get().map(|health| health.status())
    }
}

/// How many plugin calls each listener may run at once. Admission and the
/// gateway have budgets of their own, so neither can starve the other: a
/// gateway flood once took every permit of a shared pool, and admission
/// requests then waited past their deadline and were answered by the
/// failure policy (`Ignore` allowed pods policy forbids). Calls wait for a
/// permit of their own budget (backpressure) rather than exhausting the
/// engine's instance pool, which is sized for both budgets together.
#[derive(Debug, Clone)]
pub struct CallBudgets {
    /// Admission's calls; a review waits for one until its deadline.
    pub admission: CallBudget,
    /// The gateway's calls.
    pub gateway: CallBudget,
    /// How long a gateway call waits for a permit before the request is
    /// answered 503 with `Retry-After`.
    pub gateway_wait: Duration,
}

/// Plugin calls that may run at once. Clones share the budget.
#[derive(Debug, Clone)]
pub struct CallBudget(Arc<Semaphore>);

impl CallBudget {
    /// `calls` at once.
    pub fn new(calls: usize) -> Self {
        Self(Arc::new(Semaphore::new(calls)))
    }

    /// A call, waiting at most `wait` for one to come free; `None` when none
    /// did. A free one is taken at once: only waiting needs a timer
    /// (registering one on every request cost 0.1-0.7 µs in the server).
    pub async fn permit(&self, wait: Duration) -> Option<OwnedSemaphorePermit> {
        match self.0.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            // The budgets are never closed; a closed one would be overload too.
            Err(_) => tokio::time::timeout(wait, self.0.clone().acquire_owned()).await.ok().and_then(Result::ok),
        }
    }
}

/// Whose budget a call is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Admission reviews; a review waits for a call until its deadline.
    Admission,
    /// Gateway routes and allowlists; a call waits `gateway_wait` at most.
    Gateway,
}

impl Budget {
    /// The listener's name, as metrics label it.
    pub fn listener(self) -> &'static str {
        match self {
            Budget::Admission => "admission",
            Budget::Gateway => "gateway",
        }
    }
}

/// No call of the budget became free in time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no plugin call of the {listener} budget became free in time", listener = .0.listener())]
pub struct Overloaded(pub Budget);

impl CallBudgets {
    /// `admission` and `gateway` calls at once; gateway calls wait at most
    /// `gateway_wait` for a permit.
    pub fn new(admission: usize, gateway: usize, gateway_wait: Duration) -> Self {
        Self { admission: CallBudget::new(admission), gateway: CallBudget::new(gateway), gateway_wait }
    }
}

impl HostState {
    /// A call of `budget`, waiting at most `wait` for one to come free (see
    /// [`CallBudget::permit`]), overload counted in
    /// `tollgate_overloaded_total{listener}`.
    pub async fn call_permit(&self, budget: Budget, wait: Duration) -> Result<OwnedSemaphorePermit, Overloaded> {
        let calls = match budget {
            Budget::Admission => &self.calls.admission,
            Budget::Gateway => &self.calls.gateway,
        };
        calls.permit(wait).await.ok_or_else(|| {
            self.overloaded(budget);
            Overloaded(budget)
        })
    }

    /// Counts a request of `budget` that found no call free in time.
    pub fn overloaded(&self, budget: Budget) {
        self.metrics.overloaded.get_or_create(&ListenerLabels { listener: budget.listener() }).inc();
    }
}

/// The readiness checks of a host.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Each check, in order.
    pub checks: Vec<Check>,
}

/// One readiness check.
#[derive(Debug, Clone)]
pub struct Check {
    /// `plugins` or `webhook-sync`.
    pub name: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// What it found, in words.
    pub detail: String,
}

impl Readiness {
    /// True when every check passes.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The `/readyz` body: `ready`, or the failing checks; with `verbose`
    /// every check as the Kubernetes API server lists its own
    /// (`[+]name ok`, `[-]name failed: reason`).
    pub fn render(&self, verbose: bool) -> String {
        if verbose {
            let mut out = String::new();
            for check in &self.checks {
                let (mark, word) = if check.ok { ('+', "ok") } else { ('-', "failed") };
                out.push_str(&format!("[{mark}]{} {word}: {}\n", check.name, check.detail));
            }
            out.push_str(if self.ready() { "readyz check passed" } else { "readyz check failed" });
            return out;
        }
        if self.ready() {
            return "ready".into();
        }
        let failing: Vec<String> =
            self.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        format!("not ready: {}", failing.join("; "))
    }
}
