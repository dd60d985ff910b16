//! `tollgate serve --sync-webhooks` against a fake Kubernetes API server at
//! the HTTP level: the real binary, with a kubeconfig pointing at a loopback
//! server that stores what is applied, answers like the API server, and can
//! be told to fail. Plugins dropped, changed and deleted must be applied,
//! re-applied and removed; a 500 must be retried.
//!
//! Ordering is checked from the API server's side: whenever a configuration
//! is applied, the fake calls every path it registers and every path it
//! drops on the running Tollgate, as the real API server might at that
//! instant; each call must be answered by a plugin, never 404.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{Server, client, configmap_review, guests, install, install_reference};

const VALIDATING: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/tollgate";
const MUTATING: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/tollgate";

/// One request the fake API server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    target: String,
    content_type: String,
}

/// Tollgate as the fake API server calls it when a configuration changes.
struct Probe {
    http: reqwest::Client,
    base: String,
}

#[derive(Default)]
struct Fake {
    objects: Mutex<BTreeMap<String, Value>>,
    seen: Mutex<Vec<Seen>>,
    /// Answer this many PATCHes with 500 before accepting.
    fail_patches: Mutex<usize>,
    probe: Mutex<Option<Arc<Probe>>>,
    /// (path, HTTP status) of every probe call.
    probes: Mutex<Vec<(String, u16)>>,
}

fn status(code: u16, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": if code < 300 {"Success"} else {"Failure"},
           "message": message, "code": code})
}

/// Paths of the webhooks in a configuration object.
fn paths(object: Option<&Value>) -> Vec<String> {
    let hooks = object.and_then(|o| o["webhooks"].as_array()).cloned().unwrap_or_default();
    hooks.iter().filter_map(|h| h["clientConfig"]["service"]["path"].as_str().map(str::to_string)).collect()
}

fn names(object: Option<&Value>) -> Vec<String> {
    let hooks = object.and_then(|o| o["webhooks"].as_array()).cloned().unwrap_or_default();
    hooks.iter().filter_map(|h| h["name"].as_str().map(str::to_string)).collect()
}

impl Fake {
    async fn handle(self: Arc<Self>, req: hyper::Request<hyper::body::Incoming>) -> (u16, Value) {
        let method = req.method().to_string();
        let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        let path = req.uri().path().to_string();
        let content_type =
            req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        self.seen.lock().unwrap().push(Seen { method: method.clone(), target, content_type });
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        match method.as_str() {
            "PATCH" => {
                {
                    let mut fail = self.fail_patches.lock().unwrap();
                    if *fail > 0 {
                        *fail -= 1;
                        return (500, status(500, "etcd is having a bad day"));
                    }
                }
                let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                    return (400, status(400, "not JSON"));
                };
                let previous = self.objects.lock().unwrap().insert(path, object.clone());
                self.call_tollgate(paths(Some(&object)).into_iter().chain(paths(previous.as_ref()))).await;
                (200, object)
            }
            "DELETE" => match self.objects.lock().unwrap().remove(&path) {
                Some(_) => (200, status(200, "deleted")),
                None => (404, status(404, "not found")),
            },
            "GET" => match self.objects.lock().unwrap().get(&path) {
                Some(object) => (200, object.clone()),
                None => (404, status(404, "not found")),
            },
            _ => (405, status(405, "method not allowed")),
        }
    }

    /// Calls each admission path on Tollgate, as the API server could now.
    async fn call_tollgate(&self, paths: impl Iterator<Item = String>) {
        let Some(probe) = self.probe.lock().unwrap().clone() else { return };
        for path in paths {
            let response =
                probe.http.post(format!("{}{path}", probe.base)).json(&configmap_review("probe")).send().await;
            let code = response.map(|r| r.status().as_u16()).unwrap_or(0);
            self.probes.lock().unwrap().push((path, code));
        }
    }

    fn object(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }
}

/// Starts the fake API server on a loopback port.
async fn start_fake() -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = fake.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let fake = server.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let fake = fake.clone();
                    async move {
                        let (code, body) = fake.handle(req).await;
                        let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                        *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
                        response
                            .headers_mut()
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (fake, addr)
}

fn kubeconfig(dir: &Path, api: SocketAddr) -> String {
    let file = dir.join("kubeconfig");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
             users:\n- name: tollgate\n  user:\n    token: test-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tollgate\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
    file.to_str().unwrap().to_string()
}

