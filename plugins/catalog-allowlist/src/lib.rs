//! `catalog-allowlist`: only listed connectors may exist
//! (`../shared/reference`, section 3). Replaces deleting every other
//! connector definition from Airbyte's database after each deploy by
//! refusing their creation where it happens:
//!
//! - as an admission plugin: `Source` and `Destination` objects of the API
//!   group `airbyte.tollgate.io` whose `spec.connector` is not listed are
//!   denied (403);
//! - on gateway routes: Airbyte API calls that create a connector definition
//!   (`POST .../source_definitions/create[_custom]`, and the same for
//!   destinations) whose name is not listed are refused.
//!
//! Names compare case-insensitively, surrounding spaces ignored.

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "allowlist-plugin" });

use exports::tollgate::plugin::allowlist::Guest;
use tollgate::plugin::types::{
    AdmissionRequest, AllowDecision, AllowlistMetadata, FailurePolicy, Identity, MatchPolicy, Operation, PluginInfo,
    RequestHead, Rule, Scope, SideEffects, SubjectKind, Verdict, Webhook,
};

/// The API group of the connector objects the admission side checks.
const GROUP: &str = "airbyte.tollgate.io";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Source connectors that may exist.
    #[serde(default)]
    sources: Vec<String>,
    /// Destination connectors that may exist.
    #[serde(default)]
    destinations: Vec<String>,
}

struct Catalog {
    sources: Vec<String>,
    destinations: Vec<String>,
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

fn normal(name: &str) -> String {
    name.trim().to_lowercase()
}

impl Catalog {
    fn allows(&self, side: Side, name: &str) -> bool {
        let list = match side {
            Side::Source => &self.sources,
            Side::Destination => &self.destinations,
        };
        list.contains(&normal(name))
    }
}

thread_local! {
    static CATALOG: RefCell<Option<Catalog>> = const { RefCell::new(None) };
}

fn with_catalog<T>(f: impl FnOnce(&Catalog) -> T, unconfigured: T) -> T {
    CATALOG.with(|c| c.borrow().as_ref().map_or(unconfigured, f))
}

fn verdict(allowed: bool, code: Option<u16>, message: Option<String>) -> Verdict {
    Verdict { allowed, code, message, warnings: vec![], patch: None }
}

fn decision(allowed: bool, reason: &str) -> AllowDecision {
    AllowDecision { allowed, reason: reason.into(), remove_headers: vec![] }
}

/// Which definition an Airbyte API path creates, if it creates one.
fn created_by(method: &str, path: &str) -> Option<Side> {
    if method != "POST" {
        return None;
    }
    let path = path.trim_end_matches('/');
    for (suffix, side) in [
        ("/source_definitions/create", Side::Source),
        ("/source_definitions/create_custom", Side::Source),
        ("/destination_definitions/create", Side::Destination),
        ("/destination_definitions/create_custom", Side::Destination),
    ] {
        if path.ends_with(suffix) {
            return Some(side);
        }
    }
    None
}

/// The part of a creation request this plugin reads. Typed, so a key given
/// twice is refused ("duplicate field") rather than read as the last copy:
/// the upstream's JSON parser may take the first, and then decide on a
/// name this plugin never saw.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Creation {
    source_definition: Option<Named>,
    destination_definition: Option<Named>,
    /// Older Airbyte versions put the name at the top.
    name: Option<Value>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<Value>,
}

