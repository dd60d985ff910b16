//! Watching the plugin directory: file events (inotify on Linux) are
//! debounced, then the directory is rescanned and the new registry swapped
//! in. A slow periodic rescan catches anything the events missed.
//!
//! Whole-directory rescans make every way of changing a file look the same:
//! written in place in several steps, written then renamed into place, or a
//! Kubernetes ConfigMap/Secret volume swapping its `..data` symlink.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::loader::Loader;
use crate::metrics::ChangeLabels;
use crate::reload;
use crate::state::HostState;

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

/// A directory being watched; events queue up until [`DirWatch::run`].
pub struct DirWatch {
    dir: PathBuf,
    watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
}

/// Starts watching `dir`. Call this before the initial scan, so that a file
/// changed between that scan and [`DirWatch::run`] is not missed.
pub fn start(dir: PathBuf) -> Result<DirWatch, WatchError> {
    let (tx, events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Any change means "look again"; the rescan finds out what changed.
        // Not reads: the rescan's own reads would start the next rescan.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })
    .map_err(|error| WatchError { dir: dir.clone(), error })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|error| WatchError { dir: dir.clone(), error })?;
    Ok(DirWatch { dir, watcher, events })
}

impl DirWatch {
    /// Rescans on every (debounced) change until `shutdown` turns true,
    /// swapping each result into `state`. Call it once the initial scan is
    /// installed.
    pub fn run(
        self,
        loader: Loader,
        state: Arc<HostState>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let DirWatch { dir, watcher, mut events } = self;
        tokio::spawn(async move {
            let _watcher = watcher; // dropping it stops the events
            loop {
                tokio::select! {
                    event = events.recv() => if event.is_none() { break },
                    _ = tokio::time::sleep(RESCAN_EVERY) => {}
                    _ = shutdown.changed() => break,
                }
                // Wait for the burst to end.
                loop {
                    tokio::select! {
                        event = events.recv() => if event.is_none() { break },
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
                let started = Instant::now();
                state.metrics.plugin_rescans.inc();
                let (loader, dir, current) = (loader.clone(), dir.clone(), state.registry());
                let rescanned = tokio::task::spawn_blocking(move || reload::rescan(&loader, &dir, &current)).await;
                match rescanned {
                    Ok(Ok((registry, changes))) => {
                        let loaded = changes.added.len() + changes.replaced.len();
                        state.count_loads(loaded, changes.refused.len());
                        state.set_refused(&changes.refused);
                        for (change, count) in [
                            ("added", changes.added.len()),
                            ("swapped", changes.replaced.len()),
                            ("removed", changes.removed.len()),
                        ] {
                            state.metrics.plugin_changes.get_or_create(&ChangeLabels { change }).inc_by(count as u64);
                        }
                        reload::log(&changes);
                        if !changes.is_empty() {
                            state.swap(registry).await;
                            tracing::info!(
                                plugins = state.registry().len(),
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "registry swapped"
                            );
                        }
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "rescan failed; plugins keep serving"),
                    Err(error) => tracing::error!(%error, "rescan aborted; plugins keep serving"),
                }
            }
        })
    }
}
