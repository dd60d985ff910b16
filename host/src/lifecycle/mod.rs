//! The plugin lifecycle, owned in one place: the first load of the plugin
//! directory (or of the bundled plugins), every rescan after a file event,
//! and the swap of what serves, in order against webhook sync.
//!
//! Data goes one way. The files are read by [`rescan`] (what changed since
//! the registry serving now); `Lifecycle::apply` logs and counts that,
//! records the directory's condition, and swaps the new registry in;
//! [`HostState`] holds what requests read. [`crate::lifecycle::watch`] only says when
//! to look again. The first load and every rescan go through the same
//! `Lifecycle::apply`, so they log, count and report alike.

pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use self::watch::DirWatch;
use crate::cluster::sync::WebhookSync;
use crate::metrics::ChangeLabels;
use crate::plugins::error::DirError;
use crate::plugins::loader::Loader;
use crate::plugins::registry::Registry;
use crate::plugins::rescan::{self, Changes, RefusalMemory};
use crate::plugins::summary::{DirCondition, DirStatus};
use crate::state::HostState;

/// How long a swap that removes admission plugins waits for them to be
/// unregistered before it stops serving them anyway (the API server is
/// unreachable; their failure policy then applies to calls it still makes).
pub const UNREGISTER_WAIT: Duration = Duration::from_secs(5);

/// While the directory stays missing or empty, the warning is repeated this
/// often (not at every rescan).
pub const REMIND_EVERY: Duration = Duration::from_secs(300);

/// Why the first load could not serve anything.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailed {
    /// The plugin directory could not be read.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The loading task stopped (it panicked).
    #[error("loading plugins failed: {0}")]
    Aborted(String),
}

/// The owner of what serves: loads, rescans and swaps, in that order only.
pub struct Lifecycle {
    loader: Loader,
    /// The plugin directory, resolved once; `None` serves the bundled plugins.
    dir: Option<PathBuf>,
    state: Arc<HostState>,
    sync: Option<WebhookSync>,
    /// Files refused for a lasting reason, not read again while unchanged.
    memory: RefusalMemory,
    /// The directory's condition, when serving one.
    health: Option<DirHealth>,
}

impl Lifecycle {
    /// The lifecycle of `dir` (`None`: the bundled plugins), serving into
    /// `state` and, when `sync` is given, keeping the cluster's webhook
    /// configurations in step. Nothing is loaded until [`Lifecycle::load`].
    ///
    /// The directory is resolved here, once: plugins are known by their
    /// file's path, so the first load and every rescan must name files alike
    /// (a relative `--plugins` once made the first rescan replace every
    /// plugin).
    pub fn new(loader: Loader, dir: Option<&Path>, state: Arc<HostState>, sync: Option<WebhookSync>) -> Self {
        let dir = dir.map(resolve_dir);
        if let Some(sync) = &sync {
            // The sync check is in place before the host can look ready.
            state.report_sync(sync.health());
        }
        let health = dir.clone().map(DirHealth::new);
        Self { loader, dir, state, sync, memory: RefusalMemory::default(), health }
    }

    /// The plugin directory as every load names it (absolute, links
    /// resolved), if serving one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Loads the directory (or the bundled plugins) and serves what loaded,
    /// marking the host ready. Compiling is CPU work: it runs off the async
    /// threads, so probes answer (not ready) meanwhile.
    pub async fn load(&mut self) -> Result<(), LoadFailed> {
        let started = Instant::now();
        let (registry, changes) = self.scan().await?;
        let refused = changes.refused.len();
        self.apply(registry, changes, started, Pass::First).await;
        let loaded = self.state.registry().len();
        tracing::info!(loaded, refused, "plugins ready");
        Ok(())
    }

    /// Rescans the directory and swaps in what changed. Never fails: a
    /// directory that cannot be read keeps what serves (said in the log,
    /// status and gauges), as does a rescan that stopped.
    pub async fn rescan(&mut self) {
        let started = Instant::now();
        self.state.metrics.plugin_rescans.inc();
        match self.scan().await {
            Ok((registry, changes)) => self.apply(registry, changes, started, Pass::Rescan).await,
            Err(LoadFailed::Dir(error)) => self.observe(DirCondition::Missing, Some(&error)),
            Err(LoadFailed::Aborted(error)) => tracing::error!(%error, "rescan aborted; plugins keep serving"),
        }
    }