fn check_request(catalog: &Catalog, req: &RequestHead, body: Option<&str>) -> AllowDecision {
    let Some(side) = created_by(&req.method, &req.path) else {
        return decision(true, "not-a-creation");
    };
    let creation = match body.map(serde_json::from_str::<Creation>) {
        Some(Ok(creation)) => creation,
        Some(Err(error)) if error.to_string().starts_with("duplicate field") => {
            return decision(false, "duplicate-key");
        }
        _ => return decision(false, "body-not-json"),
    };
    // Airbyte sends {"sourceDefinition": {"name": ...}} (older: {"name": ...}).
    let definition = match side {
        Side::Source => creation.source_definition,
        Side::Destination => creation.destination_definition,
    };
    let name = match (definition.and_then(|d| d.name), creation.name) {
        // Both places: the upstream may read either, so they must agree.
        (Some(inner), Some(outer)) if inner != outer => return decision(false, "ambiguous-name"),
        (inner, outer) => inner.or(outer),
    };
    match name.as_ref().and_then(Value::as_str) {
        Some(name) if catalog.allows(side, name) => decision(true, "connector-listed"),
        Some(_) => decision(false, "connector-not-listed"),
        None => decision(false, "no-connector-name"),
    }
}

fn check_admission(catalog: &Catalog, req: &AdmissionRequest) -> Verdict {
    let side = match req.kind.kind.as_str() {
        "Source" => Side::Source,
        "Destination" => Side::Destination,
        other => return verdict(false, Some(400), Some(format!("catalog-allowlist does not check kind {other}"))),
    };
    if req.operation == Operation::Delete {
        return verdict(true, None, None);
    }
    let Some(object) = req.object.as_deref().and_then(|o| serde_json::from_str::<Value>(o).ok()) else {
        return verdict(false, Some(400), Some("the request carries no object".into()));
    };
    let Some(connector) = object.pointer("/spec/connector").and_then(Value::as_str) else {
        return verdict(false, Some(400), Some("spec.connector (the connector's name) is required".into()));
    };
    if catalog.allows(side, connector) {
        verdict(true, None, None)
    } else {
        verdict(false, Some(403), Some(format!("connector {connector:?} is not in the allowed catalog")))
    }
}

struct CatalogAllowlist;

impl Guest for CatalogAllowlist {
    fn metadata() -> AllowlistMetadata {
        AllowlistMetadata {
            info: PluginInfo {
                name: "catalog-allowlist".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                summary: "Only listed connectors may be created.".into(),
                doc: "Denies `Source`/`Destination` objects (`airbyte.tollgate.io`) whose `spec.connector` is \
                      not listed, and refuses Airbyte API calls through the gateway that create a connector \
                      definition (`POST .../source_definitions/create[_custom]`, and destinations) whose name \
                      is not listed. Names compare case-insensitively. Other requests pass."
                    .into(),
                settings_doc: Some("`sources`, `destinations`: the connector names that may exist.".into()),
            },
            subject: SubjectKind::Name,
            routes: vec![],
            webhook: Some(Webhook {
                rules: vec![Rule {
                    operations: vec![Operation::Create, Operation::Update],
                    api_groups: vec![GROUP.into()],
                    api_versions: vec!["*".into()],
                    resources: vec!["sources".into(), "destinations".into()],
                    scope: Scope::Namespaced,
                }],
                failure_policy: FailurePolicy::Fail,
                match_policy: MatchPolicy::Equivalent,
                side_effects: SideEffects::None,
                timeout_seconds: 5,
                namespace_selector: None,
                object_selector: None,
                path: None,
                mutating: false,
            }),
            inspect_body: true,
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        for name in parsed.sources.iter().chain(&parsed.destinations) {
            if name.trim().is_empty() {
                return Err("invalid settings: connector names must not be empty".into());
            }
        }
        let catalog = Catalog {
            sources: parsed.sources.iter().map(|n| normal(n)).collect(),
            destinations: parsed.destinations.iter().map(|n| normal(n)).collect(),
        };
        CATALOG.with(|c| *c.borrow_mut() = Some(catalog));
        Ok(())
    }

    fn check_request(req: RequestHead, _route: String, _identity: Identity, body: Option<String>) -> AllowDecision {
        with_catalog(|catalog| check_request(catalog, &req, body.as_deref()), decision(false, "not-configured"))
    }

    fn check_admission(req: AdmissionRequest) -> Verdict {
        with_catalog(
            |catalog| check_admission(catalog, &req),
            verdict(false, Some(500), Some("catalog-allowlist is not configured".into())),
        )
    }
}

export!(CatalogAllowlist);
