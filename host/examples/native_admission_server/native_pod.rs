//! pod-validation's decision in native Rust: the same rules function as the
//! plugin (`openshift_rules::pod::decide`), called directly instead of
//! through Wasm. The floor the benchmarks compare the plugin against; shared
//! by the load-test baseline server and the criterion bench.

use openshift_rules::pod::{self, Settings};
use tollgate::runtime::contract::types::AdmissionRequest;

/// pod-validation's settings.
pub struct Policy(Settings);

impl Policy {
    /// The settings pod-validation ships with.
    pub fn shipped() -> Self {
        Self(
            serde_json::from_str(include_str!("../../../plugins/pod-validation/pod-validation.settings.json"))
                .expect("settings"),
        )
    }

    /// Ok to allow, or the denial's code and message.
    pub fn decide(&self, req: &AdmissionRequest) -> Result<(), (u16, String)> {
        let decision = pod::decide(
            &self.0,
            &pod::Request {
                username: &req.user_info.username,
                kind: &req.kind.kind,
                namespace: req.namespace.as_deref(),
                object: req.object.as_deref(),
                old_object: req.old_object.as_deref(),
            },
        );
        if decision.allowed {
            return Ok(());
        }
        Err((decision.code.unwrap_or(403), decision.message.unwrap_or_default()))
    }
}
