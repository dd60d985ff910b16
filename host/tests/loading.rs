//! The real host loading real compiled plugins (built once by host/build.rs):
//! metadata round trips, settings, every class of bad file, deadlines, the
//! memory cap, the sandbox, and duplicate names and paths.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tollgate::admission::review;
use tollgate::plugins::error::{LoadError, PluginError, Refusal};
use tollgate::plugins::loader::{Loader, Settings};
use tollgate::plugins::plugin::{AllowCheck, Plugin};
use tollgate::runtime::contract::Kind;
use tollgate::runtime::contract::types::{
    FailurePolicy, Identity, Operation, RequestHead, RouteDecision, Scope, SubjectKind, Verdict,
};
use tollgate::runtime::engine::{EngineOptions, Runtime};
use tollgate::runtime::error::CallError;
use tollgate::runtime::metadata::PluginMetadata;

use tollgate_test_artifacts as guests;

/// The settings namespace-validation ships with.
const GUARD_SETTINGS: &str = include_str!("../../plugins/namespace-validation/namespace-validation.settings.json");

const DEADLINE: Duration = Duration::from_millis(250);
const MEMORY_CAP: usize = 16 << 20;

fn loader() -> Loader {
    let options = EngineOptions {
        max_memory_bytes: MEMORY_CAP,
        max_instances: 16,
        load_deadline: DEADLINE,
        call_deadline: DEADLINE,
        ..EngineOptions::default()
    };
    Loader::new(Arc::new(Runtime::new(options).expect("engine")))
}

/// A plugin directory holding copies of `guests` (under the given file
/// names) and settings files.
fn plugin_dir(files: &[(&str, &str)], settings: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, guest) in files {
        std::fs::copy(guest, dir.path().join(name)).expect("copy guest");
    }
    for (name, text) in settings {
        std::fs::write(dir.path().join(name), text).expect("write settings");
    }
    dir
}

fn load_with(guest: &str, settings: serde_json::Value) -> Result<Plugin, LoadError> {
    let bytes = std::fs::read(guest).expect("read guest");
    let settings = Settings { json: settings.to_string(), ..Settings::none() };
    loader().load_bytes(Path::new(guest), &bytes, settings)
}

fn refusal(result: Result<Plugin, LoadError>) -> Refusal {
    match result {
        Ok(plugin) => panic!("{} was loaded but should have been refused", plugin.name()),
        Err(e) => e.reason,
    }
}

fn namespace_review(operation: &str, name: &str, user: &str, groups: &[&str]) -> String {
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let (object, old) = match operation {
        "CREATE" => (object, serde_json::Value::Null),
        "DELETE" => (serde_json::Value::Null, object),
        _ => (object.clone(), object),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "d0b1c5e2-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Namespace"},
            "resource": {"group": "", "version": "v1", "resource": "namespaces"},
            "name": name,
            "operation": operation,
            "userInfo": {"username": user, "groups": groups},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
    .to_string()
}

fn decide(plugin: &Plugin, review: &str) -> Result<Verdict, PluginError> {
    let request = review::parse_review(review.as_bytes()).expect("valid review");
    plugin.validate(&review::to_contract(&request).expect("convertible"))
}

/// namespace-validation's shipped settings, with `changes` applied.
fn guard_settings_with(changes: serde_json::Value) -> serde_json::Value {
    let mut settings: serde_json::Value = serde_json::from_str(GUARD_SETTINGS).expect("shipped settings are JSON");
    for (key, value) in changes.as_object().expect("an object of changes") {
        settings[key] = value.clone();
    }
    settings
}

fn guard_settings() -> serde_json::Value {
    guard_settings_with(json!({}))
}

