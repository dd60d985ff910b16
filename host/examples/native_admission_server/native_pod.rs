//! pod-validation's decision (rules 1-4) in native Rust, built from the same
//! openshift-rules pieces as the plugin: the floor the benchmarks compare
//! the Wasm plugin against. Shared by the load-test baseline server and the
//! criterion bench.

use openshift_rules::Patterns;
use openshift_rules::pod::Pod;
use serde::Deserialize;
use tollgate::contract::types::AdmissionRequest;

/// pod-validation's settings.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    protected_namespaces: Patterns,
    customer_namespace_substrings: Vec<String>,
    blocked_toleration_keys: Vec<String>,
    blocked_effects: Vec<String>,
}

impl Policy {
    /// The settings pod-validation ships with.
    pub fn shipped() -> Self {
        serde_json::from_str(include_str!("../../../plugins/pod-validation/pod-validation.settings.json"))
            .expect("settings")
    }

    /// Ok to allow, or the denial's code and message.
    pub fn decide(&self, req: &AdmissionRequest) -> Result<(), (u16, String)> {
        if req.user_info.username.is_empty() || req.kind.kind != "Pod" {
            return Err((400, "invalid request".into()));
        }
        let json = req.old_object.as_deref().or(req.object.as_deref());
        let pod: Pod =
            serde_json::from_str(json.ok_or((400, "no pod".to_string()))?).map_err(|e| (400, e.to_string()))?;
        let namespace: &str = if pod.metadata.namespace.is_empty() {
            req.namespace.as_deref().unwrap_or_default()
        } else {
            &pod.metadata.namespace
        };
        let privileged = self.protected_namespaces.matches(namespace)
            && !self.customer_namespace_substrings.iter().any(|sub| namespace.contains(sub.as_str()));
        if privileged {
            return Ok(());
        }
        let blocked = pod.spec.tolerations.iter().find(|t| {
            self.blocked_toleration_keys.iter().any(|k| *k == t.key)
                && self.blocked_effects.iter().any(|e| *e == t.effect)
        });
        match blocked {
            Some(t) => Err((403, format!("Not allowed to schedule a pod with {} {} toleration", t.effect, t.key))),
            None => Ok(()),
        }
    }
}
