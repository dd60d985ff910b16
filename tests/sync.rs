//! `tollgate serve --sync-webhooks` against a fake Kubernetes API server at
//! the HTTP level ([`support::apiserver`]): the real binary, with a
//! kubeconfig pointing at a loopback server that keeps field ownership as
//! server-side apply does, watches, expires history, refuses tokens and can
//! be stopped. Plugins dropped, changed and deleted must be applied,
//! re-applied and removed; a 500 must be retried; what other tools create,
//! delete or edit must be brought back to what Tollgate serves; an outage
//! must not leave Tollgate waiting long once the API server is back; and
//! readiness must say when syncing never worked.
//!
//! Ordering is checked from the API server's side: whenever a configuration
//! is written, the fake calls every path it registers and every path it
//! drops on the running Tollgate, as the real API server might at that
//! instant; each call must be answered by a plugin, never 404.
//!
//! The first tests check the fake itself against what the API server
//! documents, so the end-to-end tests rest on a fake that is right.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::apiserver::{API_VERSION, ApiServer, TOKEN, managers, webhook_names as names};
use support::{Server, client, configmap_review, guests, install, install_reference};

const VALIDATING: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/tollgate";
const MUTATING: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/tollgate";
const VALIDATING_ALL: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";

/// Waits until `check` holds for the object at `path` (None = absent), for
/// at most `within`. Returns how long it took.
async fn until_within(
    api: &ApiServer,
    path: &str,
    what: &str,
    within: Duration,
    check: impl Fn(Option<&Value>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if check(api.object(path).as_ref()) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not so after {within:?}; {}", describe(api.object(path).as_ref()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `check` holds for the object at `path`, for at most 60 s.
async fn until(api: &ApiServer, path: &str, what: &str, check: impl Fn(Option<&Value>) -> bool) {
    until_within(api, path, what, Duration::from_secs(60), check).await;
}

/// A configuration object in a line: its webhooks (name and failure
/// policy) and who manages it.
fn describe(object: Option<&Value>) -> String {
    let Some(object) = object else { return "the object is absent".into() };
    let hooks: Vec<String> = object["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| format!("{} ({})", h["name"].as_str().unwrap_or("?"), h["failurePolicy"].as_str().unwrap_or("?")))
        .collect();
    format!("webhooks {hooks:?}, managers {:?}", managers(object))
}

fn webhook_names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{n}.tollgate.io")).collect()
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// `tollgate serve --sync-webhooks` of `plugins` against `api`.
fn serve_synced(api: &ApiServer, scratch: &Path, plugins: &Path) -> Server {
    let kubeconfig = api.kubeconfig(scratch);
    Server::start(plugins, &["--sync-webhooks", "--kubeconfig", &kubeconfig])
}

/// A webhook entry as another tool would write it.
fn foreign_hook(name: &str, path: &str, failure_policy: &str) -> Value {
    json!({
        "name": name,
        "clientConfig": {"service": {"name": "tollgate", "namespace": "tollgate", "path": path, "port": 443}},
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                   "resources": ["namespaces"], "scope": "*"}],
        "failurePolicy": failure_policy,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5
    })
}

/// The webhook entry called `name`.
fn entry<'a>(object: &'a Value, name: &str) -> &'a Value {
    let hooks = object["webhooks"].as_array().expect("webhooks");
    hooks.iter().find(|h| h["name"] == name).unwrap_or_else(|| panic!("no webhook {name}: {object:#}"))
}

