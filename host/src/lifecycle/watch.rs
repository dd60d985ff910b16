//! Watching the plugin directory: when to look at it again. File events
//! (inotify on Linux) are debounced into one change; a slow periodic tick
//! catches anything the events missed. What a change does is the
//! lifecycle's (`Lifecycle::follow`).
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
//! [`crate::plugins::summary::DirCondition`]), said in the log, `/plugins`, `/readyz` and the
//! `tollgate_plugin_dir_missing` / `tollgate_plugin_dir_empty` gauges.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

/// Quiet time after the last event before rescanning: copy tools and
/// editors write a file in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Rescan this often even without events.
pub const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch plugin directory {}: {error}", dir.display())]
pub struct WatchError {
    /// The directory.
    pub dir: PathBuf,
    /// notify's error (in the message, not a `source`, so it is printed once).
    pub error: notify::Error,
}

/// A directory being watched; events queue up until [`DirWatch::next_change`].
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
/// between that scan and the first [`DirWatch::next_change`] is not missed.
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
    /// Waits for the next change, debounced (a burst of events is one
    /// change), or for the periodic rescan; false once `shutdown` turns
    /// true or the events stop.
    pub async fn next_change(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            event = self.events.recv() => if event.is_none() { return false },
            _ = tokio::time::sleep(RESCAN_EVERY) => {}
            _ = shutdown.changed() => return false,
        }
        // Wait for the burst to end.
        loop {
            tokio::select! {
                event = self.events.recv() => if event.is_none() { return false },
                _ = tokio::time::sleep(DEBOUNCE) => return true,
            }
        }
    }

    /// Watches the directory again when the one watched was removed,
    /// recreated or replaced: the old watch went with the old directory.
    /// True when a new watch was put on it.
    pub fn rewatch_if_replaced(&mut self) -> bool {
        let now = identity(&self.dir);
        if now == self.watched {
            return false;
        }
        self.watched = None;
        if now.is_none() {
            return false; // gone: the parent's events tell when it is back
        }
        // The old watch may linger under the same name; it is replaced.
        let _ = self.watcher.unwatch(&self.dir);
        match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched = now;
                tracing::warn!(
                    dir = %self.dir.display(),
                    "plugin directory was removed, recreated or replaced; watching the new one"
                );
                true
            }
            Err(error) => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    %error,
                    "cannot watch the plugin directory again; changes are seen at the periodic rescan"
                );
                false
            }
        }
    }
}