#[test]
fn metadata_round_trips_for_every_kind() {
    let report = loader().load_dir(
        plugin_dir(
            &[
                ("namespace-validation.wasm", guests::NAMESPACE_VALIDATION),
                ("jwt-org-router.wasm", guests::JWT_ORG_ROUTER),
                ("email-allowlist.wasm", guests::EMAIL_ALLOWLIST),
            ],
            &[("namespace-validation.settings.json", GUARD_SETTINGS)],
        )
        .path(),
    );
    let report = report.expect("directory readable");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(report.registry.len(), 3);

    let guard = report.registry.get("namespace-validation").expect("namespace-validation loaded");
    assert_eq!(guard.kind(), Kind::Admission);
    assert_eq!(guard.version(), "0.1.0");
    assert_eq!(guard.contract_version(), "0.2.0");
    assert_eq!(guard.hash().len(), 64);
    let PluginMetadata::Admission(meta) = guard.metadata() else { panic!("not admission metadata") };
    assert_eq!(meta.webhook.rules.len(), 1);
    let rule = &meta.webhook.rules[0];
    assert_eq!(rule.operations, vec![Operation::Create, Operation::Update, Operation::Delete]);
    assert_eq!(rule.api_groups, vec![String::new()]);
    assert_eq!(rule.api_versions, vec!["*".to_string()]);
    assert_eq!(rule.resources, vec!["namespaces".to_string()]);
    assert_eq!(rule.scope, Scope::Cluster);
    assert_eq!(meta.webhook.failure_policy, FailurePolicy::Ignore);
    assert_eq!(meta.webhook.timeout_seconds, 2);
    assert_eq!(guard.metadata().admission_path().as_deref(), Some("/validate/namespace-validation"));
    assert!(meta.info.settings_doc.as_deref().is_some_and(|d| d.contains("protectedNamespaces")));

    let router = report.registry.get("jwt-org-router").expect("router loaded");
    let PluginMetadata::Route(meta) = router.metadata() else { panic!("not route metadata") };
    assert_eq!(meta.matches[0].path_prefix, "/");
    assert_eq!(router.metadata().admission_path(), None);

    let emails = report.registry.get("email-allowlist").expect("allowlist loaded");
    let PluginMetadata::Allowlist(meta) = emails.metadata() else { panic!("not allowlist metadata") };
    assert_eq!(meta.subject, SubjectKind::Email);
    assert!(meta.webhook.is_none());
}

#[test]
fn bundled_plugins_all_load() {
    let report = tollgate::plugins::bundled::load(&loader());
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let names: Vec<&str> = report.registry.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "catalog-allowlist",
            "cidr-allowlist",
            "email-allowlist",
            "jwt-org-router",
            "namespace-validation",
            "pod-validation",
            "regular-user-validation"
        ]
    );
    assert!(report.registry.iter().all(|p| p.origin().to_string_lossy().starts_with("bundled:")));
    // Each serves from a snapshot taken after configure, not by configuring per call.
    for plugin in report.registry.iter() {
        assert!(plugin.is_snapshot(), "{} fell back to configuring on every call", plugin.name());
    }
}

#[test]
fn namespace_validation_decides_from_its_settings() {
    let guard = load_with(guests::NAMESPACE_VALIDATION, guard_settings()).expect("loads");

    let denied = decide(&guard, &namespace_review("DELETE", "kube-system", "alice", &[])).unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.code, Some(403));
    assert!(denied.message.unwrap().contains("protected namespace \"kube-system\""));

    let exact = decide(&guard, &namespace_review("UPDATE", "default", "alice", &[])).unwrap();
    assert!(!exact.allowed);
    // Exact names are not prefixes.
    assert!(decide(&guard, &namespace_review("CREATE", "default-configs", "alice", &[])).unwrap().allowed);
    assert!(decide(&guard, &namespace_review("CREATE", "team-a", "alice", &[])).unwrap().allowed);
    assert!(decide(&guard, &namespace_review("DELETE", "kube-system", "kube:admin", &[])).unwrap().allowed);
    assert!(decide(&guard, &namespace_review("DELETE", "kube-public", "bob", &["cluster-admins"])).unwrap().allowed);

    let anonymous = decide(&guard, &namespace_review("DELETE", "team-a", "", &[])).unwrap();
    assert_eq!((anonymous.allowed, anonymous.code), (false, Some(400)));

    let mut other_kind: serde_json::Value =
        serde_json::from_str(&namespace_review("CREATE", "x", "alice", &[])).unwrap();
    other_kind["request"]["kind"]["kind"] = json!("Pod");
    let verdict = decide(&guard, &other_kind.to_string()).unwrap();
    assert_eq!((verdict.allowed, verdict.code), (false, Some(400)), "{verdict:?}");
}