fn validating(name: &str, hooks: Vec<Value>) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "ValidatingWebhookConfiguration", "metadata": {"name": name},
           "webhooks": hooks})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_api_server_follows_server_side_apply_ownership() {
    const SHARED: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/shared";
    let api = ApiServer::start().await;
    let hook = |name: &str, policy: &str| foreign_hook(&format!("{name}.example.com"), &format!("/{name}"), policy);
    let config = |hooks: Vec<Value>| validating("shared", hooks);
    let example = |names: &[&str]| names.iter().map(|n| format!("{n}.example.com")).collect::<Vec<_>>();

    // Apply creates the object, with system fields and defaults.
    let created = api.apply_as("a", config(vec![hook("x", "Fail"), hook("y", "Fail")]), false).unwrap();
    assert_eq!(managers(&created), [("a".to_string(), "Apply".to_string())]);
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["resourceVersion"], api.resource_version().to_string());
    assert!(created["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()), "{created:#}");
    assert_eq!(created["webhooks"][0]["matchPolicy"], "Equivalent", "defaulted");
    let fields = &created["metadata"]["managedFields"][0];
    assert_eq!(fields["fieldsType"], "FieldsV1");
    assert_eq!(fields["fieldsV1"]["f:webhooks"]["k:{\"name\":\"x.example.com\"}"]["f:failurePolicy"], json!({}));
    assert_eq!(fields["fieldsV1"]["f:webhooks"]["k:{\"name\":\"x.example.com\"}"]["."], json!({}));

    // b applies the same y and its own z: y is shared.
    api.apply_as("b", config(vec![hook("y", "Fail"), hook("z", "Fail")]), false).unwrap();
    // a stops applying y: b still owns it, so it stays.
    let after = api.apply_as("a", config(vec![hook("x", "Fail")]), false).unwrap();
    assert_eq!(names(Some(&after)), example(&["x", "y", "z"]));
    // b stops applying y: nobody owns it any more, so it goes.
    let after = api.apply_as("b", config(vec![hook("z", "Fail")]), false).unwrap();
    assert_eq!(names(Some(&after)), example(&["x", "z"]));

    // Changing a field another manager owns is a conflict...
    let takeover = config(vec![hook("z", "Fail"), hook("x", "Ignore")]);
    let refused = api.apply_as("b", takeover.clone(), false).unwrap_err();
    assert_eq!((refused.code, refused.reason()), (409, "Conflict"), "{:#}", refused.status);
    assert_eq!(refused.status["details"]["causes"][0]["reason"], "FieldManagerConflict");
    assert_eq!(refused.status["details"]["causes"][0]["field"], ".webhooks[name=\"x.example.com\"].failurePolicy");
    assert!(
        refused.status["message"].as_str().unwrap().starts_with("Apply failed with 1 conflict: conflict with \"a\""),
        "{:#}",
        refused.status
    );
    // ...that force settles: b takes the field, a keeps the rest of x.
    let forced = api.apply_as("b", takeover.clone(), true).unwrap();
    assert_eq!(entry(&forced, "x.example.com")["failurePolicy"], "Ignore");
    // Entries come in the order of the config that names them.
    assert_eq!(names(Some(&forced)), example(&["z", "x"]));
    let owned_by = |object: &Value, manager: &str| {
        let entry = object["metadata"]["managedFields"].as_array().unwrap().iter().find(|e| e["manager"] == manager);
        entry.map(|e| e["fieldsV1"]["f:webhooks"]["k:{\"name\":\"x.example.com\"}"].clone()).unwrap_or_default()
    };
    assert!(owned_by(&forced, "a").get("f:failurePolicy").is_none(), "{:#}", forced["metadata"]);
    assert!(owned_by(&forced, "a").get("f:timeoutSeconds").is_some(), "{:#}", forced["metadata"]);

    // The same apply again changes nothing: same resourceVersion.
    let rv = api.resource_version();
    let again = api.apply_as("b", takeover, true).unwrap();
    assert_eq!(api.resource_version(), rv);
    assert_eq!(again["metadata"]["resourceVersion"], rv.to_string());

    // An update (kubectl edit) never conflicts and takes what it changes.
    let edited = api.edit_as("c", SHARED, |o| o["webhooks"][1]["timeoutSeconds"] = json!(7)).unwrap();
    assert_eq!(entry(&edited, "x.example.com")["timeoutSeconds"], 7);
    assert!(managers(&edited).contains(&("c".into(), "Update".into())), "{:#}", edited["metadata"]);
    assert!(owned_by(&edited, "a").get("f:timeoutSeconds").is_none(), "{:#}", edited["metadata"]);
    assert_eq!(edited["metadata"]["generation"], 5, "one more generation per webhook change");
    let refused = api.apply_as("a", config(vec![hook("x", "Fail")]), false).unwrap_err();
    assert!(
        refused.status["message"].as_str().unwrap().starts_with("Apply failed with 2 conflicts"),
        "{:#}",
        refused.status
    );

    // Errors carry the API server's reasons.
    let exists = api.create_as("kubectl-create", config(vec![hook("w", "Fail")])).unwrap_err();
    assert_eq!((exists.code, exists.reason()), (409, "AlreadyExists"));
    let invalid = api.apply_as("a", config(vec![json!({"name": "v.example.com"})]), true).unwrap_err();
    assert_eq!((invalid.code, invalid.reason()), (422, "Invalid"), "{:#}", invalid.status);
    assert_eq!(invalid.status["details"]["causes"][0]["field"], "webhooks[2].sideEffects");
    let deleted = api.delete(SHARED).unwrap();
    assert_eq!(deleted["status"], "Success");
    assert_eq!(api.delete(SHARED).unwrap_err().reason(), "NotFound");
}

/// The next watch event of a streaming response, within 10 s.
async fn next_event(response: &mut reqwest::Response, buffer: &mut Vec<u8>) -> Option<Value> {
    loop {
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            return Some(serde_json::from_slice(&line).expect("a JSON watch event"));
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.expect("a watch event");
        buffer.extend_from_slice(&chunk.ok()??);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_api_server_lists_watches_and_refuses_like_kube_apiserver() {
    let api = ApiServer::start().await;
    let http = support::plain();
    let base = format!("http://{}", api.addr());
    let collection = format!("{base}{VALIDATING_ALL}");
    let object = format!("{base}{VALIDATING}");

    // A token the server does not know: 401, with exactly its body.
    let refused = http.get(&collection).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.text().await.unwrap(),
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
    );
    // No token: the anonymous user, whom RBAC refuses.
    let anonymous: Value = http.get(&object).send().await.unwrap().json().await.unwrap();
    assert_eq!((anonymous["code"].as_u64(), anonymous["reason"].as_str()), (Some(403), Some("Forbidden")));

    // Create with POST (201), again (409 AlreadyExists).
    let config = validating("tollgate", vec![foreign_hook("a.tollgate.io", "/validate/a", "Fail")]);
    let post =
        || http.post(format!("{collection}?fieldManager=kubectl-client-side-apply")).bearer_auth(TOKEN).json(&config);
    assert_eq!(post().send().await.unwrap().status(), 201);
    let again = post().send().await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.json::<Value>().await.unwrap()["reason"], "AlreadyExists");

    // LIST as kube-runtime's watcher does, then WATCH from its version.
    let list: Value = http
        .get(format!("{collection}?fieldSelector=metadata.name%3Dtollgate&limit=500"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["kind"], "ValidatingWebhookConfigurationList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list:#}");
    let listed_at = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let mut watch = http
        .get(format!(
            "{collection}?watch=true&timeoutSeconds=30&fieldSelector=metadata.name%3Dtollgate\
             &allowWatchBookmarks=true&resourceVersion={listed_at}"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let mut buffer = Vec::new();
    api.edit_as("kubectl-edit", VALIDATING, |o| o["webhooks"][0]["timeoutSeconds"] = json!(9)).unwrap();
    let event = next_event(&mut watch, &mut buffer).await.expect("an event");
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(event["object"]["metadata"]["resourceVersion"], api.resource_version().to_string());

    // A JSON patch whose test fails: 422 Invalid, nothing changed.
    let rv = api.resource_version();
    let patch = json!([{"op": "test", "path": "/webhooks/0/name", "value": "b.tollgate.io"},
                       {"op": "remove", "path": "/webhooks/0"}]);
    let failed = http
        .patch(&object)
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 422);
    let failed: Value = failed.json().await.unwrap();
    assert_eq!(failed["reason"], "Invalid");
    assert_eq!(failed["message"], "the server rejected our request due to an error in our request");
    assert_eq!(api.resource_version(), rv);

    // History compacted: a watch from before gets an ERROR event, 410.
    api.compact();
    let mut stale =
        http.get(format!("{collection}?watch=1&resourceVersion={listed_at}")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    let error = next_event(&mut stale, &mut Vec::new()).await.expect("an ERROR event");
    assert_eq!(error["type"], "ERROR");
    assert_eq!((error["object"]["code"].as_u64(), error["object"]["reason"].as_str()), (Some(410), Some("Expired")));

    // An outage closes open watches; the objects outlive it.
    api.stop().await;
    assert!(next_event(&mut watch, &mut buffer).await.is_none(), "the watch ends with the server");
    assert!(http.get(&object).bearer_auth(TOKEN).send().await.is_err(), "nobody listens");
    api.restart().await;
    let kept: Value = http.get(&object).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(names(Some(&kept)), ["a.tollgate.io"]);

    let deleted = http.delete(&object).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let gone = http.delete(&object).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(gone.json::<Value>().await.unwrap()["reason"], "NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_added_changed_and_removed_are_applied_in_order() {
    let api = ApiServer::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let server = serve_synced(&api, scratch.path(), plugins.path());
    api.probe(&server);

    // Start-up: the one admission plugin is registered, no mutating config.
    until(&api, VALIDATING, "namespace-validation registered", |o| {
        names(o) == webhook_names(&["namespace-validation"])
    })
    .await;
    let registered = api.object(VALIDATING).unwrap();
    assert_eq!(registered["kind"], "ValidatingWebhookConfiguration");
    assert_eq!(registered["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tollgate");
    // Without --ca-bundle, the caBundle registered is the CA the listener
    // serves under (the generated one, kept in the state directory).
    use base64::Engine as _;
    let ca_bundle = registered["webhooks"][0]["clientConfig"]["caBundle"].as_str().expect("a caBundle");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(ca_bundle).unwrap(), server.ca());
    let seen = api.seen();
    let apply = seen.iter().find(|s| s.method == "PATCH").expect("an apply");
    assert!(apply.target.contains("fieldManager=tollgate") && apply.target.contains("force=true"), "{apply:?}");
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    // The mutating configuration, with no plugin, is deleted (right after).
    let give_up = Instant::now() + Duration::from_secs(30);
    while !api.seen().iter().any(|s| s.method == "DELETE" && s.target.starts_with(MUTATING)) {
        assert!(Instant::now() < give_up, "no DELETE of the mutating configuration: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Added: a second validating plugin and a mutating one.
    install_reference(plugins.path(), "pod-validation", guests::POD_VALIDATION);
    install(plugins.path(), "add-label", guests::ADD_LABEL, None);
    until(&api, VALIDATING, "pod-validation registered", |o| {
        names(o) == webhook_names(&["namespace-validation", "pod-validation"])
    })
    .await;
    until(&api, MUTATING, "add-label registered", |o| names(o) == webhook_names(&["add-label"])).await;
    assert_eq!(api.object(MUTATING).unwrap()["webhooks"][0]["failurePolicy"], "Ignore");

    // Changed: a new version of add-label with other metadata is re-applied.
    install(plugins.path(), "add-label", guests::ADD_LABEL_V2, None);
    until(&api, MUTATING, "add-label v2 re-applied", |o| {
        o.is_some_and(|o| o["webhooks"][0]["failurePolicy"] == "Fail" && o["webhooks"][0]["timeoutSeconds"] == 5)
    })
    .await;

    // Removed: pod-validation leaves the configuration; the mutating
    // configuration is deleted with its last plugin.
    std::fs::remove_file(plugins.path().join("pod-validation.wasm")).unwrap();
    std::fs::remove_file(plugins.path().join("add-label.wasm")).unwrap();
    until(&api, VALIDATING, "pod-validation unregistered", |o| names(o) == webhook_names(&["namespace-validation"]))
        .await;
    until(&api, MUTATING, "mutating configuration deleted", |o| o.is_none()).await;

    // Every path the API server could call while a configuration changed
    // was answered by a plugin.
    let probes = api.probes();
    assert!(probes.iter().any(|(p, _)| p == "/validate/pod-validation"), "{probes:?}");
    assert!(probes.iter().any(|(p, _)| p == "/mutate/add-label"), "{probes:?}");
    for (path, code) in &probes {
        assert_eq!(*code, 200, "{path} answered {code} while registered: {probes:?}");
    }
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("tollgate_webhook_syncs_total{result=\"applied\"}"), "{metrics}");
}

/// A file that now declares another name (a new version renamed, or a
/// different plugin copied over it): the old name is unregistered while it
/// still serves, and the new one registered once it serves, as for a
/// removed file and an added one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_renamed_in_its_file_is_unregistered_before_it_stops_serving() {
    let api = ApiServer::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    let echo = Some(r#"{"validate": "echo"}"#);
    install(plugins.path(), "x", guests::MISBEHAVE, echo);
    let server = serve_synced(&api, scratch.path(), plugins.path());
    api.probe(&server);
    until(&api, VALIDATING, "misbehave registered", |o| names(o) == webhook_names(&["misbehave"])).await;

    // Written beside, then renamed over it: the rescan sees the whole file.
    install(plugins.path(), "next", guests::MISBEHAVE_IGNORE, None);
    std::fs::rename(plugins.path().join("next.wasm"), plugins.path().join("x.wasm")).unwrap();
    until(&api, VALIDATING, "misbehave-ignore registered in its place", |o| {
        names(o) == webhook_names(&["misbehave-ignore"])
    })
    .await;

    // The fake stores a write before it calls the paths: wait for the calls
    // (the old path: once when registered, once when dropped).
    let give_up = Instant::now() + Duration::from_secs(30);
    let probed = |path: &str| api.probes().iter().filter(|(p, _)| p == path).count();
    while probed("/validate/misbehave") < 2 || probed("/validate/misbehave-ignore") < 1 {
        assert!(
            Instant::now() < give_up,
            "the old path was not dropped, or the new one not called: {:?}",
            api.probes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probes = api.probes();
    for (path, code) in &probes {
        assert_eq!(*code, 200, "{path} answered {code} while registered: {probes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_api_server_is_retried_and_never_stops_the_host() {
    let api = ApiServer::start().await;
    api.fail_patches(3);
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let mut server = serve_synced(&api, scratch.path(), plugins.path());

    // Serving does not wait for the API server.
    let http = client(&server.ca(), None);
    let answer =
        support::post_review(&http, &server.url("/validate/namespace-validation"), &configmap_review("u")).await;
    assert_eq!(answer["response"]["uid"], "u");

    until(&api, VALIDATING, "applied after the failures", |o| o.is_some()).await;
    let patches = api.seen().iter().filter(|s| s.method == "PATCH").count();
    assert_eq!(patches, 4, "three failures, then success");
    assert!(server.is_running());
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("tollgate_webhook_syncs_total{result=\"failed\"} 3"), "{metrics}");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("cannot apply webhook configurations; retrying"), "{log}");
}

#[test]
fn a_bad_kubeconfig_stops_the_start_with_its_reason() {
    let plugins = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::TOLLGATE)
        .args(["serve", "--plugins", plugins.path().to_str().unwrap(), "--admission-addr", "127.0.0.1:0"])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--no-gateway",
            "--sync-webhooks",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
}

/// Tollgate's configuration is Tollgate's: entries another tool put there
/// (kubectl's client-side apply, before Tollgate ran) are not kept because
/// server-side apply leaves alone what other managers own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_removes_webhooks_another_tool_created() {
    let api = ApiServer::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    install_reference(plugins.path(), "pod-validation", guests::POD_VALIDATION);

    // What `kubectl apply -f` of a hand-written configuration leaves: four
    // webhooks owned by kubectl-client-side-apply, two under names Tollgate
    // uses (one with a field Tollgate never sets), two stale.
    let mut pods = foreign_hook("pod-validation.tollgate.io", "/validate/pod-validation", "Ignore");
    pods["matchConditions"] = json!([{"name": "not-kube-system", "expression": "request.namespace != 'kube-system'"}]);
    let mut config = validating(
        "tollgate",
        vec![
            foreign_hook("namespace-validation.tollgate.io", "/validate/namespace-validation", "Ignore"),
            pods,
            foreign_hook("legacy-namespace.tollgate.io", "/validate/legacy-namespace", "Fail"),
            foreign_hook("old-pods.tollgate.io", "/validate/old-pods", "Ignore"),
        ],
    );
    let last_applied = config.to_string();
    config["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "kubectl"});
    config["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": last_applied});
    let created = api.create_as("kubectl-client-side-apply", config).expect("kubectl creates the configuration");
    assert_eq!(names(Some(&created)).len(), 4);

    let _server = serve_synced(&api, scratch.path(), plugins.path());
    let ours = sorted(webhook_names(&["namespace-validation", "pod-validation"]));
    until_within(
        &api,
        VALIDATING,
        "Tollgate's configuration holds exactly Tollgate's webhooks",
        Duration::from_secs(20),
        |o| sorted(names(o)) == ours,
    )
    .await;
    let synced = api.object(VALIDATING).unwrap();
    assert_eq!(synced["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tollgate");
    // Nor does Tollgate's own entry keep what kubectl set on it: its
    // matchConditions would keep kube-system from the plugin.
    let until_clean = |o: Option<&Value>| {
        o.and_then(|o| o["webhooks"].as_array())
            .is_some_and(|hooks| hooks.iter().all(|h| h.get("matchConditions").is_none()))
    };
    until_within(&api, VALIDATING, "no matchConditions another tool set", Duration::from_secs(20), until_clean).await;
}

/// Someone deletes or edits Tollgate's configuration: it is restored at
/// once, not at the next plugin change (or the 30 s rescan, which only
/// notices plugin files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_configuration_is_restored() {
    let api = ApiServer::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let _server = serve_synced(&api, scratch.path(), plugins.path());
    let ours = webhook_names(&["namespace-validation"]);
    until(&api, VALIDATING, "namespace-validation registered", |o| names(o) == ours).await;
    let registered = api.object(VALIDATING).unwrap();

    // Deleted by another client.
    api.delete(VALIDATING).expect("another client deletes the configuration");
    let took = until_within(&api, VALIDATING, "the deleted configuration is restored", Duration::from_secs(10), |o| {
        o.is_some_and(|o| o["webhooks"] == registered["webhooks"])
    })
    .await;
    eprintln!("restored {took:?} after the deletion");

    // Edited by another manager (kubectl edit): the failure policy of
    // Tollgate's entry changed.
    let policy = registered["webhooks"][0]["failurePolicy"].as_str().unwrap().to_string();
    let other = if policy == "Fail" { "Ignore" } else { "Fail" };
    let edited = api
        .edit_as("kubectl-edit", VALIDATING, |o| o["webhooks"][0]["failurePolicy"] = json!(other))
        .expect("another manager edits the configuration");
    assert!(managers(&edited).contains(&("kubectl-edit".into(), "Update".into())), "{}", describe(Some(&edited)));
    until_within(&api, VALIDATING, "the edited failurePolicy is restored", Duration::from_secs(10), |o| {
        o.is_some_and(|o| o["webhooks"][0]["failurePolicy"] == policy.as_str())
    })
    .await;
}

/// While the API server is down, syncing backs off; once it is back,
/// Tollgate must converge within seconds, not at the next retry of a
/// backoff that grew during the outage (0.5 s doubling to 30 s would next
/// try about 15 s after the return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_converges_within_seconds_after_an_api_server_outage() {
    let api = ApiServer::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    install_reference(plugins.path(), "pod-validation", guests::POD_VALIDATION);
    let server = serve_synced(&api, scratch.path(), plugins.path());
    until(&api, VALIDATING, "both plugins registered", |o| {
        names(o) == webhook_names(&["namespace-validation", "pod-validation"])
    })
    .await;

    api.stop().await;
    std::fs::remove_file(plugins.path().join("pod-validation.wasm")).unwrap();
    tokio::time::sleep(Duration::from_secs(16)).await;
    // Admission never depended on the API server.
    let http = client(&server.ca(), None);
    let answer =
        support::post_review(&http, &server.url("/validate/namespace-validation"), &configmap_review("o")).await;
    assert_eq!(answer["response"]["uid"], "o");

    api.restart().await;
    let took = until_within(
        &api,
        VALIDATING,
        "pod-validation unregistered once the API server is back",
        Duration::from_secs(6),
        |o| names(o) == webhook_names(&["namespace-validation"]),
    )
    .await;
    eprintln!("converged {took:?} after the API server came back");
}

/// `GET <url>`: (status, body).
async fn get_text(url: &str) -> (u16, String) {
    let response = support::plain().get(url).send().await.expect("metrics listener reachable");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// A sync that never worked (the API server refuses Tollgate's token) must
/// show in readiness and metrics, while admission keeps serving; it clears
/// once the API server accepts the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_sync_that_never_succeeded() {
    let api = ApiServer::start().await;
    api.set_token("a-token-tollgate-does-not-have");
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let server = serve_synced(&api, scratch.path(), plugins.path());

    let http = client(&server.ca(), None);
    let answer =
        support::post_review(&http, &server.url("/validate/namespace-validation"), &configmap_review("r")).await;
    assert_eq!(answer["response"]["uid"], "r");

    let readyz = format!("http://{}/readyz", server.metrics);
    let give_up = Instant::now() + Duration::from_secs(20);
    let (mut code, mut body) = get_text(&readyz).await;
    while code != 503 {
        assert!(
            Instant::now() < give_up,
            "/readyz answered {code} {body:?} for 20 s while the API server refused every sync with 401 \
             (requests: {:?})",
            api.seen().iter().map(|s| (s.method.clone(), s.status)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        (code, body) = get_text(&readyz).await;
    }
    assert!(api.seen().iter().all(|s| s.status == 401 || s.status == 0), "the fake refused every request");
    let lower = body.to_lowercase();
    assert!(lower.contains("webhook") && lower.contains("sync"), "/readyz does not name the webhook sync: {body:?}");
    assert!(body.contains("Unauthorized"), "/readyz does not say why: {body:?}");

    // Verbose, as Kubernetes components list their checks: one line each,
    // [+] passing, [-] failing.
    let (code, verbose) = get_text(&format!("{readyz}?verbose")).await;
    assert_eq!(code, 503, "{verbose}");
    let checks: Vec<&str> = verbose.lines().filter(|l| l.starts_with("[+]") || l.starts_with("[-]")).collect();
    assert!(checks.len() >= 2, "/readyz?verbose lists no checks: {verbose:?}");
    assert!(checks.iter().any(|l| l.starts_with("[+]")), "plugins are loaded, so a check passes: {verbose:?}");
    assert!(checks.iter().any(|l| l.starts_with("[-]") && l.contains("sync")), "the sync check fails: {verbose:?}");

    let metrics = server.metrics_text().await;
    assert!(metrics.contains("# TYPE tollgate_webhook_sync_healthy gauge"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "tollgate_webhook_sync_healthy 0"), "{metrics}");

    // The API server accepts the token now.
    api.set_token(TOKEN);
    until(&api, VALIDATING, "registered once the token is accepted", |o| {
        names(o) == webhook_names(&["namespace-validation"])
    })
    .await;
    let give_up = Instant::now() + Duration::from_secs(30);
    let (mut code, mut body) = get_text(&readyz).await;
    while code != 200 {
        assert!(Instant::now() < give_up, "/readyz still answers {code} {body:?} after a successful sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
        (code, body) = get_text(&readyz).await;
    }
    let metrics = server.metrics_text().await;
    assert!(metrics.lines().any(|l| l == "tollgate_webhook_sync_healthy 1"), "{metrics}");
}

/// Combinations under which the API server could not trust the listener are
/// refused at start, with the reason, before anything is registered.
#[test]
fn a_webhook_ca_that_cannot_vouch_for_the_listener_is_refused_at_start() {
    let plugins = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (other_ca, cert, key) = support::server_identity("localhost");
    let (unrelated_ca, _, _) = support::server_identity("localhost");
    let file = |name: &str, text: &str| {
        let path = scratch.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (cert, key, unrelated) = (file("tls.crt", &cert), file("tls.key", &key), file("unrelated.pem", &unrelated_ca));
    let signer = file("ca.pem", &other_ca);
    let state = scratch.path().join("state");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--inject-ca", "service-ca"], "--inject-ca cannot vouch for a certificate Tollgate generated"),
        (vec!["--ca-bundle", &unrelated], "--ca-bundle does not hold the CA that signed the serving certificate"),
        (vec!["--tls-cert", &cert, "--tls-key", &key], "no system root signed --tls-cert"),
        (vec!["--tls-cert", &cert, "--tls-key", &key, "--ca-bundle", &unrelated], "--ca-bundle does not hold the CA"),
    ];
    for (args, reason) in cases {
        let out = std::process::Command::new(support::TOLLGATE)
            .args(["serve", "--plugins", plugins.path().to_str().unwrap(), "--no-gateway"])
            .args(["--admission-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(["--sync-webhooks", "--kubeconfig", "/nonexistent/kubeconfig"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    // The CA that signed --tls-cert passes; the start then stops only at the
    // (missing) kubeconfig.
    let out = std::process::Command::new(support::TOLLGATE)
        .args(["serve", "--plugins", plugins.path().to_str().unwrap(), "--no-gateway"])
        .args(["--admission-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(["--tls-cert", &cert, "--tls-key", &key, "--ca-bundle", &signer])
        .args(["--sync-webhooks", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/kubeconfig") && !stderr.contains("--ca-bundle"), "{stderr}");
}

/// `--ca-bundle` naming the generated CA's own file works from a fresh state
/// directory, where that file does not exist yet, and registers that CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_bundle_naming_the_generated_ca_works_on_a_fresh_state_directory() {
    let api = ApiServer::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let state = scratch.path().join("state");
    let ca = state.join("ca.crt");
    assert!(!ca.exists());
    let kubeconfig = api.kubeconfig(scratch.path());
    let (state, ca) = (state.to_str().unwrap(), ca.to_str().unwrap());
    let server = Server::start(
        plugins.path(),
        &["--state-dir", state, "--ca-bundle", ca, "--sync-webhooks", "--kubeconfig", &kubeconfig],
    );
    until(&api, VALIDATING, "namespace-validation registered", |o| o.is_some()).await;
    use base64::Engine as _;
    let registered = api.object(VALIDATING).unwrap();
    let bundle = registered["webhooks"][0]["clientConfig"]["caBundle"].as_str().expect("a caBundle");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(bundle).unwrap(), std::fs::read(ca).unwrap());
    assert_eq!(std::fs::read(ca).unwrap(), server.ca());
}
