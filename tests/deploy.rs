//! The Kubernetes manifests in `deploy/`: every overlay renders with
//! `kubectl kustomize`, passes `kubernetes-validate --strict`, and runs
//! Tollgate the way the issue asks (replicas, disruption budget, probes,
//! restricted security, read-only root, resources), with arguments the real
//! binary accepts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde::Deserialize;

use support::TOLLGATE;
const KUBERNETES_VERSION: &str = "1.33.0";
const OVERLAYS: [&str; 4] = ["secret", "secret-sync", "cert-manager", "cert-manager-sync"];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e} (.ci/run installs it)"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Renders an overlay and validates it; returns its documents.
fn render(overlay: &str) -> Vec<serde_yaml::Value> {
    let dir = deploy(&format!("overlays/{overlay}"));
    let yaml = run(Command::new("kubectl").arg("kustomize").arg(&dir), &format!("kubectl kustomize {overlay}"));
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join(format!("{overlay}.yaml"));
    std::fs::write(&file, &yaml).unwrap();
    run(
        support::schema_validator().args(["--strict", "--no-warn", "-k", KUBERNETES_VERSION]).arg(&file),
        &format!("kubernetes-validate {overlay}"),
    );
    serde_yaml::Deserializer::from_str(&yaml).map(|doc| serde_yaml::Value::deserialize(doc).unwrap()).collect()
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> Option<&'a serde_yaml::Value> {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
}

#[test]
fn every_overlay_renders_validates_and_runs_tollgate_safely() {
    let help = run(Command::new(TOLLGATE).args(["serve", "--help"]), "tollgate serve --help");
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let deployment: Deployment =
            serde_yaml::from_value(find(&docs, "Deployment", "tollgate").expect("a Deployment").clone()).unwrap();
        assert_eq!(deployment.metadata.namespace.as_deref(), Some("tollgate"));
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2), "{overlay}");
        let pod = spec.template.spec.as_ref().unwrap();
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true), "{overlay}");
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
        assert!(container.resources.as_ref().unwrap().requests.is_some());

        // Every flag is one the binary knows.
        let args = container.args.as_ref().unwrap();
        assert_eq!(args[0], "serve");
        for arg in &args[1..] {
            let flag = arg.split('=').next().unwrap();
            assert!(help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")), "{overlay}: {flag}");
        }

        assert!(find(&docs, "PodDisruptionBudget", "tollgate").is_some(), "{overlay}");
        assert!(find(&docs, "Service", "tollgate").is_some(), "{overlay}");
        let namespace = find(&docs, "Namespace", "tollgate").expect("namespace");
        assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(), Some("restricted"));

        // Webhook registration: only the sync overlays may talk to the API.
        let syncs = overlay.ends_with("-sync");
        assert_eq!(args.iter().any(|a| a == "--sync-webhooks"), syncs, "{overlay}");
        assert_eq!(pod.automount_service_account_token, Some(syncs), "{overlay}");
        let role = find(&docs, "ClusterRole", "tollgate-webhooks");
        assert_eq!(role.is_some(), syncs, "{overlay}");
        if let Some(role) = role {
            let role: ClusterRole = serde_yaml::from_value(role.clone()).unwrap();
            for rule in role.rules.unwrap() {
                let verbs = rule.verbs.join(",");
                // Only create is not limited to Tollgate's own configuration.
                if verbs != "create" {
                    assert_eq!(rule.resource_names.as_deref(), Some(&["tollgate".to_string()][..]), "{verbs}");
                }
                // list and watch (sync repairs what others change) only by name, as checked above.
                assert!(!rule.verbs.iter().any(|v| v == "*"), "{verbs}");
                if rule.verbs.iter().any(|v| v == "list" || v == "watch") {
                    assert!(rule.resource_names.is_some(), "{verbs}");
                }
            }
        }

        // Certificates: cert-manager writes the Secret the pod mounts.
        let serving = find(&docs, "Certificate", "tollgate-serving");
        assert_eq!(serving.is_some(), overlay.starts_with("cert-manager"), "{overlay}");
        let mounted = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "tls").unwrap();
        let secret = mounted.secret.as_ref().unwrap().secret_name.clone().unwrap();
        if let Some(serving) = serving {
            assert_eq!(serving["spec"]["secretName"].as_str(), Some(secret.as_str()));
            let names: Vec<&str> =
                serving["spec"]["dnsNames"].as_sequence().unwrap().iter().filter_map(|n| n.as_str()).collect();
            assert!(names.contains(&"tollgate.tollgate.svc"), "{names:?}");
        }
        if overlay == "cert-manager-sync" {
            assert!(args.contains(&"--inject-ca=cert-manager:tollgate/tollgate-serving".to_string()));
        }
    }
}
