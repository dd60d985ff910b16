//! Test guest: a valid admission plugin that claims namespace-validation's path,
//! so the host must refuse whichever of the two loads second.

wit_bindgen::generate!({ path: "../../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, FailurePolicy, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

struct PathClash;

impl Guest for PathClash {
    fn metadata() -> AdmissionMetadata {
        AdmissionMetadata {
            info: PluginInfo {
                name: "path-clash".into(),
                version: "0.0.1".into(),
                summary: "Claims another plugin's path (test guest).".into(),
                doc: String::new(),
                settings_doc: None,
            },
            webhook: Webhook {
                rules: vec![Rule {
                    operations: vec![Operation::Create],
                    api_groups: vec!["".into()],
                    api_versions: vec!["v1".into()],
                    resources: vec!["pods".into()],
                    scope: Scope::All,
                }],
                failure_policy: FailurePolicy::Fail,
                match_policy: MatchPolicy::Equivalent,
                side_effects: SideEffects::None,
                timeout_seconds: 5,
                namespace_selector: None,
                object_selector: None,
                path: Some("/validate/namespace-validation".into()),
                mutating: false,
            },
        }
    }

    fn configure(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn validate(_req: AdmissionRequest) -> Verdict {
        Verdict { allowed: true, code: None, message: None, warnings: vec![], patch: None }
    }
}

export!(PathClash);
