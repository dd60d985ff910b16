//! `tollgate webhooks` and `tollgate docs`, run as a user runs them, on real
//! compiled plugins. Webhook YAML is compared with golden files, read back
//! into k8s-openapi's types, and checked with the `kubernetes-validate`
//! schema validator (from PyPI; `.ci/run` installs it).
//!
//! Regenerate the golden files after an intended change with
//! `TOLLGATE_BLESS=1 cargo test --test generate`, and review the diff.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use serde::Deserialize;
use serde_json::Value;

use support::{TOLLGATE, guests};
/// The Kubernetes version the schema validator checks against (k8s-openapi's feature).
const KUBERNETES_VERSION: &str = "1.33.0";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn tollgate(args: &[&str]) -> Output {
    Command::new(TOLLGATE).args(args).env("RUST_LOG", "warn").output().expect("run tollgate")
}

fn stdout_of(out: &Output) -> String {
    assert!(out.status.success(), "tollgate failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// Compares `actual` with a golden file, or rewrites it when blessing.
fn golden(name: &str, actual: &str) {
    let file = repo("tests/golden").join(name);
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (TOLLGATE_BLESS=1 writes it)", file.display()));
    assert!(expected == actual, "{name} differs from the golden file; if intended, bless it.\n--- got ---\n{actual}");
}

/// Runs the schema validator on a YAML stream, strictly (unknown fields fail).
fn schema_validate(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = support::schema_validator()
        .args(["--strict", "--no-warn", "-k", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .expect("the schema validator runs");
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{}\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The YAML stream read back into k8s-openapi's types.
fn parse(yaml: &str) -> (Vec<ValidatingWebhookConfiguration>, Vec<MutatingWebhookConfiguration>) {
    let (mut validating, mut mutating) = (Vec::new(), Vec::new());
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).expect("YAML document");
        match value["kind"].as_str() {
            Some("ValidatingWebhookConfiguration") => validating.push(serde_yaml::from_value(value).unwrap()),
            Some("MutatingWebhookConfiguration") => mutating.push(serde_yaml::from_value(value).unwrap()),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    (validating, mutating)
}

#[test]
fn webhooks_for_the_reference_plugins_through_a_service() {
    let yaml = stdout_of(&tollgate(&["webhooks"]));
    golden("webhooks-service.yaml", &yaml);
    schema_validate(&yaml);
    let (validating, mutating) = parse(&yaml);
    assert!(mutating.is_empty());
    let [config] = validating.as_slice() else { panic!("one configuration expected") };
    assert_eq!(config.metadata.name.as_deref(), Some("tollgate"));
    let hooks = config.webhooks.as_deref().unwrap();
    let names: Vec<&str> = hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "catalog-allowlist.tollgate.io",
            "namespace-validation.tollgate.io",
            "pod-validation.tollgate.io",
            "regular-user-validation.tollgate.io"
        ]
    );
    for hook in hooks {
        let service = hook.client_config.service.as_ref().expect("service mode");
        let plugin = hook.name.trim_end_matches(".tollgate.io");
        assert_eq!(service.path.as_deref(), Some(format!("/validate/{plugin}").as_str()));
        assert_eq!(
            (service.name.as_str(), service.namespace.as_str(), service.port),
            ("tollgate", "tollgate", Some(443))
        );
        assert_eq!(hook.admission_review_versions, ["v1"]);
        assert!(hook.client_config.ca_bundle.is_none() && hook.client_config.url.is_none());
        // Tollgate's own namespace is always excluded.
        let expressions = hook.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap();
        assert!(expressions.iter().any(|e| e.key == "kubernetes.io/metadata.name"
            && e.operator == "NotIn"
            && e.values.as_deref() == Some(&["tollgate".to_string()][..])));
    }
}

/// Reached by `--url`, Tollgate runs in no namespace the webhooks could
/// know: excluding `tollgate` by default let anyone allowed to create
/// namespaces create one by that name and do there what every plugin forbids.
#[test]
fn webhooks_through_a_url_exclude_no_namespace_unless_asked() {
    let yaml = stdout_of(&tollgate(&["webhooks", "--url", "https://tollgate.example.com:8443"]));
    schema_validate(&yaml);
    let (validating, _) = parse(&yaml);
    for hook in validating[0].webhooks.as_deref().unwrap() {
        let excluded = hook.namespace_selector.iter().flat_map(|s| s.match_expressions.iter().flatten());
        let by_name: Vec<_> = excluded.filter(|e| e.key == "kubernetes.io/metadata.name").collect();
        assert!(by_name.is_empty(), "{} excludes {by_name:?}", hook.name);
    }
}

#[test]
fn webhooks_through_a_url_with_a_ca_bundle_and_a_mutating_plugin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::POD_VALIDATION, dir.path().join("pod-validation.wasm")).unwrap();
    std::fs::copy(
        repo("plugins/pod-validation/pod-validation.settings.json"),
        dir.path().join("pod-validation.settings.json"),
    )
    .unwrap();
    std::fs::copy(guests::ADD_LABEL, dir.path().join("add-label.wasm")).unwrap();
    let ca = repo("tests/data/ca.pem");
    let yaml = stdout_of(&tollgate(&[
        "webhooks",
        "--plugins",
        dir.path().to_str().unwrap(),
        "--url",
        "https://tollgate.example.com:8443",
        "--ca-bundle",
        ca.to_str().unwrap(),
        "--domain",
        "policy.example.com",
        "--exclude-namespace",
        "tollgate-system",
        "--exclude-namespace",
        "kube-system",
    ]));
    golden("webhooks-url.yaml", &yaml);
    schema_validate(&yaml);
    let (validating, mutating) = parse(&yaml);
    let pod = &validating[0].webhooks.as_ref().unwrap()[0];
    assert_eq!(pod.name, "pod-validation.policy.example.com");
    assert_eq!(pod.client_config.url.as_deref(), Some("https://tollgate.example.com:8443/validate/pod-validation"));
    assert_eq!(pod.client_config.ca_bundle.as_ref().unwrap().0, std::fs::read(&ca).unwrap());
    let label = &mutating[0].webhooks.as_ref().unwrap()[0];
    assert_eq!(label.name, "add-label.policy.example.com");
    assert_eq!(label.reinvocation_policy.as_deref(), Some("Never"));
    assert_eq!(label.side_effects, "NoneOnDryRun");
    assert_eq!(label.match_policy.as_deref(), Some("Exact"));
    assert_eq!(label.timeout_seconds, Some(3));
    let ns = label.namespace_selector.as_ref().unwrap();
    assert_eq!(ns.match_labels.as_ref().unwrap()["tollgate.io/label-configmaps"], "true");
    assert_eq!(ns.match_expressions.as_ref().unwrap()[0].values.as_ref().unwrap(), &["tollgate-system", "kube-system"]);
    let object = label.object_selector.as_ref().unwrap().match_expressions.as_ref().unwrap();
    assert_eq!((object[0].key.as_str(), object[0].operator.as_str()), ("tollgate.io/skip", "DoesNotExist"));
}

#[test]
fn webhooks_can_leave_the_ca_bundle_to_an_injector() {
    for (inject, annotation, value) in [
        ("cert-manager:tollgate/tollgate-serving", "cert-manager.io/inject-ca-from", "tollgate/tollgate-serving"),
        ("service-ca", "service.beta.openshift.io/inject-cabundle", "true"),
    ] {
        let yaml = stdout_of(&tollgate(&["webhooks", "--inject-ca", inject]));
        schema_validate(&yaml);
        let (validating, _) = parse(&yaml);
        let annotations = validating[0].metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations.get(annotation).map(String::as_str), Some(value), "{inject}");
        assert!(validating[0].webhooks.iter().flatten().all(|h| h.client_config.ca_bundle.is_none()));
    }
}

