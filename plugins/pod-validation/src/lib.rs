//! `pod-validation`: pods outside platform namespaces may not tolerate the
//! infra and control-plane taints, so customer workloads cannot land on
//! those nodes (OpenShift's managed pod webhook). The user is not
//! considered; DELETE inspects the old pod too, as the reference does.

use openshift_rules::Decision;
use openshift_rules::pod::{self, Settings};

wit_bindgen::generate!({ path: "../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, FailurePolicy, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

/// The rules live in `openshift_rules::pod`, shared with the native
/// baseline of the benchmarks.
fn decide(s: &Settings, req: &AdmissionRequest) -> Decision {
    pod::decide(
        s,
        &pod::Request {
            username: &req.user_info.username,
            kind: &req.kind.kind,
            namespace: req.namespace.as_deref(),
            object: req.object.as_deref(),
            old_object: req.old_object.as_deref(),
        },
    )
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
