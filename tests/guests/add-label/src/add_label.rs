// The body of the `add-label` test guests, included by each crate's lib.rs
// after it defines VERSION, FAILURE_POLICY and TIMEOUT_SECONDS.

wit_bindgen::generate!({ path: "../../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, LabelRequirement, LabelSelector, MatchPolicy, Operation,
    PluginInfo, Rule, Scope, SelectorOperator, SideEffects, Verdict, Webhook,
};

struct AddLabel;

impl Guest for AddLabel {
    fn metadata() -> AdmissionMetadata {
        AdmissionMetadata {
            info: PluginInfo {
                name: "add-label".into(),
                version: VERSION.into(),
                summary: "Labels admitted ConfigMaps as checked (test guest).".into(),
                doc: "Adds `tollgate.io/checked: \"true\"` to every ConfigMap it admits.".into(),
                settings_doc: None,
            },
            webhook: Webhook {
                rules: vec![Rule {
                    operations: vec![Operation::Create, Operation::Update],
                    api_groups: vec!["".into()],
                    api_versions: vec!["v1".into()],
                    resources: vec!["configmaps".into()],
                    scope: Scope::Namespaced,
                }],
                failure_policy: FAILURE_POLICY,
                match_policy: MatchPolicy::Exact,
                side_effects: SideEffects::NoneOnDryRun,
                timeout_seconds: TIMEOUT_SECONDS,
                namespace_selector: Some(LabelSelector {
                    match_labels: vec![("tollgate.io/label-configmaps".into(), "true".into())],
                    match_expressions: vec![],
                }),
                object_selector: Some(LabelSelector {
                    match_labels: vec![],
                    match_expressions: vec![LabelRequirement {
                        key: "tollgate.io/skip".into(),
                        operator: SelectorOperator::DoesNotExist,
                        values: vec![],
                    }],
                }),
                path: Some("/mutate/add-label".into()),
                mutating: true,
            },
        }
    }

    fn configure(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn validate(req: AdmissionRequest) -> Verdict {
        let object: serde_json::Value = match req.object.as_deref().map(serde_json::from_str) {
            Some(Ok(object)) => object,
            _ => {
                return Verdict {
                    allowed: false,
                    code: Some(400),
                    message: Some("no object to label".into()),
                    warnings: vec![],
                    patch: None,
                };
            }
        };
        let patch = if object.pointer("/metadata/labels").is_some_and(|l| l.is_object()) {
            serde_json::json!([{"op": "add", "path": "/metadata/labels/tollgate.io~1checked", "value": "true"}])
        } else {
            serde_json::json!([{"op": "add", "path": "/metadata/labels", "value": {"tollgate.io/checked": "true"}}])
        };
        Verdict { allowed: true, code: None, message: None, warnings: vec![], patch: Some(patch.to_string()) }
    }
}

export!(AddLabel);
