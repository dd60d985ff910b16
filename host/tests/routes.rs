//! The gateway's route table built from a registry of real compiled
//! plugins, with no listener: which route a request takes, in what order
//! routes are tried, and which allowlists guard a route before and after
//! its decision.

use std::path::Path;
use std::sync::Arc;

use tollgate::gateway::routes::RouteTable;
use tollgate::plugins::loader::{Loader, Settings};
use tollgate::plugins::registry::Registry;
use tollgate::runtime::engine::{EngineOptions, Runtime};

use tollgate_test_artifacts as guests;

/// A registry of `guests`, each with its settings (JSON).
fn registry(guests: &[(&str, &str)]) -> Registry {
    let loader = Loader::new(Arc::new(Runtime::new(EngineOptions::default()).expect("engine")));
    let mut registry = Registry::default();
    for (guest, settings) in guests {
        let bytes = std::fs::read(guest).expect("read guest");
        let settings = Settings { json: settings.to_string(), ..Settings::none() };
        let plugin = loader.load_bytes(Path::new(guest), &bytes, settings).expect("loads");
        registry.insert(plugin).expect("unique");
    }
    registry
}

fn names(plugins: &[Arc<tollgate::plugins::plugin::Plugin>]) -> Vec<&str> {
    plugins.iter().map(|p| p.name()).collect()
}

#[test]
fn routes_are_tried_by_priority_and_guarded_by_what_their_allowlists_need() {
    let registry = registry(&[
        // Catch-all at priority -10.
        (guests::PASS_ROUTE, r#"{"upstream": "http://127.0.0.1:9"}"#),
        // Catch-all at priority 0: tried first.
        (guests::JWT_ORG_ROUTER, r#"{"orgs": {}}"#),
        (guests::CIDR_ALLOWLIST, r#"{"allow": ["10.0.0.0/8"]}"#),
        (guests::EMAIL_ALLOWLIST, r#"{"emails": ["a@example.com"]}"#),
        (guests::CATALOG_ALLOWLIST, r#"{"sources": ["Coin API"]}"#),
    ]);
    let table = RouteTable::new(&registry);
    let route = table.route("api.example", "/anything", "GET").expect("a route");
    assert_eq!(route.plugin.name(), "jwt-org-router");
    // The client-address allowlist runs before the route decides; the
    // others after, and one of them reads the body.
    assert_eq!(names(&route.guards.by_address), ["cidr-allowlist"]);
    assert_eq!(names(&route.guards.after_route), ["catalog-allowlist", "email-allowlist"]);
    assert!(route.guards.inspect_body);

    // Without the higher-priority route, the fallback takes the request.
    let fallback = RouteTable::new(&registry.filtered(|p| p.name() != "jwt-org-router"));
    assert_eq!(fallback.route("api.example", "/anything", "GET").expect("a route").plugin.name(), "pass-route");
    // No route plugins, no route.
    assert!(RouteTable::new(&registry.filtered(|p| p.name() == "cidr-allowlist")).route("h", "/", "GET").is_none());
}
