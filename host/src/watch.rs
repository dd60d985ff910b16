//! Watching the plugin directory: file events (inotify on Linux) are
//! debounced, then the directory is rescanned and the new registry swapped
//! in. A slow periodic rescan catches anything the events missed.
//!
//! Whole-directory rescans make every way of changing a file look the same:
//! written in place in several steps, written then renamed into place, or a
//! Kubernetes ConfigMap/Secret volume swapping its `..data` symlink.
//!
//! The directory itself may go away and come back (`rm -rf` and a fresh
//! copy, a `mv` of a new directory over it). A watch follows the directory
//! it was put on, not its name, so the parent is watched too: when the
//! directory is removed, recreated or replaced, the next rescan puts a
//! watch on the new one (logged at warn, counted in
//! `tollgate_plugin_dir_rewatches_total`). While the directory is missing
//! or empty, what was loaded from it keeps serving (see
//! [`DirCondition`]), said in the log, `/plugins`, `/readyz` and the
//! `tollgate_plugin_dir_missing` / `tollgate_plugin_dir_empty` gauges.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::error::DirError;
use crate::loader::Loader;
use crate::metrics::ChangeLabels;
use crate::registry::Registry;
use crate::reload::{self, Changes, DirCondition, RefusalMemory};
use crate::state::HostState;
use crate::summary::DirStatus;

/// Quiet time after the last event before rescanning: copy tools and
/// editors write a file in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Rescan this often even without events.
pub const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// While the directory stays missing or empty, the warning is repeated this
/// often (not at every rescan).
pub const REMIND_EVERY: Duration = Duration::from_secs(300);

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch plugin directory {}: {error}", dir.display())]
pub struct WatchError {
    /// The directory.
    pub dir: PathBuf,
    /// notify's error (in the message, not a `source`, so it is printed once).
    pub error: notify::Error,
}

/// A directory being watched; events queue up until [`DirWatch::run`].
pub struct DirWatch {
    dir: PathBuf,
    watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    /// The directory the watch is on (device, inode), if any: a directory
    /// recreated under the same name is another one.
    watched: Option<(u64, u64)>,
}

/// Starts watching `dir` (and its parent, to see `dir` removed, recreated or
/// replaced). Call this before the initial scan, so that a file changed
/// between that scan and [`DirWatch::run`] is not missed.
pub fn start(dir: PathBuf) -> Result<DirWatch, WatchError> {
    let (tx, events) = mpsc::unbounded_channel();
    let ours = dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Any change means "look again"; the rescan finds out what changed.
        // Not reads: the rescan's own reads would start the next rescan.
        // Of the parent's events, only those about the directory itself.
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
            && (event.paths.is_empty() || event.paths.iter().any(|p| concerns(p, &ours)))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|error| WatchError { dir: dir.clone(), error })?;
    let watched = identity(&dir);
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|error| WatchError { dir: dir.clone(), error })?;
    if let Some(parent) = dir.parent()
        && let Err(error) = watcher.watch(parent, RecursiveMode::NonRecursive)
    {
        // Without it, a recreated directory is noticed at the periodic rescan.
        tracing::debug!(parent = %parent.display(), %error, "cannot watch the plugin directory's parent");
    }
    Ok(DirWatch { dir, watcher, events, watched })
}

/// True for a path of `dir` itself or directly in it.
fn concerns(path: &Path, dir: &Path) -> bool {
    path == dir || path.parent() == Some(dir)
}

/// Which directory is at `dir` now (device, inode), if any.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

impl DirWatch {
    /// Rescans on every (debounced) change until `shutdown` turns true,
    /// swapping each result into `state`. Call it once the initial scan is
    /// installed; `memory` holds the files it refused.
    pub fn run(
        mut self,
        loader: Loader,
        state: Arc<HostState>,
        mut memory: RefusalMemory,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut health = DirHealth::new(self.dir.clone());
            loop {
                tokio::select! {
                    event = self.events.recv() => if event.is_none() { break },
                    _ = tokio::time::sleep(RESCAN_EVERY) => {}
                    _ = shutdown.changed() => break,
                }
                // Wait for the burst to end.
                loop {
                    tokio::select! {
                        event = self.events.recv() => if event.is_none() { break },
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
                // Before the directory is read: a file written after this
                // is seen by the new watch, one written before by the read.
                self.rewatch_if_replaced(&state);
                let started = Instant::now();
                state.metrics.plugin_rescans.inc();
                let (loader, dir, current) = (loader.clone(), self.dir.clone(), state.registry());
                let rescanned = tokio::task::spawn_blocking(move || {
                    let result = reload::rescan_remembering(&loader, &dir, &current, &mut memory);
                    (result, memory)
                })
                .await;
                match rescanned {
                    Ok((result, kept)) => {
                        memory = kept;
                        match result {
                            Ok((registry, changes)) => apply(&state, &mut health, registry, changes, started).await,
                            Err(error) => health.observe(&state, DirCondition::Missing, Some(&error)),
                        }
                    }
                    Err(error) => {
                        // The memory went with the aborted task: files are read afresh.
                        memory = RefusalMemory::default();
                        tracing::error!(%error, "rescan aborted; plugins keep serving");
                    }
                }
            }
            drop(self.watcher); // stops the events
        })
    }

    /// Watches the directory again when the one watched was removed,
    /// recreated or replaced: the old watch went with the old directory.
    fn rewatch_if_replaced(&mut self, state: &HostState) {
        let now = identity(&self.dir);
        if now == self.watched {
            return;
        }
        self.watched = None;
        if now.is_none() {
            return; // gone: the parent's events tell when it is back
        }
        // The old watch may linger under the same name; it is replaced.
        let _ = self.watcher.unwatch(&self.dir);
        match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched = now;
                state.metrics.plugin_dir_rewatches.inc();
                tracing::warn!(
                    dir = %self.dir.display(),
                    "plugin directory was removed, recreated or replaced; watching the new one"
                );
            }
            Err(error) => tracing::warn!(
                dir = %self.dir.display(),
                %error,
                "cannot watch the plugin directory again; changes are seen at the periodic rescan"
            ),
        }
    }
}

/// Installs what a rescan found: the refusals, the metrics, the log, the
/// directory's condition, and the new registry if it differs.
async fn apply(state: &HostState, health: &mut DirHealth, registry: Registry, changes: Changes, started: Instant) {
    let loaded = changes.added.len() + changes.replaced.len();
    state.count_loads(loaded, changes.refused.len());
    let refused: Vec<_> = changes.refused.iter().chain(&changes.still_refused).cloned().collect();
    state.set_refused(&refused);
    for (change, count) in
        [("added", changes.added.len()), ("swapped", changes.replaced.len()), ("removed", changes.removed.len())]
    {
        state.metrics.plugin_changes.get_or_create(&ChangeLabels { change }).inc_by(count as u64);
    }
    reload::log(&changes);
    let condition = if changes.kept_while_empty { DirCondition::Empty } else { DirCondition::Ok };
    health.observe(state, condition, None);
    if changes.is_empty() {
        return;
    }
    let had = state.registry().len();
    state.swap(registry).await;
    let serving = state.registry().len();
    tracing::info!(plugins = serving, elapsed_ms = started.elapsed().as_millis() as u64, "registry swapped");
    if serving == 0 && had > 0 {
        tracing::warn!(
            dir = %health.dir.display(),
            removed = had,
            "no plugin serves any more: every plugin file was removed from the directory"
        );
    }
    // The count of serving plugins in the status changed.
    health.publish(state);
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

    /// Records the condition a rescan found (`error`: why the directory
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
