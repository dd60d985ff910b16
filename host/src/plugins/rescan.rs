//! Rescanning a plugin directory against what is serving: unchanged files
//! keep their loaded plugin, changed and new files are loaded (compiled,
//! checked, configured) before anything switches, a file that fails keeps
//! its last good version serving, and removed files are dropped. The result
//! is a new registry that the caller swaps in atomically.
//!
//! Two things a rescan does not do. It does not read again a file it
//! refused for a lasting reason while the file (and its settings files)
//! stay as they were: the refusal is listed again instead ([`RefusalMemory`]).
//! And it does not empty the serving set because the directory went empty:
//! see [`crate::plugins::summary::DirCondition::Empty`].

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::plugins::error::{DirError, LoadError};
use crate::plugins::loader::{self, Loader, Settings};
use crate::plugins::plugin::Plugin;
use crate::plugins::registry::{LoadReport, Registry};

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
    /// Files refused before and unchanged since: not read again, still
    /// refused (not logged or counted again).
    pub still_refused: Vec<LoadError>,
    /// True when the directory held nothing and what served was kept (see
    /// [`crate::plugins::summary::DirCondition::Empty`]).
    pub kept_while_empty: bool,
}

impl Changes {
    /// True when the serving set is the same as before.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }
}

/// Rescans `dir` against `current` and returns the registry to serve next.
/// Blocking (it may compile): run it off the async runtime.
pub fn rescan(loader: &Loader, dir: &Path, current: &Registry) -> Result<(Registry, Changes), DirError> {
    rescan_remembering(loader, dir, current, &mut RefusalMemory::default())
}

/// [`rescan`], skipping files `memory` holds as refused and unchanged since,
/// and remembering the files refused this time.
pub fn rescan_remembering(
    loader: &Loader,
    dir: &Path,
    current: &Registry,
    memory: &mut RefusalMemory,
) -> Result<(Registry, Changes), DirError> {
    let files = loader::plugin_files(dir)?;
    if files.is_empty() && !current.is_empty() && is_empty(dir)? {
        memory.files.clear();
        return Ok((current.clone(), Changes { kept_while_empty: true, ..Changes::default() }));
    }
    let mut next = Registry::default();
    let mut changes = Changes::default();
    for file in &files {
        let previous = current.by_origin(file).cloned();
        let candidate = match memory.load(loader, file, previous.as_ref()) {
            Loaded::Fresh(fresh) => fresh,
            Loaded::Unchanged => match previous.clone() {
                Some(unchanged) => unchanged,
                None => continue,
            },
            Loaded::Refused(refused, again) => {
                if again {
                    changes.still_refused.push(refused);
                } else {
                    changes.refused.push(refused);
                }
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
    let listed: HashSet<&PathBuf> = files.iter().collect();
    memory.files.retain(|file, _| listed.contains(file));
    Ok((next, changes))
}

/// True when `dir` holds nothing but hidden files (a ConfigMap volume
/// always holds `..data`).
fn is_empty(dir: &Path) -> Result<bool, DirError> {
    let fail = |error| DirError { dir: dir.to_path_buf(), error };
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        if !entry.map_err(fail)?.file_name().to_string_lossy().starts_with('.') {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Timestamps cannot tell apart two writes closer together than this (they
/// tick coarsely): a file changed this recently when it was refused is not
/// remembered, so a second write of the same size is still read.
const SETTLE: Duration = Duration::from_secs(1);

/// Files refused for a lasting reason (see [`crate::plugins::error::Refusal::is_lasting`]),
/// with what they and their settings files looked like then. A rescan does
/// not read such a file again while that stays the same: a 117 MB settings
/// file was once read again at every rescan, only to be refused again.
#[derive(Debug, Default)]
pub struct RefusalMemory {
    files: HashMap<PathBuf, Remembered>,
}

#[derive(Debug)]
struct Remembered {
    inputs: Inputs,
    refused: LoadError,
}

/// What a rescan made of one file.
enum Loaded {
    /// A new or changed file, loaded.
    Fresh(Arc<Plugin>),
    /// The file and its settings are what the serving plugin was loaded from.
    Unchanged,
    /// Refused; true when it was refused before and not read again.
    Refused(LoadError, bool),
}

impl RefusalMemory {
    /// Loads `file` as [`load_if_changed`] does, unless it was refused before
    /// and has not changed since.
    fn load(&mut self, loader: &Loader, file: &Path, previous: Option<&Arc<Plugin>>) -> Loaded {
        let looked_at = SystemTime::now();
        let inputs = Inputs::of(file);
        if let Some(remembered) = self.files.get(file).filter(|r| r.inputs == inputs) {
            return Loaded::Refused(remembered.refused.clone(), true);
        }
        self.files.remove(file);
        match load_if_changed(loader, file, previous) {
            Ok(Some(fresh)) => Loaded::Fresh(Arc::new(fresh)),
            Ok(None) => Loaded::Unchanged,
            Err(refused) => {
                if refused.reason.is_lasting() && inputs.settled_before(looked_at) {
                    self.files.insert(file.to_path_buf(), Remembered { inputs, refused: refused.clone() });
                }
                Loaded::Refused(refused, false)
            }
        }
    }
}

/// What the files a plugin is loaded from look like: the plugin file and
/// each settings file it may have (present or not), links followed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    files: Vec<Option<Stamp>>,
}

impl Inputs {
    fn of(wasm: &Path) -> Self {
        let files = std::iter::once(wasm.to_path_buf()).chain(Settings::candidates(wasm)).map(|p| Stamp::of(&p));
        Self { files: files.collect() }
    }

    /// True when none of the files changed within [`SETTLE`] before `when`.
    fn settled_before(&self, when: SystemTime) -> bool {
        let settled = when.checked_sub(SETTLE).unwrap_or(SystemTime::UNIX_EPOCH);
        self.files.iter().flatten().all(|stamp| stamp.changed_at() < settled)
    }
}

/// Enough of a file's metadata to tell it changed without reading it: any
/// write changes its modification or change time (and most its size), a
/// replacement its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// The later of its modification and change times.
    fn changed_at(&self) -> SystemTime {
        let (secs, nanos) = self.mtime.max(self.ctime);
        let since_epoch = Duration::new(u64::try_from(secs).unwrap_or(0), u32::try_from(nanos).unwrap_or(0));
        SystemTime::UNIX_EPOCH + since_epoch
    }
}

/// Loads `file` unless it and its settings are what `previous` was loaded
/// from (`Ok(None)`).
fn load_if_changed(loader: &Loader, file: &Path, previous: Option<&Arc<Plugin>>) -> Result<Option<Plugin>, LoadError> {
    let fail = |reason| LoadError { file: file.to_path_buf(), reason };
    let bytes = loader.read_plugin(file).map_err(fail)?;
    let settings = loader.settings_beside(file).map_err(fail)?;
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

impl Loader {
    /// Loads every `*.wasm` file of a directory, in name order. Files that
    /// fail are reported in [`LoadReport::refused`]; the rest serve. This is
    /// a rescan against nothing, so a first load and every later rescan
    /// follow the same rules (and live here, beside [`rescan`]).
    pub fn load_dir(&self, dir: &Path) -> Result<LoadReport, DirError> {
        let (registry, changes) = rescan(self, dir, &Registry::default())?;
        Ok(LoadReport { registry, refused: changes.refused })
    }
}
