//! The gateway's route table, built once per registry snapshot (as Spin's
//! `Router` is built once, not searched per request): every route rule in
//! the order routes are tried, each with its route plugin and the
//! allowlists guarding it, split by what they need to decide.

use std::sync::Arc;

use crate::plugins::plugin::Plugin;
use crate::plugins::registry::Registry;
use crate::runtime::contract::Kind;
use crate::runtime::contract::types::SubjectKind;
use crate::runtime::metadata::PluginMetadata;

/// The routes of one registry, in the order they are tried.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// One route match of a route plugin, as the gateway tries it.
#[derive(Debug)]
pub struct Route {
    /// What it matches.
    pub rule: RouteRule,
    /// The route plugin.
    pub plugin: Arc<Plugin>,
    /// The allowlists guarding it (shared by the plugin's matches).
    pub guards: Arc<Guards>,
}

/// The allowlists guarding one route plugin, by what they need.
#[derive(Debug, Default)]
pub struct Guards {
    /// Those deciding on the client address alone: they run before the
    /// route plugin.
    pub by_address: Vec<Arc<Plugin>>,
    /// The others (e-mails, names): they run after the route plugin, with
    /// the identity it established and, if one of them asks, the body.
    pub after_route: Vec<Arc<Plugin>>,
    /// Whether one of `after_route` inspects the body.
    pub inspect_body: bool,
}

impl RouteTable {
    /// The table of `registry`'s route plugins and allowlists.
    pub fn new(registry: &Registry) -> Self {
        let mut routes = Vec::new();
        for plugin in registry.of_kind(Kind::Route) {
            let PluginMetadata::Route(metadata) = plugin.metadata() else { continue };
            let guards = Arc::new(Guards::of(registry, plugin.name()));
            for m in &metadata.matches {
                let rule = RouteRule {
                    hosts: m.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    path_prefix: m.path_prefix.clone(),
                    methods: m.methods.clone(),
                    priority: m.priority,
                };
                routes.push(Route { rule, plugin: plugin.clone(), guards: guards.clone() });
            }
        }
        routes.sort_by(|a, b| a.rule.precedence(a.plugin.name()).cmp(&b.rule.precedence(b.plugin.name())));
        Self { routes }
    }

    /// The route a request for `host` (no port, lower case), `path` and
    /// `method` takes, if any.
    pub fn route(&self, host: &str, path: &str, method: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.rule.matches(host, path, method))
    }
}

impl Guards {
    /// The allowlists of `registry` guarding the route plugin `route`: those
    /// naming it, and those naming no route.
    fn of(registry: &Registry, route: &str) -> Self {
        let mut guards = Guards::default();
        for plugin in registry.of_kind(Kind::Allowlist) {
            let PluginMetadata::Allowlist(m) = plugin.metadata() else { continue };
            if !(m.routes.is_empty() || m.routes.iter().any(|r| r == route)) {
                continue;
            }
            if m.subject == SubjectKind::ClientAddress {
                guards.by_address.push(plugin.clone());
            } else {
                guards.inspect_body |= m.inspect_body;
                guards.after_route.push(plugin.clone());
            }
        }
        guards
    }
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
