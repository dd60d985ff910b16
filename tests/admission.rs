//! The admission webhook end to end: the real binary, real TLS, real
//! compiled plugins, AdmissionReviews as the API server sends them.
//!
//! The rule tables follow `../shared/reference/openshift-webhooks.md`: each
//! row is one request and the decision the reference expects.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{Server, client, client_identity, guests, install, install_reference, logged, plain, post_review};

/// An AdmissionReview as the API server sends it.
#[derive(Clone)]
struct Review {
    group: &'static str,
    kind: &'static str,
    resource: &'static str,
    operation: &'static str,
    username: String,
    groups: Vec<String>,
    name: String,
    namespace: Option<String>,
    object: Value,
    old_object: Value,
    dry_run: bool,
}

impl Review {
    fn new(group: &'static str, kind: &'static str, resource: &'static str, operation: &'static str) -> Self {
        Self {
            group,
            kind,
            resource,
            operation,
            username: "alice".into(),
            groups: vec!["system:authenticated".into()],
            name: String::new(),
            namespace: None,
            object: Value::Null,
            old_object: Value::Null,
            dry_run: false,
        }
    }

    fn by(mut self, user: &str, groups: &[&str]) -> Self {
        self.username = user.into();
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    fn object(mut self, object: Value) -> Self {
        self.object = object;
        self
    }

    fn old(mut self, object: Value) -> Self {
        self.old_object = object;
        self
    }

    fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    fn json(&self, uid: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": self.group, "version": "v1", "kind": self.kind},
                "resource": {"group": self.group, "version": "v1", "resource": self.resource},
                "name": self.name,
                "namespace": self.namespace,
                "operation": self.operation,
                "userInfo": {"username": self.username, "groups": self.groups},
                "object": self.object,
                "oldObject": self.old_object,
                "dryRun": self.dry_run
            }
        })
    }
}

