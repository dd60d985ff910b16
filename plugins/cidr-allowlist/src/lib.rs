//! `cidr-allowlist`: only clients from listed networks may pass
//! (`../shared/reference`, section 4). The client is the TCP peer, unless the
//! peer is one of `trustedProxies`; only then is `X-Forwarded-For` read (from
//! the right, skipping trusted proxies), so a client cannot claim another
//! address by sending the header itself.

use std::cell::RefCell;
use std::collections::BTreeMap;

use gateway_rules::Cidrs;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "allowlist-plugin" });

use exports::tollgate::plugin::allowlist::Guest;
use tollgate::plugin::types::{
    AdmissionRequest, AllowDecision, AllowlistMetadata, Identity, PluginInfo, RequestHead, SubjectKind, Verdict,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Networks allowed on every route not named in `routes`.
    #[serde(default)]
    allow: Vec<String>,
    /// Networks allowed on particular route plugins, by name.
    #[serde(default)]
    routes: BTreeMap<String, Vec<String>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

struct Config {
    allow: Cidrs,
    routes: BTreeMap<String, Cidrs>,
    trusted: Cidrs,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

fn decision(allowed: bool, reason: &str) -> AllowDecision {
    AllowDecision { allowed, reason: reason.into(), remove_headers: vec![] }
}

fn configure(settings: Settings) -> Result<Config, String> {
    let parse =
        |list: &[String], field: &str| Cidrs::parse(list).map_err(|e| format!("invalid settings: {field}: {e}"));
    let mut routes = BTreeMap::new();
    for (route, list) in &settings.routes {
        routes.insert(route.clone(), parse(list, &format!("routes.{route}"))?);
    }
    Ok(Config {
        allow: parse(&settings.allow, "allow")?,
        routes,
        trusted: parse(&settings.trusted_proxies, "trustedProxies")?,
    })
}

fn check(config: &Config, req: &RequestHead, route: &str) -> AllowDecision {
    let headers = req.headers.iter().map(|h| (h.name.as_str(), h.value.as_str()));
    let forwarded = gateway_rules::header_values(headers, "x-forwarded-for");
    let client = match gateway_rules::client_ip(&req.client_addr, &forwarded, &config.trusted) {
        Ok(ip) => ip,
        Err(_) => return decision(false, "bad-forwarded-for"),
    };
    let allow = config.routes.get(route).unwrap_or(&config.allow);
    if allow.contains(client) { decision(true, "address-allowed") } else { decision(false, "address-not-allowed") }
}

struct CidrAllowlist;

impl Guest for CidrAllowlist {
    fn metadata() -> AllowlistMetadata {
        AllowlistMetadata {
            info: PluginInfo {
                name: "cidr-allowlist".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                summary: "Only clients from listed networks may pass.".into(),
                doc: "Allows a request when the client address is in one of the listed IPv4 or IPv6 networks. \
                      The client is the TCP peer; `X-Forwarded-For` is read only when the peer is a trusted \
                      proxy, from the right, skipping trusted proxies. Runs before the route."
                    .into(),
                settings_doc: Some(
                    "`allow`: CIDRs (or bare addresses) for every route. `routes`: `{<route plugin>: [CIDRs]}` \
                     for particular routes. `trustedProxies`: CIDRs whose `X-Forwarded-For` is believed."
                        .into(),
                ),
            },
            subject: SubjectKind::ClientAddress,
            routes: vec![],
            webhook: None,
            inspect_body: false,
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        let config = configure(parsed)?;
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(())
    }

    fn check_request(req: RequestHead, route: String, _identity: Identity, _body: Option<String>) -> AllowDecision {
        CONFIG.with(|c| match c.borrow().as_ref() {
            Some(config) => check(config, &req, &route),
            None => decision(false, "not-configured"),
        })
    }

    fn check_admission(_req: AdmissionRequest) -> Verdict {
        Verdict {
            allowed: false,
            code: Some(400),
            message: Some("cidr-allowlist does not handle admission requests".into()),
            warnings: vec![],
            patch: None,
        }
    }
}

export!(CidrAllowlist);
