//! The set of plugins a host serves, looked up by name or admission path.
//! Names and admission paths are unique: a second plugin claiming either is
//! refused, naming both files.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::contract::Kind;
use crate::error::{LoadError, Refusal};
use crate::plugin::Plugin;

/// Loaded plugins by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    plugins: BTreeMap<String, Arc<Plugin>>,
    /// Admission path to plugin: looked up on every admission request.
    by_path: HashMap<String, Arc<Plugin>>,
    /// Gateway routes, in the order they are tried.
    routes: Vec<Route>,
}

/// One route match of a route plugin, as the gateway tries it.
#[derive(Debug, Clone)]
pub struct Route {
    /// What it matches.
    pub rule: RouteRule,
    /// The route plugin.
    pub plugin: Arc<Plugin>,
}

/// What a route matches, from the plugin's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Lower-case host names; empty matches any host.
    pub hosts: Vec<String>,
    /// Path prefix, matched on whole segments.
    pub path_prefix: String,
    /// Methods; empty matches any.
    pub methods: Vec<String>,
    /// Higher is tried first.
    pub priority: i32,
}

impl RouteRule {
    /// True when a request for `host` (no port, lower case), `path` and
    /// `method` matches.
    pub fn matches(&self, host: &str, path: &str, method: &str) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h == host))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && path_has_prefix(path, &self.path_prefix)
    }

    /// The order routes are tried in, smallest first: highest priority;
    /// then the more specific (a host named, a longer prefix); then the
    /// plugin's name, so the order never depends on load order.
    pub fn precedence<'a>(&self, plugin: &'a str) -> (std::cmp::Reverse<i32>, bool, std::cmp::Reverse<usize>, &'a str) {
        (std::cmp::Reverse(self.priority), self.hosts.is_empty(), std::cmp::Reverse(self.path_prefix.len()), plugin)
    }
}

/// `/api` matches `/api` and `/api/x`, not `/apix`: a prefix matches whole
/// path segments, so a route cannot leak onto its neighbour's paths.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
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
        if let crate::metadata::PluginMetadata::Route(metadata) = plugin.metadata() {
            for m in &metadata.matches {
                let rule = RouteRule {
                    hosts: m.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    path_prefix: m.path_prefix.clone(),
                    methods: m.methods.clone(),
                    priority: m.priority,
                };
                self.routes.push(Route { rule, plugin: plugin.clone() });
            }
            self.routes.sort_by(|a, b| a.rule.precedence(a.plugin.name()).cmp(&b.rule.precedence(b.plugin.name())));
        }
        Ok(plugin)
    }

    /// The route a gateway request takes, if any.
    pub fn route_for(&self, host: &str, path: &str, method: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.rule.matches(host, path, method))
    }

    /// The allowlists guarding the route plugin `route`, by name.
    pub fn allowlists_for<'a>(&'a self, route: &'a str) -> impl Iterator<Item = &'a Arc<Plugin>> + 'a {
        self.of_kind(Kind::Allowlist).filter(move |p| match p.metadata() {
            crate::metadata::PluginMetadata::Allowlist(m) => m.routes.is_empty() || m.routes.iter().any(|r| r == route),
            _ => false,
        })
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

#[cfg(test)]
mod tests {
    use super::{RouteRule, path_has_prefix};

    fn rule(hosts: &[&str], prefix: &str, methods: &[&str], priority: i32) -> RouteRule {
        RouteRule {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            priority,
        }
    }

    #[test]
    fn routes_match_host_method_and_prefix() {
        let api = rule(&["api.example.com"], "/v1", &["GET", "POST"], 0);
        assert!(api.matches("api.example.com", "/v1/items", "GET"));
        assert!(!api.matches("www.example.com", "/v1/items", "GET"));
        assert!(!api.matches("api.example.com", "/v1/items", "DELETE"));
        assert!(!api.matches("api.example.com", "/v10", "GET"));
        assert!(rule(&[], "/", &[], 0).matches("any", "/x", "PATCH"));
    }

    #[test]
    fn routes_are_tried_by_priority_then_specificity_then_name() {
        let mut routes = [
            ("a-catch-all", rule(&[], "/", &[], 0)),
            ("b-long-prefix", rule(&[], "/api/v1", &[], 0)),
            ("c-host", rule(&["h"], "/", &[], 0)),
            ("d-urgent", rule(&[], "/", &[], 10)),
            ("e-short-prefix", rule(&[], "/api", &[], 0)),
            ("f-fallback", rule(&[], "/", &[], -10)),
        ];
        routes.sort_by(|(an, a), (bn, b)| a.precedence(an).cmp(&b.precedence(bn)));
        let order: Vec<&str> = routes.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, ["d-urgent", "c-host", "b-long-prefix", "e-short-prefix", "a-catch-all", "f-fallback"]);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/x", "/api"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(path_has_prefix("/api/x", "/api/"));
        assert!(path_has_prefix("/anything", "/"));
        assert!(!path_has_prefix("/ap", "/api"));
    }
}