fn namespace_object(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn namespace(op: &'static str, name: &str) -> Review {
    let object = namespace_object(name, json!({}));
    let review = Review::new("", "Namespace", "namespaces", op).named(name);
    match op {
        "CREATE" => review.object(object),
        "DELETE" => review.old(object),
        _ => review.object(object.clone()).old(object),
    }
}

const SRE: &str = "system:serviceaccounts:openshift-backplane-srep";
const CEE: &str = "system:serviceaccounts:openshift-backplane-cee";
const EXEMPT_LABEL: &str = "managed.openshift.io/storage-pv-quota-exempt";

/// What a row expects.
enum Expect {
    Allow,
    Deny(u16),
}
use Expect::{Allow, Deny};

/// Sends every row to `path` and checks uid, decision and code. Reports all
/// failing rows at once.
async fn check_table(server: &Server, path: &str, rows: Vec<(&str, Review, Expect)>) {
    let http = client(&server.ca(), None);
    let mut failures = Vec::new();
    for (i, (what, review, expect)) in rows.iter().enumerate() {
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let response = http.post(server.url(path)).json(&review.json(&uid)).send().await.expect("request sent");
        assert_eq!(response.status(), 200, "{what}: HTTP status");
        let body: Value = response.json().await.expect("JSON answer");
        let answer = &body["response"];
        let got = (answer["allowed"].as_bool(), answer["status"]["code"].as_u64());
        let ok = answer["uid"] == uid.as_str()
            && match expect {
                Allow => got.0 == Some(true),
                // kubectl prints the reason: `Error from server (Forbidden): ...`.
                Deny(code) => {
                    got == (Some(false), Some(u64::from(*code))) && answer["status"]["reason"] == status_reason(*code)
                }
            };
        if !ok {
            failures.push(format!("{what}: got {answer}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows wrong:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

/// The `reason` the API server's `metav1.Status` gives a code
/// (k8s.io/apimachinery `StatusReason` constants), for the codes these rules use.
fn status_reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        other => panic!("no reason listed for {other}"),
    }
}

/// A server with the three OpenShift plugins and their shipped settings.
fn openshift_server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    install_reference(dir.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    install_reference(dir.path(), "regular-user-validation", guests::REGULAR_USER_VALIDATION);
    install_reference(dir.path(), "pod-validation", guests::POD_VALIDATION);
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

#[tokio::test]
async fn namespace_validation_follows_every_rule() {
    let (_dir, server) = openshift_server();
    let labelled = |name: &str, value: &str| namespace_object(name, json!({ EXEMPT_LABEL: value }));
    let rows = vec![
        ("valid: empty username", namespace("DELETE", "team-a").by("", &[]), Deny(400)),
        ("valid: another kind", Review { kind: "Pod", ..namespace("CREATE", "team-a") }, Deny(400)),
        ("1: kube:admin", namespace("DELETE", "openshift-monitoring").by("kube:admin", &[]), Allow),
        ("1: system:admin", namespace("DELETE", "kube-system").by("system:admin", &[]), Allow),
        ("1: backplane-cluster-admin", namespace("DELETE", "default").by("backplane-cluster-admin", &[]), Allow),
        ("1: cluster-admins group", namespace("DELETE", "openshift-config").by("bob", &["cluster-admins"]), Allow),
        ("1: SRE group", namespace("UPDATE", "openshift-ingress").by("sre", &[SRE]), Allow),
        (
            "2: privileged SA group",
            namespace("DELETE", "openshift-monitoring")
                .by("system:serviceaccount:openshift-x:y", &["system:serviceaccounts:openshift-x"]),
            Allow,
        ),
        (
            "2: osde2e SA group",
            namespace("DELETE", "default").by("e2e", &["system:serviceaccounts:osde2e-ab1c2"]),
            Allow,
        ),
        (
            "2: short osde2e group",
            namespace("DELETE", "default").by("e2e", &["system:serviceaccounts:osde2e-ab1"]),
            Deny(403),
        ),
        (
            "2: unprivileged SA group",
            namespace("DELETE", "default").by("sa", &["system:serviceaccounts:my-team"]),
            Deny(403),
        ),
        (
            "4: layered SRE on redhat-*",
            namespace("DELETE", "redhat-rhoam").by("l", &["layered-sre-cluster-admins"]),
            Allow,
        ),
        (
            "4: layered SRE elsewhere",
            namespace("DELETE", "openshift-logging").by("l", &["layered-sre-cluster-admins"]),
            Deny(403),
        ),
        ("5: kube-system", namespace("DELETE", "kube-system"), Deny(403)),
        ("5: kube- prefix", namespace("CREATE", "kube-anything"), Deny(403)),
        ("5: openshift-monitoring", namespace("UPDATE", "openshift-monitoring"), Deny(403)),
        ("5: default", namespace("UPDATE", "default"), Deny(403)),
        ("5: redhat- prefix", namespace("CREATE", "redhat-foo"), Deny(403)),
        ("5: openshift-unpriv-ns is not protected", namespace("CREATE", "openshift-unpriv-ns"), Allow),
        ("5: openshift-must-gather-xyz is not protected", namespace("DELETE", "openshift-must-gather-xyz"), Allow),
        ("5: default-configs is not protected", namespace("CREATE", "default-configs"), Allow),
        ("5: my-monitoring is not protected", namespace("CREATE", "my-monitoring"), Allow),
        ("3: name from the old object on DELETE", namespace("DELETE", "kube-public").named(""), Deny(403)),
        ("6: com", namespace("CREATE", "com"), Deny(403)),
        ("6: io", namespace("CREATE", "io"), Deny(403)),
        ("6: in", namespace("CREATE", "in"), Deny(403)),
        ("6: comx is fine", namespace("CREATE", "comx"), Allow),
        ("7: CREATE with a protected label", namespace("CREATE", "team-a").object(labelled("team-a", "x")), Deny(403)),
        (
            "7: UPDATE adding a protected label",
            namespace("UPDATE", "team-a").object(labelled("team-a", "x")).old(namespace_object("team-a", json!({}))),
            Deny(403),
        ),
        (
            "7: UPDATE changing its value",
            namespace("UPDATE", "team-a").object(labelled("team-a", "y")).old(labelled("team-a", "x")),
            Deny(403),
        ),
        (
            "7: UPDATE removing it",
            namespace("UPDATE", "team-a").object(namespace_object("team-a", json!({}))).old(labelled("team-a", "x")),
            Deny(403),
        ),
        (
            "7: UPDATE keeping it",
            namespace("UPDATE", "team-a")
                .object(namespace_object("team-a", json!({ EXEMPT_LABEL: "x", "other": "changed" })))
                .old(labelled("team-a", "x")),
            Allow,
        ),
        ("7: DELETE is not label-checked", namespace("DELETE", "team-a").old(labelled("team-a", "x")), Allow),
        ("8: a customer namespace", namespace("CREATE", "team-a"), Allow),
    ];
    check_table(&server, "/validate/namespace-validation", rows).await;
}

fn object_named(name: &str, namespace: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace}})
}

#[tokio::test]
async fn regular_user_validation_follows_every_rule() {
    let (_dir, server) = openshift_server();
    let mc = || Review::new("machineconfiguration.openshift.io", "MachineConfig", "machineconfigs", "CREATE");
    let cv = || Review::new("config.openshift.io", "ClusterVersion", "clusterversions", "UPDATE");
    let proxy = || Review::new("config.openshift.io", "Proxy", "proxies", "UPDATE");
    let must_gather = || Review::new("managed.openshift.io", "MustGather", "mustgathers", "CREATE");
    let custom_domain = || Review::new("managed.openshift.io", "CustomDomain", "customdomains", "CREATE");
    let subject_perm = || Review::new("managed.openshift.io", "SubjectPermission", "subjectpermissions", "CREATE");
    let netns = |name: &str| {
        Review::new("network.openshift.io", "NetNamespace", "netnamespaces", "CREATE").object(object_named(name, ""))
    };
    let cm = |op: &'static str, name: &str, ns: &str| {
        let r = Review::new("", "ConfigMap", "configmaps", op).in_namespace(ns).named(name);
        if op == "DELETE" { r.old(object_named(name, ns)) } else { r.object(object_named(name, ns)) }
    };
    let rows = vec![
        ("valid: empty username", proxy().by("", &[]), Deny(400)),
        ("1: unauthenticated", proxy().by("system:unauthenticated", &[]), Deny(403)),
        ("2: MachineConfig by cluster-admins", mc().by("bob", &["cluster-admins"]), Allow),
        ("2: MachineConfig by system:admin", mc().by("system:admin", &[]), Allow),
        ("2: MachineConfig by backplane-cluster-admin", mc().by("backplane-cluster-admin", &[]), Allow),
        (
            "2: MachineConfig by the MCO controller",
            mc().by("system:serviceaccount:openshift-machine-config-operator:machine-config-controller", &[]),
            Allow,
        ),
        ("2: MachineConfig by kube:admin is denied", mc().by("kube:admin", &[]), Deny(403)),
        ("2: MachineConfig by SRE is denied", mc().by("sre", &[SRE]), Deny(403)),
        ("2: MachineConfig by a regular user", mc(), Deny(403)),
        ("3: kube:admin on Proxy", proxy().by("kube:admin", &[]), Allow),
        ("4: MustGather by CEE", must_gather().by("cee", &[CEE]), Allow),
        ("4: MustGather by a regular user", must_gather(), Deny(403)),
        ("4: CustomDomain by dedicated-admins", custom_domain().by("d", &["dedicated-admins"]), Allow),
        ("4: CustomDomain by a regular user", custom_domain(), Deny(403)),
        ("4: ClusterVersion by a regular user", cv(), Deny(403)),
        ("4: ClusterVersion by dedicated-admins (no fall-through)", cv().by("d", &["dedicated-admins"]), Deny(403)),
        (
            "4: ClusterVersion by the upgrade operator",
            cv().by("system:serviceaccount:openshift-managed-upgrade-operator:managed-upgrade-operator", &[]),
            Allow,
        ),
        ("4: ClusterVersion by a system: user", cv().by("system:kube-controller-manager", &[]), Allow),
        ("4: ClusterVersion by another service account", cv().by("system:serviceaccount:foo:bar", &[]), Deny(403)),
        ("4: ClusterVersion by SRE", cv().by("sre", &[SRE]), Allow),
        ("4: ClusterVersion by backplane-cluster-admin", cv().by("backplane-cluster-admin", &[]), Allow),
        ("4: NetNamespace by dedicated-admins", netns("my-app").by("d", &["dedicated-admins"]), Allow),
        (
            "4: NetNamespace named after a protected ns",
            netns("openshift-monitoring").by("d", &["dedicated-admins"]),
            Deny(403),
        ),
        ("4: NetNamespace named com", netns("com").by("d", &["cluster-admins"]), Deny(403)),
        ("4: NetNamespace by a regular user", netns("my-app"), Deny(403)),
        ("5: system: service account", subject_perm().by("system:serviceaccount:x:y", &[]), Allow),
        ("6: backplane-cluster-admin", subject_perm().by("backplane-cluster-admin", &[]), Allow),
        ("7: SRE group", subject_perm().by("sre", &[SRE]), Allow),
        ("8: an ordinary ConfigMap", cm("UPDATE", "app-config", "team-a"), Allow),
        ("8: user-ca-bundle in openshift-config", cm("UPDATE", "user-ca-bundle", "openshift-config"), Deny(403)),
        ("8: deleting user-ca-bundle (old object)", cm("DELETE", "user-ca-bundle", "openshift-config"), Deny(403)),
        ("8: user-ca-bundle elsewhere", cm("CREATE", "user-ca-bundle", "team-a"), Allow),
        ("9: SubjectPermission by a regular user", subject_perm(), Deny(403)),
        ("9: cluster-admins on a platform group", subject_perm().by("bob", &["cluster-admins"]), Deny(403)),
    ];
    check_table(&server, "/validate/regular-user-validation", rows).await;
}

fn pod(op: &'static str, namespace: &str, tolerations: Value) -> Review {
    let object = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "tolerations": tolerations}
    });
    let review = Review::new("", "Pod", "pods", op).in_namespace(namespace).named("p");
    if op == "DELETE" { review.old(object) } else { review.object(object) }
}

