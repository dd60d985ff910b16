//! `pod-validation`: pods outside platform namespaces may not tolerate the
//! infra and control-plane taints, so customer workloads cannot land on
//! those nodes (OpenShift's managed pod webhook). The user is not
//! considered; DELETE inspects the old pod too, as the reference does.

use openshift_rules::pod::Pod;
use openshift_rules::{Decision, Patterns};
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, FailurePolicy, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

/// `pod-validation.settings.json`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Platform namespaces (regular expressions).
    protected_namespaces: Patterns,
    /// A protected namespace containing any of these is a customer one.
    customer_namespace_substrings: Vec<String>,
    /// Toleration keys customer pods may not have...
    blocked_toleration_keys: Vec<String>,
    /// ...with these effects.
    blocked_effects: Vec<String>,
}

/// Just the tolerations of a pod spec.
fn decide(s: &Settings, req: &AdmissionRequest) -> Decision {
    if req.user_info.username.is_empty() {
        return Decision::invalid("request has no username");
    }
    if req.kind.kind != "Pod" {
        return Decision::invalid(format!("pod-validation handles Pod, not {:?}", req.kind.kind));
    }
    // 1. The current pod (old for UPDATE/DELETE) and its namespace.
    let json = req.old_object.as_deref().or(req.object.as_deref());
    let pod: Pod = match json.map(serde_json::from_str) {
        Some(Ok(pod)) => pod,
        Some(Err(e)) => return Decision::invalid(format!("pod is not a valid object: {e}")),
        None => return Decision::invalid("request carries no pod"),
    };
    let namespace: &str = if pod.metadata.namespace.is_empty() {
        req.namespace.as_deref().unwrap_or_default()
    } else {
        &pod.metadata.namespace
    };
    // 2. Privileged: protected, and not one of the customer exceptions.
    let privileged = s.protected_namespaces.matches(namespace)
        && !s.customer_namespace_substrings.iter().any(|sub| namespace.contains(sub.as_str()));
    if privileged {
        return Decision::allow();
    }
    // 3. Customer pods may not tolerate the blocked taints.
    let blocked = pod.spec.tolerations.iter().find(|t| {
        s.blocked_toleration_keys.iter().any(|k| *k == t.key) && s.blocked_effects.iter().any(|e| *e == t.effect)
    });
    if let Some(t) = blocked {
        return Decision::deny(format!(
            "Not allowed to schedule a pod with {} {} toleration on an infra or control-plane node",
            t.effect, t.key
        ));
    }
    // 4.
    Decision::allow()
}

fn metadata() -> AdmissionMetadata {
    AdmissionMetadata {
        info: PluginInfo {
            name: "pod-validation".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Keeps customer pods off infra and control-plane nodes.".into(),
            doc: "1. take the current pod (old for UPDATE/DELETE) and its namespace;\n\
                  2. a protected namespace not containing a customer substring is privileged: allow;\n\
                  3. otherwise deny a toleration with a blocked key and a blocked effect \
                  (NoSchedule, PreferNoSchedule; NoExecute is not blocked);\n\
                  4. allow. The user is not considered."
                .into(),
            settings_doc: Some(
                "`protectedNamespaces` (regular expressions), `customerNamespaceSubstrings`, \
                 `blockedTolerationKeys`, `blockedEffects`."
                    .into(),
            ),
        },
        webhook: Webhook {
            rules: vec![Rule {
                operations: vec![Operation::All],
                api_groups: vec!["".into()],
                api_versions: vec!["v1".into()],
                resources: vec!["pods".into()],
                scope: Scope::Namespaced,
            }],
            failure_policy: FailurePolicy::Ignore,
            match_policy: MatchPolicy::Equivalent,
            side_effects: SideEffects::None,
            timeout_seconds: 2,
            namespace_selector: None,
            object_selector: None,
            path: None,
            mutating: false,
        },
    }
}

openshift_rules::admission_plugin!(PodValidation, settings: Settings, metadata: metadata(), decide: decide);
