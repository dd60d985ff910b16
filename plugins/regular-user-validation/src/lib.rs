//! `regular-user-validation`: keeps regular users away from the platform's
//! own API groups and configuration (OpenShift's managed regular-user
//! webhook). Steps follow the reference, top to bottom; every user, group and
//! name comes from the settings file.

use openshift_rules::{Decision, Patterns, has_any_group, has_group, parse_object};
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, FailurePolicy, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

/// `regular-user-validation.settings.json`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Users allowed to change machine configuration (step 2).
    machine_config_users: Vec<String>,
    /// Groups allowed to change machine configuration (step 2).
    machine_config_groups: Vec<String>,
    /// Users allowed to change the ClusterVersion (step 4).
    cluster_version_users: Vec<String>,
    /// The SRE group.
    sre_group: String,
    /// The CEE group (may create MustGathers).
    cee_group: String,
    /// Customer administrator groups (CustomDomain, NetNamespace).
    customer_admin_groups: Vec<String>,
    /// The elevated SRE user.
    elevated_user: String,
    /// Namespaces a NetNamespace may not be named after (regular expressions).
    protected_namespaces: Patterns,
    /// Names that would break cluster DNS.
    reserved_names: Vec<String>,
    /// The ConfigMap only the platform may change.
    protected_config_map: NamespacedName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespacedName {
    namespace: String,
    name: String,
}

const MACHINE_CONFIG_GROUP: &str = "machineconfiguration.openshift.io";
const DENIED: &str = "Prevented from accessing Red Hat managed resources. This is in an effort to prevent harmful \
                      actions that may cause unintended consequences or affect the stability of the cluster.";

fn decide(s: &Settings, req: &AdmissionRequest) -> Decision {
    let user = &req.user_info;
    let (username, groups) = (user.username.as_str(), &user.groups);
    if username.is_empty() {
        return Decision::invalid("request has no username");
    }
    // 1.
    if username == "system:unauthenticated" {
        return Decision::deny(DENIED);
    }
    // 2. Machine configuration: a short list, even kube:* and SRE are denied.
    if req.kind.group == MACHINE_CONFIG_GROUP {
        return if has_any_group(groups, &s.machine_config_groups)
            || s.machine_config_users.iter().any(|u| u == username)
        {
            Decision::allow()
        } else {
            Decision::deny(DENIED)
        };
    }
    // 3.
    if username.starts_with("kube:") {
        return Decision::allow();
    }
    // 4. By group and kind.
    match (req.kind.group.as_str(), req.kind.kind.as_str()) {
        ("managed.openshift.io", "MustGather") if has_group(groups, &s.cee_group) => return Decision::allow(),
        ("managed.openshift.io", "CustomDomain") if has_any_group(groups, &s.customer_admin_groups) => {
            return Decision::allow();
        }
        ("config.openshift.io", "ClusterVersion") => {
            let allowed = s.cluster_version_users.iter().any(|u| u == username)
                || has_group(groups, &s.sre_group)
                || (username.starts_with("system:") && !username.starts_with("system:serviceaccount:"));
            return if allowed { Decision::allow() } else { Decision::deny(DENIED) };
        }
        ("network.openshift.io", "NetNamespace") if has_any_group(groups, &s.customer_admin_groups) => {
            match parse_object(req.object.as_deref(), "object") {
                Err(e) => return Decision::invalid(e),
                Ok(Some(object)) => {
                    let name = object.metadata.name.as_str();
                    if !s.reserved_names.iter().any(|r| r == name) && !s.protected_namespaces.matches(name) {
                        return Decision::allow();
                    }
                }
                Ok(None) => {}
            }
        }
        _ => {}
    }
    // 5.-7.
    if username.starts_with("system:") || username == s.elevated_user || has_group(groups, &s.sre_group) {
        return Decision::allow();
    }
    // 8. ConfigMaps: all but the protected one.
    if req.kind.kind == "ConfigMap" {
        let json = if req.operation == Operation::Delete { req.old_object.as_deref() } else { req.object.as_deref() };
        return match parse_object(json, "object") {
            Err(e) => Decision::invalid(e),
            Ok(object) => {
                let meta = object.map(|o| o.metadata).unwrap_or_default();
                let protected = &s.protected_config_map;
                if meta.namespace == protected.namespace && meta.name == protected.name {
                    Decision::deny(DENIED)
                } else {
                    Decision::allow()
                }
            }
        };
    }
    // 9.
    Decision::deny(DENIED)
}

fn rule(api_groups: &[&str], resources: &[&str], scope: Scope) -> Rule {
    Rule {
        operations: vec![Operation::Create, Operation::Update, Operation::Delete],
        api_groups: api_groups.iter().map(|g| g.to_string()).collect(),
        api_versions: vec!["*".into()],
        resources: resources.iter().map(|r| r.to_string()).collect(),
        scope,
    }
}

fn metadata() -> AdmissionMetadata {
    AdmissionMetadata {
        info: PluginInfo {
            name: "regular-user-validation".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Keeps regular users away from platform API groups and configuration.".into(),
            doc: "First match wins:\n\
                  1. deny `system:unauthenticated`;\n\
                  2. machineconfiguration.openshift.io: allow only the listed users and groups;\n\
                  3. allow `kube:*` users;\n\
                  4. MustGather: allow the CEE group; CustomDomain: allow customer admins; ClusterVersion: \
                  allow only listed users, the SRE group and non-service-account `system:` users, else deny; \
                  NetNamespace: allow customer admins for names neither reserved nor protected;\n\
                  5.-7. allow `system:*` users, the elevated user and the SRE group;\n\
                  8. ConfigMap: allow all but the protected one;\n\
                  9. deny."
                .into(),
            settings_doc: Some(
                "`machineConfigUsers`, `machineConfigGroups`, `clusterVersionUsers`, `sreGroup`, `ceeGroup`, \
                 `customerAdminGroups`, `elevatedUser`, `protectedNamespaces` (regular expressions), \
                 `reservedNames`, `protectedConfigMap` (`namespace`, `name`)."
                    .into(),
            ),
        },
        webhook: Webhook {
            rules: vec![
                rule(
                    &[
                        "managed.openshift.io",
                        "splunkforwarder.managed.openshift.io",
                        "upgrade.managed.openshift.io",
                        "cloudingress.managed.openshift.io",
                        "addons.managed.openshift.io",
                        "machineconfiguration.openshift.io",
                    ],
                    &["*"],
                    Scope::All,
                ),
                rule(
                    &["config.openshift.io"],
                    &["clusterversions", "apiservers", "proxies", "schedulers"],
                    Scope::Cluster,
                ),
                rule(&["network.openshift.io"], &["netnamespaces"], Scope::Cluster),
                rule(&[""], &["configmaps"], Scope::Namespaced),
            ],
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

openshift_rules::admission_plugin!(RegularUserValidation, settings: Settings, metadata: metadata(), decide: decide);