fn toleration(key: &str, effect: &str) -> Value {
    json!([{"key": key, "operator": "Exists", "effect": effect}])
}

#[tokio::test]
async fn pod_validation_follows_every_rule() {
    let (_dir, server) = openshift_server();
    let infra = "node-role.kubernetes.io/infra";
    let master = "node-role.kubernetes.io/master";
    let rows = vec![
        ("valid: empty username", pod("CREATE", "team-a", json!([])).by("", &[]), Deny(400)),
        ("valid: another kind", Review { kind: "Deployment", ..pod("CREATE", "team-a", json!([])) }, Deny(400)),
        (
            // The host passes objects on unread; the plugin refuses what is not a Pod.
            "valid: metadata that is not ObjectMeta",
            pod("CREATE", "team-a", json!([])).object(json!({"apiVersion": "v1", "kind": "Pod", "metadata": 5})),
            Deny(400),
        ),
        (
            "3: customer pod tolerating infra NoSchedule",
            pod("CREATE", "team-a", toleration(infra, "NoSchedule")),
            Deny(403),
        ),
        (
            "3: customer pod tolerating master PreferNoSchedule",
            pod("CREATE", "team-a", toleration(master, "PreferNoSchedule")),
            Deny(403),
        ),
        ("3: NoExecute is not blocked", pod("CREATE", "team-a", toleration(infra, "NoExecute")), Allow),
        ("3: other keys are fine", pod("CREATE", "team-a", toleration("gpu", "NoSchedule")), Allow),
        ("3: no tolerations", pod("CREATE", "team-a", json!([])), Allow),
        (
            "3: the user does not matter",
            pod("CREATE", "team-a", toleration(infra, "NoSchedule")).by("kube:admin", &[]),
            Deny(403),
        ),
        ("2: protected namespace", pod("CREATE", "openshift-monitoring", toleration(infra, "NoSchedule")), Allow),
        ("2: kube- prefix", pod("CREATE", "kube-system", toleration(master, "NoSchedule")), Allow),
        (
            "2: openshift-logging counts as customer",
            pod("CREATE", "openshift-logging", toleration(infra, "NoSchedule")),
            Deny(403),
        ),
        (
            "2: openshift-operators counts as customer",
            pod("CREATE", "openshift-operators", toleration(infra, "NoSchedule")),
            Deny(403),
        ),
        ("1: DELETE inspects the old pod", pod("DELETE", "team-a", toleration(infra, "NoSchedule")), Deny(403)),
        (
            "1: UPDATE inspects the old pod",
            {
                let mut r = pod("UPDATE", "team-a", json!([]));
                r.old_object = pod("CREATE", "team-a", toleration(infra, "NoSchedule")).object;
                r
            },
            Deny(403),
        ),
        (
            "1: namespace from the request when the pod has none",
            {
                let mut r = pod("CREATE", "kube-system", toleration(infra, "NoSchedule"));
                r.object["metadata"].as_object_mut().unwrap().remove("namespace");
                r
            },
            Allow,
        ),
    ];
    check_table(&server, "/validate/pod-validation", rows).await;
}

