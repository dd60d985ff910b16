// The body of the `misbehave` test guests, included by each crate's lib.rs
// after it defines NAME and FAILURE_POLICY: an admission plugin whose
// settings choose how it misbehaves, so one component exercises every
// failure the host must contain.
//
// Settings: `{"configure": ACTION, "validate": ACTION}` where ACTION is one of
// `ok` (default), `fail`, `panic`, `loop`, `alloc`, `open-file`, `env`,
// `print`, `flood` (print 200 KiB), `sleep` (sleep 30 s through WASI clocks,
// a wait inside a host call); `validate` also takes `echo` (describe the request), `warn`
// (allow with a warning) and `count` (allow, saying how many calls this
// instance has answered: shows whether the host reused the instance; an
// object named "panic" makes it panic, one named "grow" makes it use 4 MiB
// more memory first).

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    configure: Option<String>,
    #[serde(default)]
    validate: Option<String>,
}

thread_local! {
    static VALIDATE: RefCell<String> = const { RefCell::new(String::new()) };
    static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct Misbehave;

/// Runs `action`; returns text describing what happened for those that return.
fn act(action: &str) -> Result<String, String> {
    match action {
        "" | "ok" => Ok("ok".into()),
        "fail" => Err("refused on purpose".into()),
        "panic" => panic!("misbehaving on purpose"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "open-file" => {
            let mut found = Vec::new();
            for path in ["/etc/passwd", "/", ".", "/proc/self/environ"] {
                match std::fs::read_dir(path).map(|_| ()).or_else(|_| std::fs::read(path).map(|_| ())) {
                    Ok(()) => found.push(format!("{path}: readable")),
                    Err(e) => found.push(format!("{path}: {e}")),
                }
            }
            Ok(found.join("; "))
        }
        "env" => Ok(format!("env={} args={}", std::env::vars().count(), std::env::args().count())),
        "print" => {
            println!("hello from stdout");
            eprintln!("hello from stderr");
            Ok("printed".into())
        }
        "flood" => {
            for i in 0..4_000 {
                // 64 bytes a line with the newline.
                println!("flood line {i:05} {}", ".".repeat(46));
            }
            Ok("flooded".into())
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(30));
            Ok("slept".into())
        }
        other => Err(format!("unknown action {other:?}")),
    }
}

impl Guest for Misbehave {
    fn metadata() -> AdmissionMetadata {
        AdmissionMetadata {
            info: PluginInfo {
                name: NAME.into(),
                version: "0.0.1".into(),
                summary: "Misbehaves as its settings say (test guest).".into(),
                doc: String::new(),
                settings_doc: None,
            },
            webhook: Webhook {
                rules: vec![Rule {
                    operations: vec![Operation::All],
                    api_groups: vec!["".into()],
                    api_versions: vec!["v1".into()],
                    resources: vec!["configmaps".into()],
                    scope: Scope::Namespaced,
                }],
                failure_policy: FAILURE_POLICY,
                match_policy: MatchPolicy::Equivalent,
                side_effects: SideEffects::None,
                timeout_seconds: 1,
                namespace_selector: None,
                object_selector: None,
                path: None,
                mutating: false,
            },
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        act(parsed.configure.as_deref().unwrap_or("ok"))?;
        VALIDATE.with(|v| *v.borrow_mut() = parsed.validate.unwrap_or_default());
        Ok(())
    }

    fn validate(req: AdmissionRequest) -> Verdict {
        let action = VALIDATE.with(|v| v.borrow().clone());
        match action.as_str() {
            "echo" => {
                let message = format!(
                    "uid={} op={:?} dry_run={} user={} namespace={:?}",
                    req.uid, req.operation, req.dry_run, req.user_info.username, req.namespace
                );
                return Verdict { allowed: true, code: None, message: Some(message), warnings: vec![], patch: None };
            }
            "count" => {
                let calls = CALLS.with(|c| {
                    c.set(c.get() + 1);
                    c.get()
                });
                match req.name.as_deref() {
                    Some("panic") => panic!("asked to panic on call {calls}"),
                    Some("grow") => drop(std::hint::black_box(vec![1u8; 4 << 20])),
                    _ => {}
                }
                let message = Some(format!("call {calls}"));
                return Verdict { allowed: true, code: None, message, warnings: vec![], patch: None };
            }
            "warn" => {
                let warnings = vec!["careful: this is a test warning".to_string()];
                return Verdict { allowed: true, code: None, message: None, warnings, patch: None };
            }
            _ => {}
        }
        let (allowed, message) = match act(&action) {
            Ok(text) => (true, text),
            Err(text) => (false, text),
        };
        Verdict { allowed, code: None, message: Some(message), warnings: vec![], patch: None }
    }
}

export!(Misbehave);
