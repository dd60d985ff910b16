//! The set of plugins a host serves, looked up by name, kind or admission
//! path. The gateway's routes are its own table (`gateway::routes`), built
//! from each registry.
//! Names and admission paths are unique: a second plugin claiming either is
//! refused, naming both files.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::plugins::error::{LoadError, Refusal};
use crate::plugins::plugin::Plugin;
use crate::runtime::contract::Kind;

/// Loaded plugins by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    plugins: BTreeMap<String, Arc<Plugin>>,
    /// Admission path to plugin: looked up on every admission request.
    by_path: HashMap<String, Arc<Plugin>>,
}

impl Registry {
    /// Adds a plugin, or refuses it when its name or admission path is taken.
    pub fn insert(&mut self, plugin: Plugin) -> Result<Arc<Plugin>, LoadError> {
        self.insert_shared(Arc::new(plugin))
    }

    /// The plugins of this registry that `keep` accepts.
    pub fn filtered(&self, keep: impl Fn(&Plugin) -> bool) -> Registry {
        let mut out = Registry::default();
        for plugin in self.plugins.values().filter(|p| keep(p)) {
            // They were unique here, so they are unique in a subset.
            let _ = out.insert_shared(plugin.clone());
        }
        out
    }

    /// Adds a plugin another registry may also hold (a reload keeps the
    /// unchanged ones), or refuses it like [`Registry::insert`].
    pub fn insert_shared(&mut self, plugin: Arc<Plugin>) -> Result<Arc<Plugin>, LoadError> {
        let refuse = |what, value: &str, other: &Plugin| LoadError {
            file: plugin.origin().to_path_buf(),
            reason: Refusal::Duplicate { what, value: value.to_string(), other: other.origin().to_path_buf() },
        };
        if let Some(other) = self.plugins.get(plugin.name()) {
            return Err(refuse("name", plugin.name(), other));
        }
        let path = plugin.metadata().admission_path();
        if let Some(path) = &path
            && let Some(other) = self.by_admission_path(path)
        {
            return Err(refuse("path", path, other));
        }
        self.plugins.insert(plugin.name().to_string(), plugin.clone());
        if let Some(path) = path {
            self.by_path.insert(path, plugin.clone());
        }
        Ok(plugin)
    }

    /// The plugin with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// The plugin answering admission requests on this path.
    pub fn by_admission_path(&self, path: &str) -> Option<&Arc<Plugin>> {
        self.by_path.get(path)
    }

    /// Every plugin, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// The plugin loaded from `file`.
    pub fn by_origin(&self, file: &std::path::Path) -> Option<&Arc<Plugin>> {
        self.plugins.values().find(|p| p.origin() == file)
    }

    /// Plugins of one kind, by name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values().filter(move |p| p.kind() == kind)
    }

    /// How many plugins are loaded.
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// True when no plugin is loaded.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

/// The outcome of loading a set of plugin files: what serves, and what was
/// refused and why.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// The plugins that loaded.
    pub registry: Registry,
    /// The files that were refused.
    pub refused: Vec<LoadError>,
}