#[test]
fn webhooks_refuse_what_the_api_server_would_refuse() {
    // A plugin whose metadata the API server would reject: the command
    // fails, naming the file and the reason, and prints no YAML.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::ADD_LABEL, dir.path().join("good.wasm")).unwrap();
    std::fs::copy(guests::INVALID_METADATA, dir.path().join("invalid.wasm")).unwrap();
    let out = tollgate(&["webhooks", "--plugins", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no partial output");
    assert!(stderr.contains("invalid.wasm") && stderr.contains("timeoutSeconds"), "{stderr}");

    // Two plugins with one name: both files are named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::ADD_LABEL, dir.path().join("a.wasm")).unwrap();
    std::fs::copy(guests::ADD_LABEL, dir.path().join("b.wasm")).unwrap();
    let out = tollgate(&["webhooks", "--plugins", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("a.wasm") && stderr.contains("b.wasm") && stderr.contains("add-label"), "{stderr}");

    // Options the API server would reject.
    for (args, expected) in [
        (&["--url", "http://tollgate:8443"][..], "https://"),
        (&["--domain", "tollgate"][..], "--domain"),
        (&["--service-name", "Tollgate"][..], "--service-name"),
        (&["--inject-ca", "vault"][..], "--inject-ca"),
    ] {
        let out = tollgate(&[&["webhooks"], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = tollgate(&["webhooks", "--ca-bundle", repo("README.md").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no PEM certificate"));
}

#[test]
fn docs_describe_every_plugin_in_markdown_and_json() {
    let markdown = stdout_of(&tollgate(&["docs"]));
    golden("docs.md", &markdown);
    for plugin in
        ["namespace-validation", "pod-validation", "regular-user-validation", "jwt-org-router", "email-allowlist"]
    {
        assert!(markdown.contains(&format!("\n## {plugin}\n")), "{plugin} has a section");
        assert!(markdown.contains(&format!("| [{plugin}](#{plugin}) |")), "{plugin} is in the index");
    }
    assert!(markdown.contains("| CREATE, UPDATE, DELETE | \"\" (core) | * | namespaces | Cluster |"));
    assert!(markdown.contains("- Path: `/validate/pod-validation`"));

    let json: Value = serde_json::from_str(&stdout_of(&tollgate(&["docs", "--format", "json"]))).unwrap();
    let plugins = json["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 7);
    for plugin in plugins {
        for field in ["kind", "info"] {
            assert!(!plugin[field].is_null(), "{field} in {plugin}");
        }
        let info = &plugin["info"];
        assert!(info["name"].is_string() && info["version"].is_string() && info["summary"].is_string());
        assert!(info["doc"].as_str().is_some_and(|d| !d.is_empty()), "{info}");
    }
    let pod = plugins.iter().find(|p| p["info"]["name"] == "pod-validation").unwrap();
    assert_eq!(pod["kind"], "admission");
    assert_eq!(pod["admissionPath"], "/validate/pod-validation");
    assert_eq!(pod["webhook"]["rules"][0]["resources"][0], "pods");
    assert!(pod["info"]["settings_doc"].is_string());
    let router = plugins.iter().find(|p| p["info"]["name"] == "jwt-org-router").unwrap();
    assert_eq!(router["matches"][0]["path_prefix"], "/");
}
