//! Test guest `pass-route`: forwards every request on its path prefix to the
//! upstream in its settings, unchanged (`{"upstream": "http://..."}`), or
//! answers directly when `respond` is set. The simplest route: a baseline for
//! benchmarks and a carrier for allowlist tests. `sleepMs` makes every call
//! wait that long first (through WASI clocks): a slow route.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../../wit", world: "route-plugin" });

use exports::tollgate::plugin::route::Guest;
use tollgate::plugin::types::{
    Forward, Header, PluginInfo, RequestHead, Respond, RouteDecision, RouteMatch, RouteMetadata,
};

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    upstream: String,
    /// Answer with this status instead of forwarding.
    #[serde(default)]
    respond: Option<u16>,
    /// Sleep this long in every call.
    #[serde(default)]
    sleep_ms: u64,
}

thread_local! {
    static SETTINGS: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

struct PassRoute;

impl Guest for PassRoute {
    fn metadata() -> RouteMetadata {
        RouteMetadata {
            info: PluginInfo {
                name: "pass-route".into(),
                version: "0.0.1".into(),
                summary: "Forwards everything to one upstream (test guest).".into(),
                doc: String::new(),
                settings_doc: None,
            },
            matches: vec![RouteMatch { hosts: vec![], path_prefix: "/".into(), methods: vec![], priority: -10 }],
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        SETTINGS.with(|s| *s.borrow_mut() = Some(parsed));
        Ok(())
    }

    fn route(_req: RequestHead) -> RouteDecision {
        let settings = SETTINGS.with(|s| s.borrow().clone());
        if let Some(Settings { sleep_ms: ms @ 1.., .. }) = settings {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        match settings {
            Some(Settings { respond: Some(status), .. }) => RouteDecision::Respond(Respond {
                status,
                headers: vec![Header { name: "x-answered-by".into(), value: "pass-route".into() }],
                body: "answered directly\n".into(),
            }),
            Some(Settings { upstream, .. }) => RouteDecision::Forward(Forward {
                upstream,
                set_headers: vec![],
                remove_headers: vec![],
                identity: None,
            }),
            None => RouteDecision::Respond(Respond { status: 500, headers: vec![], body: "not configured\n".into() }),
        }
    }
}

export!(PassRoute);