    /// Rescans after every change `watch` sees until `shutdown` turns true.
    /// Call it once [`Lifecycle::load`] has served the first load.
    pub async fn follow(mut self, mut watch: DirWatch, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        while watch.next_change(&mut shutdown).await {
            // Before the directory is read: a file written after this is
            // seen by the new watch, one written before by the read.
            if watch.rewatch_if_replaced() {
                self.state.metrics.plugin_dir_rewatches.inc();
            }
            self.rescan().await;
        }
    }

    /// Reads the directory against what serves (or loads the bundled
    /// plugins), off the async threads.
    async fn scan(&mut self) -> Result<(Registry, Changes), LoadFailed> {
        let (loader, dir, current) = (self.loader.clone(), self.dir.clone(), self.state.registry());
        let mut memory = std::mem::take(&mut self.memory);
        let scanned = tokio::task::spawn_blocking(move || {
            let result = match &dir {
                Some(dir) => rescan::rescan_remembering(&loader, dir, &current, &mut memory),
                None => Ok(bundled(&loader)),
            };
            (result, memory)
        })
        .await;
        // An aborted task took the memory with it: files are read afresh.
        let (result, memory) = scanned.map_err(|e| LoadFailed::Aborted(e.to_string()))?;
        self.memory = memory;
        Ok(result?)
    }

    /// Installs what a load or rescan found: the counts, the refusals, the
    /// log, the directory's condition, and the new registry if it differs.
    async fn apply(&mut self, next: Registry, changes: Changes, started: Instant, pass: Pass) {
        self.record(&changes, pass);
        let condition = if changes.kept_while_empty { DirCondition::Empty } else { DirCondition::Ok };
        self.observe(condition, None);
        if changes.is_empty() && pass == Pass::Rescan {
            return;
        }
        let had = self.state.registry().len();
        self.swap(next).await;
        let serving = self.state.registry().len();
        if pass == Pass::Rescan {
            tracing::info!(plugins = serving, elapsed_ms = started.elapsed().as_millis() as u64, "registry swapped");
        }
        if serving == 0 && had > 0 {
            tracing::warn!(
                dir = %self.dir().unwrap_or(Path::new("")).display(),
                removed = had,
                "no plugin serves any more: every plugin file was removed from the directory"
            );
        }
        // The count of serving plugins in the status changed.
        if let Some(health) = &self.health {
            health.publish(&self.state);
        }
    }

    /// Records the directory's condition, when serving one.
    fn observe(&mut self, condition: DirCondition, error: Option<&DirError>) {
        if let Some(health) = &mut self.health {
            health.observe(&self.state, condition, error);
        }
    }

    /// Counts and logs what changed, and remembers the files refused for
    /// the status endpoint.
    fn record(&self, changes: &Changes, pass: Pass) {
        let state = &self.state;
        state.count_loads(changes.added.len() + changes.replaced.len(), changes.refused.len());
        let refused: Vec<_> = changes.refused.iter().chain(&changes.still_refused).cloned().collect();
        state.set_refused(&refused);
        for (change, count) in
            [("added", changes.added.len()), ("swapped", changes.replaced.len()), ("removed", changes.removed.len())]
        {
            state.metrics.plugin_changes.get_or_create(&ChangeLabels { change }).inc_by(count as u64);
        }
        log(changes, pass);
    }

    /// Serves `next` from the next request on, keeping the webhook
    /// configurations in step when syncing: plugins whose name goes away
    /// (their file removed, or a file that now declares another name) are
    /// unregistered first (waiting up to [`UNREGISTER_WAIT`]), so the API
    /// server stops calling them before they stop answering; what is new is
    /// registered once it serves.
    async fn swap(&self, next: Registry) {
        let Some(sync) = &self.sync else {
            self.state.install(next);
            return;
        };
        let current = self.state.registry();
        if current.iter().any(|p| next.get(p.name()).is_none()) {
            let staying = current.filtered(|p| next.get(p.name()).is_some());
            if let Some(generation) = sync.want(&staying)
                && !sync.wait_applied(generation, UNREGISTER_WAIT).await
            {
                tracing::warn!("removed plugins are not unregistered yet; they stop serving anyway");
            }
        }
        self.state.install(next);
        sync.want(&self.state.registry());
    }
}