/// Waits until `check` holds for the object at `path` (None = absent).
async fn until(fake: &Fake, path: &str, what: &str, check: impl Fn(Option<&Value>) -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if check(fake.object(path).as_ref()) {
            return;
        }
        assert!(Instant::now() < give_up, "timed out waiting for {what}: {:#?}", fake.object(path));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn webhook_names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{n}.tollgate.io")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_added_changed_and_removed_are_applied_in_order() {
    let (fake, api) = start_fake().await;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let kubeconfig = kubeconfig(scratch.path(), api);
    let server = Server::start(plugins.path(), &["--sync-webhooks", "--kubeconfig", &kubeconfig]);
    *fake.probe.lock().unwrap() = Some(Arc::new(Probe {
        http: client(&server.ca(), None),
        base: format!("https://localhost:{}", server.admission.port()),
    }));

    // Start-up: the one admission plugin is registered, no mutating config.
    until(&fake, VALIDATING, "namespace-validation registered", |o| {
        names(o) == webhook_names(&["namespace-validation"])
    })
    .await;
    let registered = fake.object(VALIDATING).unwrap();
    assert_eq!(registered["kind"], "ValidatingWebhookConfiguration");
    assert_eq!(registered["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tollgate");
    let seen = fake.seen.lock().unwrap().clone();
    let apply = seen.iter().find(|s| s.method == "PATCH").expect("an apply");
    assert!(apply.target.contains("fieldManager=tollgate") && apply.target.contains("force=true"), "{apply:?}");
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    // The mutating configuration, with no plugin, is deleted (right after).
    let give_up = Instant::now() + Duration::from_secs(30);
    while !fake.seen.lock().unwrap().iter().any(|s| s.method == "DELETE" && s.target.starts_with(MUTATING)) {
        assert!(Instant::now() < give_up, "no DELETE of the mutating configuration: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Added: a second validating plugin and a mutating one.
    install_reference(plugins.path(), "pod-validation", guests::POD_VALIDATION);
    install(plugins.path(), "add-label", guests::ADD_LABEL, None);
    until(&fake, VALIDATING, "pod-validation registered", |o| {
        names(o) == webhook_names(&["namespace-validation", "pod-validation"])
    })
    .await;
    until(&fake, MUTATING, "add-label registered", |o| names(o) == webhook_names(&["add-label"])).await;
    assert_eq!(fake.object(MUTATING).unwrap()["webhooks"][0]["failurePolicy"], "Ignore");

    // Changed: a new version of add-label with other metadata is re-applied.
    install(plugins.path(), "add-label", guests::ADD_LABEL_V2, None);
    until(&fake, MUTATING, "add-label v2 re-applied", |o| {
        o.is_some_and(|o| o["webhooks"][0]["failurePolicy"] == "Fail" && o["webhooks"][0]["timeoutSeconds"] == 5)
    })
    .await;

    // Removed: pod-validation leaves the configuration; the mutating
    // configuration is deleted with its last plugin.
    std::fs::remove_file(plugins.path().join("pod-validation.wasm")).unwrap();
    std::fs::remove_file(plugins.path().join("add-label.wasm")).unwrap();
    until(&fake, VALIDATING, "pod-validation unregistered", |o| names(o) == webhook_names(&["namespace-validation"]))
        .await;
    until(&fake, MUTATING, "mutating configuration deleted", |o| o.is_none()).await;

    // Every path the API server could call while a configuration changed
    // was answered by a plugin.
    let probes = fake.probes.lock().unwrap().clone();
    assert!(probes.iter().any(|(p, _)| p == "/validate/pod-validation"), "{probes:?}");
    assert!(probes.iter().any(|(p, _)| p == "/mutate/add-label"), "{probes:?}");
    for (path, code) in &probes {
        assert_eq!(*code, 200, "{path} answered {code} while registered: {probes:?}");
    }
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("tollgate_webhook_syncs_total{result=\"applied\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_api_server_is_retried_and_never_stops_the_host() {
    let (fake, api) = start_fake().await;
    *fake.fail_patches.lock().unwrap() = 3;
    let scratch = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    install_reference(plugins.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let kubeconfig = kubeconfig(scratch.path(), api);
    let mut server = Server::start(plugins.path(), &["--sync-webhooks", "--kubeconfig", &kubeconfig]);

    // Serving does not wait for the API server.
    let http = client(&server.ca(), None);
    let answer =
        support::post_review(&http, &server.url("/validate/namespace-validation"), &configmap_review("u")).await;
    assert_eq!(answer["response"]["uid"], "u");

    until(&fake, VALIDATING, "applied after the failures", |o| o.is_some()).await;
    let patches = fake.seen.lock().unwrap().iter().filter(|s| s.method == "PATCH").count();
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
