//! The `tollgate` binary run as a user runs it: `inspect`, `eval` and
//! `serve`, on real compiled plugins.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use tollgate_test_artifacts as guests;

const TOLLGATE: &str = env!("CARGO_BIN_EXE_tollgate");

fn data(name: &str) -> String {
    format!("{}/../tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tollgate(args: &[&str]) -> Output {
    Command::new(TOLLGATE).args(args).env("RUST_LOG", "info").output().expect("run tollgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn copy(dir: &Path, name: &str, guest: &str) {
    std::fs::copy(guest, dir.join(name)).expect("copy guest");
}

/// The settings file a reference plugin ships with.
fn shipped_settings(plugin: &str) -> String {
    format!("{}/../plugins/{plugin}/{plugin}.settings.json", env!("CARGO_MANIFEST_DIR"))
}

/// Copies a reference plugin and its shipped settings as `<stem>.wasm`.
fn copy_with_settings(dir: &Path, stem: &str, guest: &str, plugin: &str) {
    copy(dir, &format!("{stem}.wasm"), guest);
    std::fs::copy(shipped_settings(plugin), dir.join(format!("{stem}.settings.json"))).expect("copy settings");
}

#[test]
fn inspect_a_directory_lists_plugins_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    copy_with_settings(dir.path(), "namespace-validation", guests::NAMESPACE_VALIDATION, "namespace-validation");
    copy(dir.path(), "jwt-org-router.wasm", guests::JWT_ORG_ROUTER);
    std::fs::write(dir.path().join("broken.wasm"), "not wasm").unwrap();

    let out = tollgate(&["inspect", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "refusals make inspect fail: {stdout}");
    assert!(stdout.contains("namespace-validation 0.1.0 (admission)"), "{stdout}");
    assert!(stdout.contains("admission: /validate/namespace-validation failurePolicy=Ignore timeout=2s"), "{stdout}");
    assert!(stdout.contains("rule: CREATE,UPDATE,DELETE groups=\"\" versions=* resources=namespaces scope=Cluster"));
    assert!(stdout.contains("jwt-org-router 0.1.0 (route)"), "{stdout}");
    assert!(stdout.contains("broken.wasm: is not a WebAssembly file"), "{stdout}");
}

#[test]
fn inspect_json_describes_one_file() {
    let out = tollgate(&["inspect", guests::EMAIL_ALLOWLIST, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON");
    let plugin = &report["plugins"][0];
    assert_eq!(plugin["name"], "email-allowlist");
    assert_eq!(plugin["metadata"]["kind"], "allowlist");
    assert_eq!(plugin["contract"], "tollgate:plugin@0.2.0");
    assert_eq!(plugin["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["refused"], Value::Array(vec![]));
}

#[test]
fn eval_answers_an_admission_review_like_the_api_server_expects() {
    let dir = tempfile::tempdir().unwrap();
    copy(dir.path(), "guard.wasm", guests::NAMESPACE_VALIDATION);
    let shipped = include_str!("../plugins/namespace-validation/namespace-validation.settings.json");
    let settings: Value = serde_json::from_str(shipped).unwrap();
    std::fs::write(dir.path().join("guard.settings.yaml"), serde_yaml::to_string(&settings).unwrap()).unwrap();
    let plugin = dir.path().join("guard.wasm");

    let out = tollgate(&["eval", plugin.to_str().unwrap(), &data("namespace-delete-kube-system.json")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let review: Value = serde_json::from_slice(&out.stdout).expect("eval prints JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert_eq!(response["uid"], "3b6a7e38-3e5c-4a9f-9a53-1c1f0e6c2a11");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert!(response["status"]["message"].as_str().unwrap().contains("protected namespace \"kube-system\""));
    assert_eq!(response["auditAnnotations"]["tollgate-plugin"], "namespace-validation@0.1.0");

    // --settings replaces the file beside the plugin: now nothing is protected.
    let open = dir.path().join("open.json");
    let mut unprotected = settings.clone();
    unprotected["protectedNamespaces"] = serde_json::json!([]);
    std::fs::write(&open, unprotected.to_string()).unwrap();
    let out = tollgate(&[
        "eval",
        plugin.to_str().unwrap(),
        &data("namespace-delete-kube-system.json"),
        "--settings",
        open.to_str().unwrap(),
    ]);
    let review: Value = serde_json::from_slice(&out.stdout).expect("eval prints JSON");
    assert_eq!(review["response"]["allowed"], true);
}

#[test]
fn eval_runs_route_and_allowlist_plugins() {
    let out = tollgate(&["eval", guests::JWT_ORG_ROUTER, &data("route-no-token.json")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["Respond"]["status"], 401);
    let headers = decision["Respond"]["headers"].as_array().unwrap();
    assert!(headers.iter().any(|h| h["name"] == "www-authenticate"), "{decision}");

    let dir = tempfile::tempdir().unwrap();
    copy(dir.path(), "emails.wasm", guests::EMAIL_ALLOWLIST);
    let settings = dir.path().join("emails.settings.json");
    std::fs::write(&settings, r#"{"emails": ["admin@example.com"]}"#).unwrap();
    let out = tollgate(&["eval", dir.path().join("emails.wasm").to_str().unwrap(), &data("email-check.json")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision, serde_json::json!({"allowed": true, "reason": "email-listed", "remove_headers": []}));

    std::fs::write(&settings, r#"{"emails": ["someone@example.com"]}"#).unwrap();
    let out = tollgate(&["eval", dir.path().join("emails.wasm").to_str().unwrap(), &data("email-check.json")]);
    let decision: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decision["allowed"], false);
}

#[test]
fn eval_reports_bad_input_and_bad_plugins_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let settings = shipped_settings("namespace-validation");
    let out = tollgate(&["eval", guests::NAMESPACE_VALIDATION, bad.to_str().unwrap(), "--settings", &settings]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("request is not usable: not JSON"), "{}", text(&out.stderr));

    let out = tollgate(&["eval", guests::NAMESPACE_VALIDATION, &data("route-no-token.json"), "--settings", &settings]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("an admission plugin takes an AdmissionReview"), "{}", text(&out.stderr));

    let out = tollgate(&["eval", guests::OLD_CONTRACT, &data("route-no-token.json")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("built against tollgate:plugin@0.0.1"), "{}", text(&out.stderr));

    // An instance must serve at least its one call.
    let out = tollgate(&["serve", "--calls-per-instance", "0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--calls-per-instance"), "{}", text(&out.stderr));
}

#[test]
fn plugin_output_goes_to_the_log_under_the_plugin_name() {
    let dir = tempfile::tempdir().unwrap();
    copy(dir.path(), "chatty.wasm", guests::MISBEHAVE);
    std::fs::write(dir.path().join("chatty.settings.json"), r#"{"validate": "print"}"#).unwrap();
    let out = tollgate(&[
        "eval",
        dir.path().join("chatty.wasm").to_str().unwrap(),
        &data("namespace-delete-kube-system.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    let line = log.lines().find(|l| l.contains("hello from stdout")).expect("guest stdout logged");
    assert!(line.contains("plugin=\"misbehave\"") && line.contains("stream=\"stdout\""), "{line}");
    assert!(log.lines().any(|l| l.contains("hello from stderr") && l.contains("stream=\"stderr\"")), "{log}");
    // And it is not mixed into the answer on stdout.
    assert!(serde_json::from_slice::<Value>(&out.stdout).is_ok());
}

/// Starts `tollgate serve` and returns it once it logged `marker`, with the
/// log lines read so far.
fn serve_until(args: &[&str], marker: &str) -> (Child, Vec<String>) {
    let ca = std::env::temp_dir().join(format!("tollgate-cli-test-{}-ca.pem", std::process::id()));
    let mut child = Command::new(TOLLGATE)
        .arg("serve")
        .args(["--admission-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--gateway-addr", "127.0.0.1:0"])
        .arg("--no-cache")
        .arg("--ca-out")
        .arg(ca)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let done = line.contains(marker);
        lines.push(line);
        if done {
            return (child, lines);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tollgate serve never logged {marker:?}; log: {lines:#?}");
}

#[test]
fn serve_loads_a_directory_and_keeps_running_despite_bad_plugins() {
    let dir = tempfile::tempdir().unwrap();
    copy_with_settings(dir.path(), "namespace-validation", guests::NAMESPACE_VALIDATION, "namespace-validation");
    copy(dir.path(), "panics.wasm", guests::PANIC_IN_METADATA);
    let (mut child, lines) = serve_until(&["--plugins", dir.path().to_str().unwrap()], "plugins ready");
    let log = lines.join("\n");
    assert!(log.contains("serving") && log.contains("plugin=\"namespace-validation\""), "{log}");
    assert!(log.contains("panics.wasm") && log.contains("metadata is broken on purpose"), "{log}");
    assert!(log.contains("loaded=1 refused=1"), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "the host must keep running after refusing a plugin");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn serve_without_a_directory_serves_the_bundled_plugins() {
    let (mut child, lines) = serve_until(&[], "plugins ready");
    let log = lines.join("\n");
    let bundled = [
        "namespace-validation",
        "regular-user-validation",
        "pod-validation",
        "jwt-org-router",
        "email-allowlist",
        "cidr-allowlist",
        "catalog-allowlist",
    ];
    for name in bundled {
        assert!(log.contains(&format!("plugin=\"{name}\"")), "{name} not served: {log}");
    }
    assert!(log.contains("loaded=7 refused=0"), "{log}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What the README's steps produce: the build's file (cargo writes crate
/// `namespace-validation` as `namespace_validation.wasm`) and the settings
/// file shipped beside the crate, copied as they are into one directory.
#[test]
fn a_built_plugin_and_its_shipped_settings_line_up_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let built = Path::new(guests::NAMESPACE_VALIDATION);
    assert_eq!(built.file_name().unwrap(), "namespace_validation.wasm", "cargo's name for the artifact");
    copy(dir.path(), "namespace_validation.wasm", guests::NAMESPACE_VALIDATION);

    // Without its settings, the refusal names the settings files looked for.
    let out = tollgate(&["inspect", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("refused its settings: ") && stdout.contains("(no settings file; looked for"), "{stdout}");
    assert!(stdout.contains("namespace_validation.settings.json, namespace-validation.settings.json"), "{stdout}");

    std::fs::copy(shipped_settings("namespace-validation"), dir.path().join("namespace-validation.settings.json"))
        .unwrap();
    let out = tollgate(&["inspect", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("namespace-validation 0.1.0 (admission)"), "{stdout}");
    assert!(stdout.contains("namespace-validation.settings.json"), "the settings used are shown: {stdout}");
}

#[test]
fn eval_stops_a_guest_waiting_in_a_host_call_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("sleep.settings.json");
    std::fs::write(&settings, r#"{"validate": "sleep"}"#).unwrap();
    let review = dir.path().join("review.json");
    let body = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e1", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
        "resource": {"group": "", "version": "v1", "resource": "configmaps"},
        "namespace": "team-a", "operation": "CREATE", "userInfo": {"username": "alice"},
        "object": {"metadata": {"name": "c"}}}});
    std::fs::write(&review, body.to_string()).unwrap();
    let mut child = Command::new(TOLLGATE)
        .args(["eval", guests::MISBEHAVE, review.to_str().unwrap(), "--settings", settings.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate");
    // A hang guard, not a timing assertion: the guest sleeps 30 s, its
    // deadline is 800 ms.
    let give_up = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("query child").is_none() {
        if std::time::Instant::now() > give_up {
            let _ = child.kill();
            panic!("eval still running: the deadline did not stop the sleeping guest");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("ran past its deadline"), "{said}");
    // Answered as the server answers, by the failure policy, and exit 3.
    let review: Value = serde_json::from_slice(&out.stdout).expect("eval prints the review");
    assert_eq!(review["response"]["allowed"], false, "{review}");
    assert!(review["response"]["status"]["message"].as_str().unwrap().contains("denied by failurePolicy Fail"));
    assert_eq!(out.status.code(), Some(3), "{said}");
}

/// Runs tollgate with `args`, killing it (and failing) if it is still
/// running after `guard`: a hang guard, not a timing assertion.
fn tollgate_within(args: &[&str], guard: Duration) -> Output {
    let mut child = Command::new(TOLLGATE)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate");
    let give_up = std::time::Instant::now() + guard;
    while child.try_wait().expect("query child").is_none() {
        if std::time::Instant::now() > give_up {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("tollgate {args:?} still running after {guard:?}: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn inspect_and_eval_stop_a_configure_waiting_in_a_host_call_at_its_deadline() {
    // `configure` sleeps 30 s through WASI clocks while the configured
    // snapshot is taken; its load deadline is 1 s.
    let dir = tempfile::tempdir().unwrap();
    copy(dir.path(), "sleepy.wasm", guests::MISBEHAVE);
    let settings = dir.path().join("sleepy.settings.json");
    std::fs::write(&settings, r#"{"configure": "sleep"}"#).unwrap();
    copy_with_settings(dir.path(), "namespace-validation", guests::NAMESPACE_VALIDATION, "namespace-validation");
    let guard = Duration::from_secs(20);

    let out = tollgate_within(&["inspect", dir.path().to_str().unwrap()], guard);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "the sleeping plugin is refused: {stdout}");
    assert!(stdout.contains("sleepy.wasm: configure() ran past its deadline"), "{stdout}");
    assert!(stdout.contains("namespace-validation 0.1.0 (admission)"), "{stdout}");

    let plugin = dir.path().join("sleepy.wasm");
    let out = tollgate_within(&["eval", plugin.to_str().unwrap(), &data("namespace-delete-kube-system.json")], guard);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("configure() ran past its deadline"), "{}", text(&out.stderr));
}
