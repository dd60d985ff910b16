//! Test guest: metadata the Kubernetes API server would reject (bad name,
//! '*' mixed with other resources, a timeout above 30 s).

wit_bindgen::generate!({ path: "../../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, FailurePolicy, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

struct InvalidMetadata;

impl Guest for InvalidMetadata {
    fn metadata() -> AdmissionMetadata {
        AdmissionMetadata {
            info: PluginInfo {
                name: "Invalid_Name".into(),
                version: "1.0.0".into(),
                summary: "broken on purpose".into(),
                doc: String::new(),
                settings_doc: None,
            },
            webhook: Webhook {
                rules: vec![Rule {
                    operations: vec![Operation::Create],
                    api_groups: vec!["".into()],
                    api_versions: vec!["v1".into()],
                    resources: vec!["*".into(), "pods".into()],
                    scope: Scope::All,
                }],
                failure_policy: FailurePolicy::Fail,
                match_policy: MatchPolicy::Equivalent,
                side_effects: SideEffects::None,
                timeout_seconds: 60,
                namespace_selector: None,
                object_selector: None,
                path: None,
                mutating: false,
            },
        }
    }

    fn configure(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn validate(_req: AdmissionRequest) -> Verdict {
        unreachable!("never loaded")
    }
}

export!(InvalidMetadata);