#[test]
fn settings_change_the_decision_without_rebuilding() {
    let narrow =
        load_with(guests::NAMESPACE_VALIDATION, guard_settings_with(json!({"protectedNamespaces": ["^prod$"]})))
            .expect("loads");
    assert!(decide(&narrow, &namespace_review("DELETE", "kube-system", "alice", &[])).unwrap().allowed);
    assert!(!decide(&narrow, &namespace_review("DELETE", "prod", "alice", &[])).unwrap().allowed);
}

#[test]
fn settings_files_json_and_yaml_are_accepted() {
    let dir = plugin_dir(
        &[("guard.wasm", guests::NAMESPACE_VALIDATION), ("emails.wasm", guests::EMAIL_ALLOWLIST)],
        &[
            ("guard.settings.json", &guard_settings().to_string()),
            ("emails.settings.yaml", "emails:\n  - Admin@Example.com\n"),
        ],
    );
    let report = loader().load_dir(dir.path()).unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let guard = report.registry.get("namespace-validation").unwrap();
    assert_eq!(guard.settings_file(), Some(dir.path().join("guard.settings.json").as_path()));
    assert!(!decide(guard, &namespace_review("DELETE", "kube-system", "alice", &[])).unwrap().allowed);

    let emails = report.registry.get("email-allowlist").unwrap();
    let head: RequestHead = serde_json::from_value(json!({
        "method": "GET", "scheme": "http", "authority": "app", "path": "/", "query": null,
        "headers": [], "client_addr": "127.0.0.1:5000", "tls": null
    }))
    .unwrap();
    let listed = Identity { email: Some("admin@EXAMPLE.com".into()), subject: None };
    let ask = |identity: &Identity| {
        emails.check_request(&AllowCheck { request: &head, route: "r", identity, body: None }).unwrap()
    };
    assert!(ask(&listed).allowed);
    let unlisted = Identity { email: Some("eve@example.com".into()), subject: None };
    let decision = ask(&unlisted);
    assert_eq!((decision.allowed, decision.reason.as_str()), (false, "email-not-listed"));
}

