//! `namespace-validation`: who may create, change or delete which
//! namespaces (OpenShift's managed namespace webhook). The numbered steps
//! below are the reference's, decided top to bottom; every name, group and
//! pattern comes from the settings file.

use openshift_rules::{Decision, Object, Patterns, has_any_group, has_group, parse_object};
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, FailurePolicy, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

/// `namespace-validation.settings.json`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Namespaces only administrators may touch (regular expressions).
    protected_namespaces: Patterns,
    /// Service-account groups that are trusted platform components.
    privileged_service_account_groups: Patterns,
    /// Users always allowed (step 1).
    admin_users: Vec<String>,
    /// Groups always allowed (step 1).
    admin_groups: Vec<String>,
    /// Group allowed to manage namespaces with the layered-product prefix.
    layered_product_group: String,
    /// The layered products' namespace prefix.
    layered_product_prefix: String,
    /// Names that would break cluster DNS.
    reserved_names: Vec<String>,
    /// Labels only administrators may set, change or remove.
    protected_labels: Vec<String>,
}

fn decide(s: &Settings, req: &AdmissionRequest) -> Decision {
    let user = &req.user_info;
    if user.username.is_empty() {
        return Decision::invalid("request has no username");
    }
    if req.kind.kind != "Namespace" {
        return Decision::invalid(format!("namespace-validation handles Namespace, not {:?}", req.kind.kind));
    }
    // 1. Administrators.
    if s.admin_users.contains(&user.username) || has_any_group(&user.groups, &s.admin_groups) {
        return Decision::allow();
    }
    // 2. Privileged platform service accounts.
    if s.privileged_service_account_groups.matches_any(&user.groups) {
        return Decision::allow();
    }
    // 3. The namespace: from the current object (old for UPDATE/DELETE).
    let (new, old) =
        match (parse_object(req.object.as_deref(), "object"), parse_object(req.old_object.as_deref(), "oldObject")) {
            (Ok(new), Ok(old)) => (new, old),
            (Err(e), _) | (_, Err(e)) => return Decision::invalid(e),
        };
    let current = old.as_ref().or(new.as_ref());
    let name = current.map(|o| o.metadata.name.clone()).filter(|n| !n.is_empty()).or_else(|| req.name.clone());
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Decision::invalid("request names no namespace");
    };
    // 4. Layered products manage their own prefix.
    if has_group(&user.groups, &s.layered_product_group) && name.starts_with(s.layered_product_prefix.as_str()) {
        return Decision::allow();
    }
    // 5. Protected namespaces.
    if s.protected_namespaces.matches(&name) {
        return Decision::deny(format!(
            "You cannot update the protected namespace {name:?}: it is managed by the platform"
        ));
    }
    // 6. Names that break DNS.
    if s.reserved_names.contains(&name) {
        return Decision::deny(format!("You cannot create a namespace named {name:?}: it would break cluster DNS"));
    }
    // 7. Protected labels.
    if let Some(denial) = protected_label_change(s, req.operation, new.as_ref(), old.as_ref()) {
        return denial;
    }
    // 8.
    Decision::allow()
}

fn protected_label_change(s: &Settings, op: Operation, new: Option<&Object>, old: Option<&Object>) -> Option<Decision> {
    fn present<'a>(labels: &'a [String], o: Option<&'a Object>) -> Vec<(&'a str, &'a str)> {
        let Some(o) = o else { return Vec::new() };
        labels.iter().filter_map(|key| o.metadata.labels.get(key).map(|v| (key.as_str(), v.as_str()))).collect()
    }
    let present = |o| present(&s.protected_labels, o);
    match op {
        Operation::Create => {
            let set = present(new);
            (!set.is_empty())
                .then(|| Decision::deny(format!("Managed label {:?} may only be set by administrators", set[0].0)))
        }
        Operation::Update => {
            let (before, after) = (present(old), present(new));
            let changed = before.len() != after.len()
                || before
                    .iter()
                    .any(|(key, value)| after.iter().find(|(k, _)| k == key).map(|(_, v)| v) != Some(value));
            changed.then(|| Decision::deny("Managed labels may only be added, changed or removed by administrators"))
        }
        _ => None,
    }
}

fn metadata() -> AdmissionMetadata {
    AdmissionMetadata {
        info: PluginInfo {
            name: "namespace-validation".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Protects platform namespaces and their managed labels from non-administrators.".into(),
            doc: "Decides Namespace CREATE, UPDATE and DELETE, first match wins:\n\
                  1. allow administrators (users and groups from settings);\n\
                  2. allow privileged platform service-account groups;\n\
                  3. take the namespace name from the current object (old for UPDATE/DELETE);\n\
                  4. allow the layered-product group on namespaces with its prefix;\n\
                  5. deny protected namespaces;\n\
                  6. deny names that would break DNS (`com`, `io`, `in`);\n\
                  7. deny setting protected labels on CREATE, and changing their number or values on UPDATE;\n\
                  8. allow.\n\
                  Requests without a username or for another kind are refused with code 400."
                .into(),
            settings_doc: Some(
                "`protectedNamespaces` and `privilegedServiceAccountGroups`: regular expressions. \
                 `adminUsers`, `adminGroups`: always allowed. `layeredProductGroup` and \
                 `layeredProductPrefix`. `reservedNames`. `protectedLabels`."
                    .into(),
            ),
        },
        webhook: Webhook {
            rules: vec![Rule {
                operations: vec![Operation::Create, Operation::Update, Operation::Delete],
                api_groups: vec!["".into()],
                api_versions: vec!["*".into()],
                resources: vec!["namespaces".into()],
                scope: Scope::Cluster,
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

openshift_rules::admission_plugin!(NamespaceValidation, settings: Settings, metadata: metadata(), decide: decide);
