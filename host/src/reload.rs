//! Rescanning a plugin directory against what is serving: unchanged files
//! keep their loaded plugin, changed and new files are loaded (compiled,
//! checked, configured) before anything switches, a file that fails keeps
//! its last good version serving, and removed files are dropped. The result
//! is a new registry that the caller swaps in atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{LoadError, Refusal};
use crate::loader::{self, Loader, Settings};
use crate::plugin::Plugin;
use crate::registry::Registry;

/// What a rescan changed, for logs and metrics.
#[derive(Debug, Default)]
pub struct Changes {
    /// Plugins loaded from new files.
    pub added: Vec<Arc<Plugin>>,
    /// Plugins whose file or settings changed: (old, new).
    pub replaced: Vec<(Arc<Plugin>, Arc<Plugin>)>,
    /// Plugins whose file is gone.
    pub removed: Vec<Arc<Plugin>>,
    /// Files refused this time; when an older version of the file was
    /// serving, it still is.
    pub refused: Vec<LoadError>,
}

impl Changes {
    /// True when the serving set is the same as before.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }
}

/// Rescans `dir` against `current` and returns the registry to serve next.
/// Blocking (it may compile): run it off the async runtime.
pub fn rescan(loader: &Loader, dir: &Path, current: &Registry) -> Result<(Registry, Changes), crate::error::DirError> {
    let mut next = Registry::default();
    let mut changes = Changes::default();
    for file in loader::plugin_files(dir)? {
        let previous = current.by_origin(&file).cloned();
        let candidate = match load_if_changed(loader, &file, previous.as_ref()) {
            Ok(Some(fresh)) => Arc::new(fresh),
            Ok(None) => match previous.clone() {
                Some(unchanged) => unchanged,
                None => continue,
            },
            Err(refused) => {
                changes.refused.push(refused);
                match previous.clone() {
                    Some(last_good) => last_good,
                    None => continue,
                }
            }
        };
        match next.insert_shared(candidate.clone()) {
            Ok(_) => match previous {
                Some(old) if !Arc::ptr_eq(&old, &candidate) => changes.replaced.push((old, candidate)),
                Some(_) => {}
                None => changes.added.push(candidate),
            },
            Err(duplicate) => {
                changes.refused.push(duplicate);
                // The new version clashes with another plugin: the old one,
                // which did not, keeps serving.
                if let Some(old) = previous.filter(|old| !Arc::ptr_eq(old, &candidate)) {
                    let _ = next.insert_shared(old);
                }
            }
        }
    }
    for plugin in current.iter() {
        if next.by_origin(plugin.origin()).is_none() {
            changes.removed.push(plugin.clone());
        }
    }
    Ok((next, changes))
}

/// Loads `file` unless it and its settings are what `previous` was loaded
/// from (`Ok(None)`).
fn load_if_changed(loader: &Loader, file: &Path, previous: Option<&Arc<Plugin>>) -> Result<Option<Plugin>, LoadError> {
    let fail = |reason| LoadError { file: file.to_path_buf(), reason };
    let bytes = std::fs::read(file).map_err(|e| fail(Refusal::Read(e)))?;
    let settings = Settings::beside(file).map_err(fail)?;
    if let Some(previous) = previous
        && previous.hash() == hex::encode(Sha256::digest(&bytes))
        && previous.settings_json() == settings.json
    {
        return Ok(None);
    }
    let started = Instant::now();
    let plugin = loader.load_bytes(file, &bytes, settings)?;
    tracing::debug!(file = %file.display(), elapsed_ms = started.elapsed().as_millis() as u64, "loaded");
    Ok(Some(plugin))
}

/// Logs what a rescan changed, one event per plugin.
pub fn log(changes: &Changes) {
    for p in &changes.added {
        tracing::info!(plugin = p.name(), version = p.version(), file = %p.origin().display(), hash = &p.hash()[..12], "plugin added");
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