/// A server with a plugin that echoes what it was asked, and one that warns.
fn echo_server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "echo", guests::MISBEHAVE, Some(r#"{"validate": "echo"}"#));
    install(dir.path(), "warn", guests::MISBEHAVE_IGNORE, Some(r#"{"validate": "warn"}"#));
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

#[tokio::test]
async fn uid_dry_run_and_warnings_reach_the_api_server() {
    let (_dir, server) = echo_server();
    let http = client(&server.ca(), None);
    let mut review = Review::new("", "ConfigMap", "configmaps", "UPDATE").in_namespace("team-a").by("carol", &[]);
    review.dry_run = true;
    let answer: Value =
        post_review(&http, &server.url("/validate/misbehave"), &review.json("11111111-2222-4333-8444-555555555555"))
            .await;
    let response = &answer["response"];
    assert_eq!(response["uid"], "11111111-2222-4333-8444-555555555555");
    let said = response["status"]["message"].as_str().unwrap();
    assert!(
        said.contains("dry_run=true") && said.contains("op=Operation::Update") && said.contains("user=carol"),
        "{said}"
    );
    assert!(said.contains("namespace=Some(\"team-a\")"), "{said}");
    assert_eq!(response["auditAnnotations"]["tollgate-plugin"], "misbehave@0.0.1");

    let answer: Value = post_review(&http, &server.url("/validate/misbehave-ignore"), &review.json("uid-2")).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["warnings"], json!(["careful: this is a test warning"]));
}

#[tokio::test]
async fn what_a_plugin_prints_reaches_the_log_under_its_name_and_never_fails_a_call() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "print", guests::MISBEHAVE, Some(r#"{"validate": "print"}"#));
    install(dir.path(), "flood", guests::MISBEHAVE_IGNORE, Some(r#"{"validate": "flood"}"#));
    let server = Server::start(dir.path(), &[]);
    let http = client(&server.ca(), None);
    let review = Review::new("", "ConfigMap", "configmaps", "CREATE").in_namespace("team-a").by("carol", &[]);

    for uid in ["p1", "p2"] {
        let answer = post_review(&http, &server.url("/validate/misbehave"), &review.json(uid)).await;
        assert_eq!(answer["response"]["status"]["message"], "printed");
    }
    logged(&server, &["hello from stdout", "misbehave", "stdout"]).await;
    logged(&server, &["hello from stderr", "misbehave", "stderr"]).await;

    // 200 KiB in one call: cut at 64 KiB with a warning, and still answered
    // by the plugin (allowed, "flooded"), not by its failure policy.
    let answer = post_review(&http, &server.url("/validate/misbehave-ignore"), &review.json("f1")).await;
    assert_eq!(answer["response"]["status"]["message"], "flooded", "{answer}");
    assert_eq!(answer["response"]["warnings"], Value::Null, "{answer}");
    logged(&server, &["misbehave-ignore", "more than 64 KiB in one call"]).await;
    // The log is one stream: every line before the warning has been read.
    let lines = |text: &str| server.log.lock().unwrap().iter().filter(|l| l.contains(text)).count();
    assert_eq!(lines("hello from stdout"), 2, "one line per call, each logged once");
    assert_eq!(lines("flood line"), (64 << 10) / 64, "64-byte lines up to the cap");
}

#[tokio::test]
async fn a_mutating_plugin_answers_with_a_json_patch() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "add-label", guests::ADD_LABEL, None);
    let server = Server::start(dir.path(), &[]);
    let http = client(&server.ca(), None);
    let mut review = Review::new("", "ConfigMap", "configmaps", "CREATE").in_namespace("team-a").by("dave", &[]);
    for (object, expected) in [
        (
            json!({"metadata": {"name": "c"}}),
            json!([{"op": "add", "path": "/metadata/labels", "value": {"tollgate.io/checked": "true"}}]),
        ),
        (
            json!({"metadata": {"name": "c", "labels": {"app": "x"}}}),
            json!([{"op": "add", "path": "/metadata/labels/tollgate.io~1checked", "value": "true"}]),
        ),
    ] {
        review.object = object;
        let answer = post_review(&http, &server.url("/mutate/add-label"), &review.json("m")).await;
        let response = &answer["response"];
        assert_eq!(response["allowed"], true, "{answer}");
        assert_eq!(response["patchType"], "JSONPatch", "{answer}");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap_or_else(|| panic!("patch is base64 text: {answer}")))
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&patch).unwrap(), expected);
    }
}