/// Which load [`Lifecycle::apply`] installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The first: it installs even nothing, which makes the host ready.
    First,
    /// A rescan after a file event or the periodic timer.
    Rescan,
}

/// The bundled plugins, as a rescan against nothing would report them.
fn bundled(loader: &Loader) -> (Registry, Changes) {
    let report = crate::plugins::bundled::load(loader);
    let added = report.registry.iter().cloned().collect();
    (report.registry, Changes { added, refused: report.refused, ..Changes::default() })
}

/// Logs what changed, one event per plugin. The first load says which
/// plugins serve; rescans say what was added, swapped and removed.
fn log(changes: &Changes, pass: Pass) {
    for p in &changes.added {
        let path = p.metadata().admission_path().unwrap_or_default();
        let (file, hash, kind) = (p.origin().display(), &p.hash()[..12], p.kind());
        match pass {
            Pass::First => {
                tracing::info!(plugin = p.name(), version = p.version(), %kind, path, %file, hash, "serving");
            }
            Pass::Rescan => {
                tracing::info!(plugin = p.name(), version = p.version(), %kind, path, %file, hash, "plugin added");
            }
        }
    }
    for (old, new) in &changes.replaced {
        tracing::info!(
            plugin = new.name(),
            from = old.version(),
            to = new.version(),
            file = %new.origin().display(),
            hash = &new.hash()[..12],
            "plugin swapped"
        );
    }
    for p in &changes.removed {
        tracing::info!(plugin = p.name(), version = p.version(), file = %p.origin().display(), "plugin removed");
    }
    for refused in &changes.refused {
        tracing::warn!(file = %refused.file.display(), reason = %refused.reason, "plugin refused; the last good version, if any, keeps serving");
    }
}

/// A plugin directory as the server knows it for its whole run: absolute
/// and canonical (symlinks resolved), so file events, the first load and
/// every rescan name the same files the same way. A directory that does not
/// exist (yet) is made absolute against the working directory.
pub fn resolve_dir(dir: &Path) -> PathBuf {
    dir.canonicalize().or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf())
}

/// The plugin directory's condition over time, for the log (a warning when
/// it turns missing or empty, repeated every [`REMIND_EVERY`] while it stays
/// so), the gauges and the status.
struct DirHealth {
    dir: PathBuf,
    condition: DirCondition,
    since: SystemTime,
    warned: Instant,
}

impl DirHealth {
    fn new(dir: PathBuf) -> Self {
        Self { dir, condition: DirCondition::Ok, since: SystemTime::now(), warned: Instant::now() }
    }

    /// Records the condition a load found (`error`: why the directory
    /// could not be read).
    fn observe(&mut self, state: &HostState, condition: DirCondition, error: Option<&DirError>) {
        let changed = condition != self.condition;
        if changed {
            self.condition = condition;
            self.since = SystemTime::now();
        }
        let remind = !changed && condition != DirCondition::Ok && self.warned.elapsed() >= REMIND_EVERY;
        if changed || remind {
            self.warned = Instant::now();
            self.log(state.registry().len(), changed, error);
        }
        self.publish(state);
    }

    fn log(&self, serving: usize, changed: bool, error: Option<&DirError>) {
        let dir = self.dir.display();
        let still = if changed { "" } else { "still " };
        let error = error.map(|e| e.error.to_string()).unwrap_or_default();
        match self.condition {
            DirCondition::Missing => tracing::warn!(
                %dir,
                %error,
                serving,
                "plugin directory {still}cannot be read; the plugins loaded from it keep serving"
            ),
            DirCondition::Empty => tracing::warn!(
                %dir,
                serving,
                "plugin directory is {still}empty; the plugins loaded from it keep serving (taken for a copy \
                 under way or a mistake: remove the plugin files themselves, or restart, to stop serving them)"
            ),
            DirCondition::Ok => tracing::warn!(%dir, serving, "plugin directory is back; serving what it holds"),
        }
    }

    fn publish(&self, state: &HostState) {
        state.set_plugin_dir(DirStatus::new(&self.dir, self.condition, self.since, state.registry().len()));
    }
}