#[test]
fn settings_refused_by_the_plugin_or_unreadable_refuse_the_plugin() {
    let unknown = refusal(load_with(guests::NAMESPACE_VALIDATION, json!({"protected": ["x"]})));
    assert!(
        matches!(&unknown, Refusal::Settings { message: m, .. } if m.contains("unknown field `protected`")),
        "{unknown}"
    );

    let bad_regex = refusal(load_with(
        guests::NAMESPACE_VALIDATION,
        guard_settings_with(json!({"protectedNamespaces": ["(open"]})),
    ));
    // The reason says what is wrong without quoting the settings (they may hold secrets).
    let said = bad_regex.to_string();
    assert!(said.contains("is not a valid regular expression") && !said.contains("(open"), "{said}");

    let missing = refusal(load_with(guests::NAMESPACE_VALIDATION, json!({})));
    assert!(missing.to_string().contains("missing field `protectedNamespaces`"), "{missing}");

    let dir = plugin_dir(
        &[("guard.wasm", guests::NAMESPACE_VALIDATION), ("twice.wasm", guests::EMAIL_ALLOWLIST)],
        &[("guard.settings.json", "{not json"), ("twice.settings.json", "{}"), ("twice.settings.yaml", "emails: []")],
    );
    let report = loader().load_dir(dir.path()).unwrap();
    assert!(report.registry.is_empty());
    let reasons: Vec<String> = report.refused.iter().map(|r| r.to_string()).collect();
    assert!(reasons[0].contains("guard.settings.json") && reasons[0].contains("not valid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("several settings files"), "{reasons:?}");
}

#[test]
fn every_bad_file_is_refused_with_its_reason_while_good_plugins_load() {
    let dir = plugin_dir(
        &[
            ("a-good.wasm", guests::NAMESPACE_VALIDATION),
            ("core.wasm", guests::NAMESPACE_VALIDATION), // overwritten below
            ("invalid.wasm", guests::INVALID_METADATA),
            ("loops.wasm", guests::LOOP_IN_METADATA),
            ("not-a-plugin.wasm", guests::NOT_A_PLUGIN),
            ("old.wasm", guests::OLD_CONTRACT),
            ("panics.wasm", guests::PANIC_IN_METADATA),
            ("configure-fails.wasm", guests::MISBEHAVE),
            ("z-good.wasm", guests::EMAIL_ALLOWLIST),
        ],
        &[("configure-fails.settings.json", r#"{"configure": "fail"}"#), ("a-good.settings.json", GUARD_SETTINGS)],
    );
    std::fs::write(dir.path().join("text.wasm"), "this is not wasm").unwrap();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("truncated.wasm"), &std::fs::read(guests::MISBEHAVE).unwrap()[..1000]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored: not a .wasm file").unwrap();

    let report = loader().load_dir(dir.path()).unwrap();
    let names: Vec<&str> = report.registry.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["email-allowlist", "namespace-validation"]);

    let reason = |file: &str| -> String {
        let refused = report.refused.iter().find(|r| r.file == dir.path().join(file));
        let refused = refused.unwrap_or_else(|| panic!("{file} was not refused: {:?}", report.refused));
        let text = refused.to_string();
        assert!(text.starts_with(&dir.path().join(file).display().to_string()), "names the file: {text}");
        text
    };
    assert!(reason("text.wasm").contains("is not a WebAssembly file"));
    assert!(reason("core.wasm").contains("is a core WebAssembly module, not a component"));
    assert!(reason("truncated.wasm").contains("is not a valid component"));
    assert!(reason("not-a-plugin.wasm").contains("is not a Tollgate plugin"));
    assert!(reason("not-a-plugin.wasm").contains("wasi:cli/run"));
    assert!(
        reason("old.wasm").contains("built against tollgate:plugin@0.0.1, host supports tollgate:plugin@0.2.0"),
        "{}",
        reason("old.wasm")
    );
    let invalid = reason("invalid.wasm");
    assert!(invalid.contains("name: \"Invalid_Name\" must be a DNS-1123 label"), "{invalid}");
    assert!(invalid.contains("if '*' is present, must not specify other resources"), "{invalid}");
    assert!(invalid.contains("timeoutSeconds: 60 must be between 1 and 30"), "{invalid}");
    assert!(reason("loops.wasm").contains("metadata() ran past its deadline (250 ms were left for the call)"));
    let panics = reason("panics.wasm");
    assert!(panics.contains("metadata() trapped") && panics.contains("metadata is broken on purpose"), "{panics}");
    assert!(reason("configure-fails.wasm").contains("refused its settings: refused on purpose"));
    assert_eq!(report.refused.len(), 9, "{:?}", report.refused);
}

#[test]
fn a_plugin_looping_forever_is_stopped_by_the_deadline() {
    let refused = refusal(load_with(guests::LOOP_IN_METADATA, json!({})));
    assert!(matches!(refused, Refusal::Metadata(CallError::Deadline(d)) if d == DEADLINE), "{refused}");

    let refused = refusal(load_with(guests::MISBEHAVE, json!({"configure": "loop"})));
    assert!(matches!(refused, Refusal::Configure(CallError::Deadline(_))), "{refused}");

    let plugin = load_with(guests::MISBEHAVE, json!({"validate": "loop"})).expect("loads");
    let review = namespace_review("CREATE", "x", "alice", &[]);
    for _ in 0..2 {
        let err = decide(&plugin, &review).unwrap_err();
        assert!(matches!(err, PluginError::Call { source: CallError::Deadline(_), .. }), "{err}");
    }
}

#[test]
fn a_plugin_allocating_without_bound_is_stopped_by_the_memory_cap() {
    let refused = refusal(load_with(guests::MISBEHAVE, json!({"configure": "alloc"})));
    assert!(matches!(refused, Refusal::Configure(CallError::MemoryCap { cap_mib: 16 })), "{refused}");
    assert!(refused.to_string().contains("exceeded its memory cap of 16 MiB"));

    let plugin = load_with(guests::MISBEHAVE, json!({"validate": "alloc"})).expect("loads");
    let err = decide(&plugin, &namespace_review("CREATE", "x", "alice", &[])).unwrap_err();
    assert!(matches!(err, PluginError::Call { source: CallError::MemoryCap { .. }, .. }), "{err}");
    assert!(err.to_string().starts_with("plugin misbehave exceeded its memory cap"), "{err}");
}

#[test]
fn a_trap_fails_one_call_and_the_next_call_gets_a_fresh_instance() {
    let plugin = load_with(guests::MISBEHAVE, json!({"validate": "panic"})).expect("loads");
    let review = namespace_review("CREATE", "x", "alice", &[]);
    for _ in 0..3 {
        let err = decide(&plugin, &review).unwrap_err();
        assert!(err.to_string().contains("trapped") && err.to_string().contains("misbehaving on purpose"), "{err}");
    }
    let healthy = load_with(guests::MISBEHAVE, json!({"validate": "ok"})).expect("loads");
    assert!(decide(&healthy, &review).unwrap().allowed);
}

#[test]
fn a_plugin_that_prints_on_every_call_keeps_its_instance() {
    // Output goes to the log as it is written: nothing fills up in an
    // instance however many calls it serves.
    let plugin = load_with(guests::MISBEHAVE, json!({"validate": "print"})).expect("loads");
    let review = namespace_review("CREATE", "x", "alice", &[]);
    for call in 0..3_000 {
        assert_eq!(decide(&plugin, &review).unwrap().message.as_deref(), Some("printed"));
        assert_eq!(plugin.idle_instances(), 1, "the instance was dropped after call {call}");
    }
}

#[test]
fn a_call_that_prints_past_the_cap_is_answered_not_failed() {
    // 200 KiB of output in one call: the log gets the first 64 KiB, the
    // call its answer, and the instance is kept.
    let plugin = load_with(guests::MISBEHAVE, json!({"validate": "flood"})).expect("loads");
    let review = namespace_review("CREATE", "x", "alice", &[]);
    for _ in 0..3 {
        assert_eq!(decide(&plugin, &review).unwrap().message.as_deref(), Some("flooded"));
    }
    assert_eq!(plugin.idle_instances(), 1);
}

#[test]
fn a_guest_gets_no_files_environment_or_arguments() {
    let plugin = load_with(guests::MISBEHAVE, json!({"validate": "open-file"})).expect("loads");
    let verdict = decide(&plugin, &namespace_review("CREATE", "x", "alice", &[])).unwrap();
    let report = verdict.message.unwrap();
    assert!(!report.contains("readable"), "a guest could read a file: {report}");
    assert_eq!(report.matches(": ").count(), 4, "{report}");

    let plugin = load_with(guests::MISBEHAVE, json!({"validate": "env"})).expect("loads");
    let verdict = decide(&plugin, &namespace_review("CREATE", "x", "alice", &[])).unwrap();
    assert_eq!(verdict.message.as_deref(), Some("env=0 args=0"));
}

#[test]
fn duplicate_names_and_paths_are_refused_naming_both_files() {
    let dir = plugin_dir(
        &[
            ("a.wasm", guests::NAMESPACE_VALIDATION),
            ("b.wasm", guests::NAMESPACE_VALIDATION),
            ("c.wasm", guests::PATH_CLASH),
        ],
        &[("a.settings.json", GUARD_SETTINGS), ("b.settings.json", GUARD_SETTINGS)],
    );
    let report = loader().load_dir(dir.path()).unwrap();
    assert_eq!(report.registry.len(), 1);
    assert_eq!(report.registry.get("namespace-validation").unwrap().origin(), dir.path().join("a.wasm"));
    let reasons: Vec<String> = report.refused.iter().map(|r| r.to_string()).collect();
    let a = dir.path().join("a.wasm").display().to_string();
    assert!(reasons[0].starts_with(&dir.path().join("b.wasm").display().to_string()), "{reasons:?}");
    assert!(reasons[0].contains(&format!("name \"namespace-validation\" is already used by {a}")), "{reasons:?}");
    assert!(
        reasons[1].contains(&format!("path \"/validate/namespace-validation\" is already used by {a}")),
        "{reasons:?}"
    );
}

#[test]
fn a_plugin_of_another_kind_is_not_called_for_a_request() {
    let router = load_with(guests::JWT_ORG_ROUTER, json!({})).expect("loads");
    let err = decide(&router, &namespace_review("CREATE", "x", "alice", &[])).unwrap_err();
    assert!(matches!(err, PluginError::WrongKind { expected: Kind::Admission, actual: Kind::Route, .. }));
}

#[test]
fn the_route_skeleton_answers_401_without_a_bearer_token() {
    let router = load_with(guests::JWT_ORG_ROUTER, json!({})).expect("loads");
    let head = |auth: Option<&str>| {
        let headers = auth.map(|v| json!([{"name": "authorization", "value": v}])).unwrap_or(json!([]));
        serde_json::from_value(json!({
            "method": "GET", "scheme": "https", "authority": "api", "path": "/rest", "query": null,
            "headers": headers, "client_addr": "127.0.0.1:5000", "tls": null
        }))
        .unwrap()
    };
    for auth in [None, Some("Basic dXNlcjpwYXNz"), Some("Bearer not-a-jwt")] {
        let RouteDecision::Respond(answer) = router.route(&head(auth)).unwrap() else { panic!("forwarded") };
        assert_eq!(answer.status, 401, "{auth:?}");
        assert!(answer.headers.iter().any(|h| h.name == "www-authenticate" && h.value.starts_with("Bearer")));
    }
}

#[test]
fn a_directory_that_cannot_be_read_is_an_error() {
    let missing = PathBuf::from("/nonexistent/tollgate-plugins");
    let err = loader().load_dir(&missing).unwrap_err();
    assert!(err.to_string().contains("cannot read plugin directory /nonexistent/tollgate-plugins"), "{err}");
}

#[test]
fn compiled_plugins_are_cached_and_a_corrupt_entry_is_rebuilt() {
    let cache_dir = tempfile::tempdir().unwrap();
    let with_cache = || {
        let loader = loader();
        let cache =
            tollgate::plugins::disk_cache::CodeCache::open(cache_dir.path(), loader.runtime().engine()).unwrap();
        loader.with_cache(Arc::new(cache))
    };
    let bytes = std::fs::read(guests::NAMESPACE_VALIDATION).unwrap();
    let settings = || Settings { json: guard_settings().to_string(), ..Settings::none() };
    let review = namespace_review("DELETE", "kube-system", "alice", &[]);

    let first = with_cache().load_bytes(Path::new("guard.wasm"), &bytes, settings()).unwrap();
    assert!(!first.from_cache());
    let second = with_cache().load_bytes(Path::new("guard.wasm"), &bytes, settings()).unwrap();
    assert!(second.from_cache(), "an unchanged file is not compiled again");
    assert!(second.is_snapshot());
    assert_eq!(second.metadata(), first.metadata());
    assert_eq!(decide(&second, &review).unwrap(), decide(&first, &review).unwrap());

    // Other settings are another entry: the snapshot holds the settings.
    let open =
        Settings { json: guard_settings_with(json!({"protectedNamespaces": []})).to_string(), ..Settings::none() };
    let third = with_cache().load_bytes(Path::new("guard.wasm"), &bytes, open).unwrap();
    assert!(!third.from_cache());
    assert!(decide(&third, &review).unwrap().allowed);

    // A corrupt entry is ignored and rebuilt.
    for entry in std::fs::read_dir(cache_dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            std::fs::write(&path, b"corrupt").unwrap();
        }
    }
    let rebuilt = with_cache().load_bytes(Path::new("guard.wasm"), &bytes, settings()).unwrap();
    assert!(!rebuilt.from_cache());
    assert!(!decide(&rebuilt, &review).unwrap().allowed);
    let again = with_cache().load_bytes(Path::new("guard.wasm"), &bytes, settings()).unwrap();
    assert!(again.from_cache(), "the rebuilt entry is used next time");
}