#[tokio::test]
async fn bad_requests_get_4xx_with_a_reason_and_the_server_keeps_serving() {
    let (_dir, server) = openshift_server();
    let http = client(&server.ca(), None);
    let url = server.url("/validate/pod-validation");
    let json_post = |body: Vec<u8>| http.post(&url).header("content-type", "application/json").body(body);

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("empty body", json_post(vec![]), 400, "not a valid AdmissionReview"),
        ("not JSON", json_post(b"{ this is not json".to_vec()), 400, "not a valid AdmissionReview"),
        (
            "wrong apiVersion",
            json_post(
                serde_json::to_vec(&{
                    let mut v = pod("CREATE", "team-a", json!([])).json("u");
                    v["apiVersion"] = json!("admission.k8s.io/v1beta1");
                    v
                })
                .unwrap(),
            ),
            400,
            "expected kind AdmissionReview apiVersion admission.k8s.io/v1",
        ),
        (
            "object not a JSON object",
            json_post(
                serde_json::to_vec(&{
                    let mut v = pod("CREATE", "team-a", json!([])).json("u");
                    v["request"]["object"] = json!("a pod");
                    v
                })
                .unwrap(),
            ),
            400,
            "not a JSON object",
        ),
        (
            "no request",
            json_post(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec()),
            400,
            "has no request",
        ),
        ("20 MiB", json_post(vec![b' '; 20 << 20]), 413, "larger than the 19 MiB cap"),
        ("GET", http.get(&url), 405, "must be POST"),
        ("text/plain", http.post(&url).header("content-type", "text/plain").body("{}"), 415, "application/json"),
        ("unknown path", http.post(server.url("/validate/nope")).json(&json!({})), 404, "no admission plugin"),
    ];
    for (what, request, status, reason) in cases {
        let response = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body = response.text().await.unwrap();
        assert!(body.contains(reason), "{what}: {body}");
    }

    let ok = http.post(&url).json(&pod("CREATE", "team-a", json!([])).json("still-there")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let answer: Value = ok.json().await.unwrap();
    assert_eq!(
        (answer["response"]["uid"].as_str(), answer["response"]["allowed"].as_bool()),
        (Some("still-there"), Some(true))
    );

    let metrics = server.metrics_text().await;
    for reason in ["bad_review", "too_large", "method", "media_type", "not_found"] {
        assert!(
            metrics.contains(&format!("tollgate_rejected_requests_total{{reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_refused_upload_is_read_before_the_answer_so_http2_clients_see_it() {
    let (_dir, server) = openshift_server();
    let http = client(&server.ca(), None);
    // 45 chunks of 64 KiB (2.8 MiB, under the cap): more than HTTP/2's flow
    // control lets a client send before the server reads. Answering without
    // reading ends the stream mid-upload (RST_STREAM NO_ERROR), which curl
    // 7.88 reports as an error instead of the answer; here it would stop the
    // sender early.
    let (mut sender, body) = http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
    let upload = tokio::spawn(async move {
        let mut sent = 0;
        for _ in 0..45 {
            if sender.send_data(bytes::Bytes::from(vec![b' '; 64 << 10])).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let response = http
        .post(server.url("/validate/pod-validation"))
        .header("content-type", "text/plain")
        .body(reqwest::Body::wrap(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 415);
    assert!(response.text().await.unwrap().contains("application/json"));
    assert_eq!(upload.await.unwrap(), 45, "the server stopped reading the upload before answering");
}

/// Plugins that trap and loop, under each failure policy.
fn failing_server(dir: &Path) -> Server {
    install(dir, "trap-fail", guests::MISBEHAVE, Some(r#"{"validate": "panic"}"#));
    install(dir, "loop-ignore", guests::MISBEHAVE_IGNORE, Some(r#"{"validate": "loop"}"#));
    Server::start(dir, &[])
}

#[tokio::test]
async fn failure_policy_fail_denies_and_ignore_allows_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let server = failing_server(dir.path());
    let http = client(&server.ca(), None);
    let review = Review::new("", "ConfigMap", "configmaps", "CREATE").in_namespace("team-a");

    for _ in 0..2 {
        let answer: Value = post_review(&http, &server.url("/validate/misbehave"), &review.json("t1")).await;
        let response = &answer["response"];
        assert_eq!(response["uid"], "t1");
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 500);
        assert_eq!(response["status"]["reason"], "InternalError");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("plugin misbehave trapped") && message.contains("misbehaving on purpose"),
            "{message}"
        );
        assert!(message.contains("denied by failurePolicy Fail"), "{message}");
    }

    let answer: Value = post_review(&http, &server.url("/validate/misbehave-ignore"), &review.json("t2")).await;
    let response = &answer["response"];
    assert_eq!((response["uid"].as_str(), response["allowed"].as_bool()), (Some("t2"), Some(true)));
    let warning = response["warnings"][0].as_str().unwrap();
    // Its deadline is 800 ms (1 s timeout less a fifth), less the time spent
    // waiting for a free instance.
    assert!(warning.contains("plugin misbehave-ignore ran past its deadline ("), "{warning}");
    assert!(warning.contains("allowed by failurePolicy Ignore"), "{warning}");

    let metrics = server.metrics_text().await;
    assert!(metrics.contains(r#"tollgate_plugin_failures_total{plugin="misbehave",cause="trap"} 2"#), "{metrics}");
    assert!(
        metrics.contains(r#"tollgate_plugin_failures_total{plugin="misbehave-ignore",cause="deadline"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn calls_beyond_max_instances_wait_and_are_answered_by_the_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "loop-ignore", guests::MISBEHAVE_IGNORE, Some(r#"{"validate": "loop"}"#));
    install(dir.path(), "count", guests::MISBEHAVE, Some(r#"{"validate": "count"}"#));
    // One call at a time: the second and third looping requests wait for the
    // first, and either get the instance too late or never before their own
    // deadline. Which one depends on timing; both must be answered, by the
    // plugin's failurePolicy (Ignore), and never hang.
    let server = Server::start(dir.path(), &["--max-instances", "1"]);
    let mut tasks = configmap_reviews_at_once(&server, "/validate/misbehave-ignore", 3, "w");
    let mut warnings = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        let answer: Value = answer.expect("request task");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        warnings.push(answer["response"]["warnings"][0].as_str().unwrap_or_default().to_string());
    }
    for warning in &warnings {
        assert!(
            warning.contains("ran past its deadline") || warning.contains("no plugin instance became free"),
            "{warning}"
        );
        assert!(warning.contains("allowed by failurePolicy Ignore"), "{warning}");
    }
    let metrics = server.metrics_text().await;
    let failures: u64 = ["deadline", "overloaded"]
        .iter()
        .filter_map(|cause| {
            let series = format!(r#"tollgate_plugin_failures_total{{plugin="misbehave-ignore",cause="{cause}"}} "#);
            metrics.lines().find_map(|line| line.strip_prefix(series.as_str())?.parse::<u64>().ok())
        })
        .sum();
    assert_eq!(failures, 3, "{metrics}");
    // The permit came back: the next call runs.
    assert_eq!(messages(&server, "/validate/misbehave", &["a"]).await, ["call 1"]);
}

/// Sends `n` ConfigMap reviews to `path` at once (uids `<prefix>0`...); the
/// answers come as they are ready.
fn configmap_reviews_at_once(server: &Server, path: &str, n: usize, prefix: &str) -> tokio::task::JoinSet<Value> {
    let http = client(&server.ca(), None);
    let review = Review::new("", "ConfigMap", "configmaps", "CREATE").in_namespace("team-a");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url, body) = (http.clone(), server.url(path), review.json(&format!("{prefix}{i}")));
        tasks.spawn(async move { post_review(&http, &url, &body).await });
    }
    tasks
}

/// The status message of each answer, asking one request at a time for an
/// object of each name.
async fn messages(server: &Server, path: &str, names: &[&str]) -> Vec<String> {
    let http = client(&server.ca(), None);
    let mut said = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let review = Review::new("", "ConfigMap", "configmaps", "CREATE").in_namespace("team-a").named(name);
        let answer: Value = post_review(&http, &server.url(path), &review.json(&format!("uid-{i}"))).await;
        said.push(answer["response"]["status"]["message"].as_str().unwrap_or_default().to_string());
    }
    said
}

#[tokio::test]
async fn instances_are_reused_until_their_call_budget_a_failure_or_growth() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "count", guests::MISBEHAVE, Some(r#"{"validate": "count"}"#));
    let path = "/validate/misbehave";

    // By default one instance answers call after call...
    let server = Server::start(dir.path(), &[]);
    assert_eq!(messages(&server, path, &["a", "b", "c"]).await, ["call 1", "call 2", "call 3"]);
    // ...until a call fails: its instance is dropped, the next starts afresh
    // from the configured snapshot.
    let said = messages(&server, path, &["panic", "d", "e"]).await;
    assert!(said[0].contains("asked to panic on call 4"), "{said:?}");
    assert_eq!(said[1..], ["call 1", "call 2"]);
    // An instance whose memory grew is not kept either.
    assert_eq!(messages(&server, path, &["grow", "f"]).await, ["call 3", "call 1"]);
    drop(server);

    // An instance serves at most --calls-per-instance calls.
    let server = Server::start(dir.path(), &["--calls-per-instance", "2"]);
    assert_eq!(
        messages(&server, path, &["a", "b", "c", "d", "e"]).await,
        ["call 1", "call 2", "call 1", "call 2", "call 1"]
    );
    drop(server);

    // 1: a fresh instance for every call.
    let server = Server::start(dir.path(), &["--calls-per-instance", "1"]);
    assert_eq!(messages(&server, path, &["a", "b", "c"]).await, ["call 1", "call 1", "call 1"]);
}

#[tokio::test]
async fn concurrent_requests_are_all_answered_correctly() {
    let (_dir, server) = openshift_server();
    let http = client(&server.ca(), None);
    let infra = "node-role.kubernetes.io/infra";
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u32 {
        let http = http.clone();
        let url = server.url("/validate/pod-validation");
        let blocked = i % 2 == 0;
        let review = pod("CREATE", "team-a", if blocked { toleration(infra, "NoSchedule") } else { json!([]) });
        tasks.spawn(async move {
            let uid = format!("c-{i}");
            let answer: Value = post_review(&http, &url, &review.json(&uid)).await;
            assert_eq!(answer["response"]["uid"], uid.as_str());
            assert_eq!(answer["response"]["allowed"], !blocked, "request {i}");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("request task");
    }
    let metrics = server.metrics_text().await;
    assert!(metrics.contains(r#"tollgate_admission_requests_total{plugin="pod-validation",decision="denied"} 32"#));
    assert!(metrics.contains(r#"tollgate_admission_requests_total{plugin="pod-validation",decision="allowed"} 32"#));
}

#[tokio::test]
async fn probes_answer_on_both_listeners() {
    let (_dir, server) = openshift_server();
    let http = client(&server.ca(), None);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http.get(server.url(path)).send().await.unwrap().status(), 200, "{path} over TLS");
        let plain = plain().get(format!("http://{}{path}", server.metrics)).send().await.unwrap();
        assert_eq!(plain.status(), 200, "{path} on the metrics listener");
    }
    let plugins: Value =
        reqwest::get(format!("http://{}/plugins", server.metrics)).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["namespace-validation", "pod-validation", "regular-user-validation"]);
    assert_eq!(plugins["plugins"][0]["snapshot"], true);
    assert!(plugins["plugins"][0]["loadedAt"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(plugins["refused"], json!([]));
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_get_in() {
    let dir = tempfile::tempdir().unwrap();
    install_reference(dir.path(), "pod-validation", guests::POD_VALIDATION);
    let (client_ca_pem, cert, key) = client_identity("kube-apiserver");
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca, &client_ca_pem).unwrap();
    let server = Server::start(dir.path(), &["--client-ca", client_ca.to_str().unwrap()]);
    let review = pod("CREATE", "team-a", json!([])).json("m");
    let url = server.url("/validate/pod-validation");

    let anonymous = client(&server.ca(), None);
    let refused = anonymous.post(&url).json(&review).send().await;
    assert!(refused.is_err(), "a client without a certificate must be refused: {refused:?}");

    let (_other_ca, stranger_cert, stranger_key) = client_identity("stranger");
    let stranger = client(&server.ca(), Some((&stranger_cert, &stranger_key)));
    assert!(stranger.post(&url).json(&review).send().await.is_err(), "a certificate from another CA is refused");

    let api_server = client(&server.ca(), Some((&cert, &key)));
    let response = api_server.post(&url).json(&review).send().await.expect("the API server's certificate is accepted");
    assert_eq!(response.status(), 200);
}

/// A CA and the serving certificate for localhost it signed, PEM.
struct Identity {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Identity {
    fn for_localhost() -> Self {
        let (ca_pem, cert_pem, key_pem) = support::server_identity("localhost");
        Self { ca_pem, cert_pem, key_pem }
    }
}

#[tokio::test]
async fn certificate_files_replaced_on_disk_serve_on_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    install_reference(dir.path(), "pod-validation", guests::POD_VALIDATION);
    let first = Identity::for_localhost();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let server = Server::start(dir.path(), &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let review = pod("CREATE", "team-a", json!([])).json("r");
    let url = server.url("/validate/pod-validation");

    let trusts_first = client(first.ca_pem.as_bytes(), None);
    assert_eq!(trusts_first.post(&url).json(&review).send().await.unwrap().status(), 200);

    // Rotate as cert-manager does: write new files, rename them into place.
    let second = Identity::for_localhost();
    std::fs::write(dir.path().join("tls.crt.new"), &second.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key.new"), &second.key_pem).unwrap();
    std::fs::rename(dir.path().join("tls.key.new"), &key).unwrap();
    std::fs::rename(dir.path().join("tls.crt.new"), &cert).unwrap();

    let trusts_second = client(second.ca_pem.as_bytes(), None);
    assert_eq!(trusts_second.post(&url).json(&review).send().await.unwrap().status(), 200);
    let fresh_first = client(first.ca_pem.as_bytes(), None);
    assert!(fresh_first.post(&url).json(&review).send().await.is_err(), "the old certificate is no longer served");

    // A broken rotation keeps the last good certificate.
    std::fs::write(&cert, "garbage").unwrap();
    let still = client(second.ca_pem.as_bytes(), None);
    assert_eq!(still.post(&url).json(&review).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_second_server_on_a_taken_address_stops_before_replacing_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    install_reference(dir.path(), "pod-validation", guests::POD_VALIDATION);
    let server = Server::start(dir.path(), &[]);
    let ca = server.ca();
    let gateway = server.gateway.expect("gateway listening");
    let free = "127.0.0.1:0".to_string();
    // Each start clashes on one address only, so each listener's bind is
    // checked before the CA bundle is written.
    for (flag, clash) in
        [("--admission-addr", server.admission), ("--gateway-addr", gateway), ("--metrics-addr", server.metrics)]
    {
        let addr = |name: &str| if name == flag { clash.to_string() } else { free.clone() };
        let scratch = tempfile::tempdir().unwrap();
        let second = std::process::Command::new(support::TOLLGATE)
            .args(["serve", "--plugins", dir.path().to_str().unwrap()])
            .args(["--admission-addr", &addr("--admission-addr")])
            .args(["--gateway-addr", &addr("--gateway-addr")])
            .args(["--metrics-addr", &addr("--metrics-addr")])
            .arg("--ca-out")
            .arg(&server.ca_file)
            .arg("--cache-dir")
            .arg(scratch.path())
            .output()
            .expect("run a second tollgate serve");
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(!second.status.success(), "{flag}: the second server must not start");
        assert!(stderr.contains(&format!("cannot listen on {clash}")), "{flag}: {stderr}");
        assert_eq!(stderr.matches("Address already in use").count(), 1, "{flag}: the cause once: {stderr}");
        assert_eq!(server.ca(), ca, "{flag}: the running server's CA bundle was replaced");
    }
    let review = pod("CREATE", "team-a", json!([])).json("still-trusted");
    let http = client(&ca, None);
    let response = http.post(server.url("/validate/pod-validation")).json(&review).send().await.unwrap();
    assert_eq!(response.status(), 200, "the running server is still trusted with its CA bundle");
}

/// An UPDATE of a ConfigMap holding `size` bytes of markup, as the API
/// server sends it: Go's encoding/json writes each `<` as the 6-byte
/// `\u003c`, and an UPDATE carries the object and its old version.
fn markup_update(uid: &str, size: usize) -> Vec<u8> {
    let configmap = |version: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "page", "namespace": "team-a", "resourceVersion": version},
               "data": {"page.html": "<".repeat(size)}})
    };
    let review = Review::new("", "ConfigMap", "configmaps", "UPDATE")
        .named("page")
        .in_namespace("team-a")
        .object(configmap("2"))
        .old(configmap("1"));
    serde_json::to_string(&review.json(uid)).unwrap().replace('<', "\\u003c").into_bytes()
}

#[tokio::test]
async fn an_update_of_a_large_object_fits_and_a_larger_body_is_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "cm", guests::MISBEHAVE, Some(r#"{"validate": "echo"}"#));
    let body = markup_update("big", 900_000);
    assert!(body.len() > 10_800_000, "{} bytes", body.len());

    // A 900 KB ConfigMap of markup: 10.8 MB on the wire, under the default cap.
    let server = Server::start(dir.path(), &["--no-gateway"]);
    let http = client(&server.ca(), None);
    let url = server.url("/validate/misbehave");
    let response = http.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (answer["response"]["uid"].as_str(), answer["response"]["allowed"].as_bool()),
        (Some("big"), Some(true))
    );

    // Under a smaller cap it is refused, and the operator is told which
    // plugin, how large and from where, at the default log level.
    let small = Server::start(dir.path(), &["--no-gateway", "--max-review-mib", "8"]);
    let http = client(&small.ca(), None);
    let response = http
        .post(small.url("/validate/misbehave"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(response.text().await.unwrap().contains("larger than the 8 MiB cap"));
    logged(&small, &["WARN", "413", "misbehave", &format!("size_bytes={}", body.len()), "peer=127.0.0.1"]).await;
}

#[tokio::test]
async fn large_reviews_wait_for_room_in_the_memory_budget_and_a_stalled_upload_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    // misbehave answers within 0.8 s (its timeout, 1 s, less a fifth),
    // namespace-validation within 1.6 s.
    install(dir.path(), "cm", guests::MISBEHAVE, Some(r#"{"validate": "echo"}"#));
    install_reference(dir.path(), "namespace-validation", guests::NAMESPACE_VALIDATION);
    let server =
        Server::start(dir.path(), &["--no-gateway", "--max-review-mib", "12", "--max-review-memory-mib", "12"]);
    let http = client(&server.ca(), None);
    let (short, long) = (server.url("/validate/misbehave"), server.url("/validate/namespace-validation"));

    // An upload that declares 11.5 MiB of the 12, sends 11 and stalls.
    let stalled = |url: String| {
        let (mut sender, stream) = http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(4);
        // The declared length is taken from the budget as the head arrives.
        let request = http
            .post(url)
            .header("content-type", "application/json")
            .header("content-length", (23 << 19).to_string())
            .body(reqwest::Body::wrap(stream));
        let answer = tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
        let feeding = tokio::spawn(async move {
            for _ in 0..11 {
                sender.send_data(bytes::Bytes::from(vec![b' '; 1 << 20])).await.unwrap();
            }
            // Let the server read it (HTTP/2 flow control paces the sender).
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            sender // kept open: the upload stalls
        });
        (answer, feeding)
    };
    let mut padded = vec![b' '; 2 << 20];
    padded.extend(serde_json::to_vec(&support::configmap_review("second")).unwrap());
    let post = |url: &str| http.post(url).header("content-type", "application/json").body(padded.clone()).send();

    // Held past a waiter's deadline: the waiter gets 503, the stalled upload
    // 408 at its own deadline, which gives its room back.
    let (answer, feeding) = stalled(long.clone());
    let _open = feeding.await.unwrap();
    let refused = post(&short).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("--max-review-memory-mib"));
    assert_eq!(answer.await.unwrap().unwrap(), 408, "a stalled upload ends at the deadline");
    let answer: Value = post(&short).await.unwrap().json().await.unwrap();
    assert_eq!(answer["response"]["uid"], "second");

    // Held less long than a waiter's deadline: the waiter gets the room
    // when it is given back, and is answered.
    let (answer, feeding) = stalled(short.clone());
    let _open = feeding.await.unwrap();
    let waited: Value = post(&long).await.unwrap().json().await.unwrap();
    assert_eq!(waited["response"]["uid"], "second");
    assert_eq!(answer.await.unwrap().unwrap(), 408);

    let metrics = server.metrics_text().await;
    assert!(metrics.contains("tollgate_rejected_requests_total{reason=\"busy\"} 1"), "{metrics}");
    assert!(metrics.contains("tollgate_rejected_requests_total{reason=\"slow_body\"} 2"), "{metrics}");
}

/// Webhooks registered with the generated CA keep trusting Tollgate after a
/// restart: the CA and its serving certificate are kept in the state
/// directory, private to the user.
#[tokio::test]
async fn the_generated_ca_survives_a_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    install_reference(dir.path(), "pod-validation", guests::POD_VALIDATION);
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("tollgate");
    let args = ["--no-gateway", "--state-dir", state_dir.to_str().unwrap()];
    let first = Server::start(dir.path(), &args);
    let ca = first.ca();
    assert_eq!(std::fs::read(state_dir.join("ca.crt")).unwrap(), ca, "the CA bundle is kept in the state directory");
    let serving = std::fs::read(state_dir.join("tls.crt")).unwrap();
    drop(first);

    let second = Server::start(dir.path(), &args);
    assert_eq!(second.ca(), ca, "a restart serves under the same CA");
    assert_eq!(std::fs::read(state_dir.join("tls.crt")).unwrap(), serving, "a valid serving certificate is reused");
    let review = pod("CREATE", "team-a", json!([])).json("after-restart");
    let response = client(&ca, None).post(second.url("/validate/pod-validation")).json(&review).send().await.unwrap();
    assert_eq!(response.status(), 200, "a client trusting the first run's CA still connects");
    let mode = |name: &str| std::fs::metadata(state_dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(""), mode("ca.key"), mode("tls.key")), (0o700, 0o600, 0o600));
}

/// A client with a stale CA bundle, and one without a certificate under
/// --client-ca, are logged at the default level with the peer and the cause.
#[tokio::test]
async fn failed_tls_handshakes_are_logged_with_peer_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    install_reference(dir.path(), "pod-validation", guests::POD_VALIDATION);
    let server = Server::start(dir.path(), &["--no-gateway"]);
    let (stale_ca, _, _) = support::server_identity("localhost");
    let url = server.url("/validate/pod-validation");
    assert!(client(stale_ca.as_bytes(), None).get(&url).send().await.is_err());
    logged(&server, &["WARN", "TLS handshake failed", "does not trust this server's certificate", "peer=127.0.0.1"])
        .await;

    let scratch = tempfile::tempdir().unwrap();
    let (client_ca, _, _) = client_identity("kube-apiserver");
    let client_ca_file = scratch.path().join("client-ca.pem");
    std::fs::write(&client_ca_file, client_ca).unwrap();
    let strict = Server::start(dir.path(), &["--no-gateway", "--client-ca", client_ca_file.to_str().unwrap()]);
    let response = client(&strict.ca(), None).get(strict.url("/healthz")).send().await;
    assert!(response.is_err(), "no client certificate: {response:?}");
    logged(&strict, &["WARN", "TLS handshake failed", "presented no certificate", "peer=127.0.0.1"]).await;
}

#[tokio::test]
async fn a_guest_waiting_in_a_host_call_is_stopped_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // Sleeps 30 s through WASI clocks: the wait is in the host, where no
    // epoch check runs.
    install(dir.path(), "sleep-ignore", guests::MISBEHAVE_IGNORE, Some(r#"{"validate": "sleep"}"#));
    install(dir.path(), "count", guests::MISBEHAVE, Some(r#"{"validate": "count"}"#));
    // One admission call at a time: the sleeping calls must give it back
    // at their deadline (800 ms), not after their 30 s sleep.
    let server = Server::start(dir.path(), &["--max-instances", "1"]);
    let mut tasks = configmap_reviews_at_once(&server, "/validate/misbehave-ignore", 3, "s");
    // A hang guard, not a timing assertion: far below the guest's sleep.
    let guard = std::time::Duration::from_secs(15);
    while let Some(answer) =
        tokio::time::timeout(guard, tasks.join_next()).await.expect("answered before the sleep ends")
    {
        let answer: Value = answer.expect("request task");
        let warning = answer["response"]["warnings"][0].as_str().unwrap_or_default().to_string();
        assert!(
            warning.contains("ran past its deadline") || warning.contains("no plugin instance became free"),
            "{answer}"
        );
    }
    let next = tokio::time::timeout(guard, messages(&server, "/validate/misbehave", &["a"])).await;
    assert_eq!(next.expect("the call budget came back"), ["call 1"]);
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(r#"tollgate_plugin_failures_total{plugin="misbehave-ignore",cause="deadline"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_plugin_whose_configure_sleeps_is_refused_at_its_deadline_and_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    // `configure` sleeps 30 s through WASI clocks while the loader takes the
    // plugin's configured snapshot: the wait is in the host, where no epoch
    // check runs.
    install(dir.path(), "sleepy", guests::MISBEHAVE, Some(r#"{"configure": "sleep"}"#));
    install(dir.path(), "healthy", guests::MISBEHAVE_IGNORE, Some(r#"{"validate": "ok"}"#));
    // Returns once the plugins are loaded. A hang guard, not a timing
    // assertion: far below the guest's sleep, far above its 1 s deadline.
    let server = Server::start(dir.path(), &[]);
    let took = server.started.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "ready after {took:?}: the sleeping configure held the load");

    let http = client(&server.ca(), None);
    let review = Review::new("", "ConfigMap", "configmaps", "CREATE").in_namespace("team-a");
    let answer: Value = post_review(&http, &server.url("/validate/misbehave-ignore"), &review.json("h1")).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let refused = http.post(server.url("/validate/misbehave")).json(&review.json("h2")).send().await.unwrap();
    assert_eq!(refused.status(), 404, "the sleeping plugin must not serve");

    let url = format!("http://{}/plugins", server.metrics);
    let status: Value = plain().get(url).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = status["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["misbehave-ignore"], "{status}");
    let refusal = status["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"].as_str().is_some_and(|f| f.ends_with("sleepy.wasm")))
        .unwrap_or_else(|| panic!("sleepy.wasm refused: {status}"));
    let reason = refusal["reason"].as_str().unwrap();
    assert!(reason.contains("configure() ran past its deadline"), "{reason}");
}
