//! `namespace-guard`: refuses changes to protected namespaces by anyone who is
//! not an administrator. The protected names and the administrators come from
//! the settings file, so operators change them without rebuilding.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{
    AdmissionMetadata, AdmissionRequest, FailurePolicy, MatchPolicy, Operation, PluginInfo, Rule, Scope, SideEffects,
    Verdict, Webhook,
};

/// Settings, as operators write them in `namespace-guard.settings.json`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Exact names, or prefixes written with a trailing `*` (`kube-*`).
    #[serde(default)]
    protected_namespaces: Vec<String>,
    #[serde(default)]
    admin_users: Vec<String>,
    #[serde(default)]
    admin_groups: Vec<String>,
}

impl Settings {
    fn is_protected(&self, name: &str) -> bool {
        self.protected_namespaces.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        })
    }

    fn is_admin(&self, user: &tollgate::plugin::types::UserInfo) -> bool {
        self.admin_users.contains(&user.username) || user.groups.iter().any(|g| self.admin_groups.contains(g))
    }
}

thread_local! {
    static SETTINGS: RefCell<Option<Settings>> = const { RefCell::new(None) };
}

/// Just the part of a Namespace object this plugin reads.
#[derive(Deserialize)]
struct Object {
    metadata: Option<ObjectMeta>,
}

#[derive(Deserialize)]
struct ObjectMeta {
    name: Option<String>,
}

struct NamespaceGuard;

fn deny(code: u16, message: String) -> Verdict {
    Verdict { allowed: false, code: Some(code), message: Some(message), warnings: vec![], patch: None }
}

fn allow() -> Verdict {
    Verdict { allowed: true, code: None, message: None, warnings: vec![], patch: None }
}

/// The namespace's name: from the current object (old for UPDATE/DELETE),
/// else from the request, as the API server leaves `namespace` empty for
/// cluster-scoped kinds.
fn namespace_name(req: &AdmissionRequest) -> Result<String, String> {
    let current = req.old_object.as_deref().or(req.object.as_deref());
    if let Some(json) = current {
        let object: Object = serde_json::from_str(json).map_err(|e| format!("object is not a valid Namespace: {e}"))?;
        if let Some(name) = object.metadata.and_then(|m| m.name).filter(|n| !n.is_empty()) {
            return Ok(name);
        }
    }
    req.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| "request names no namespace".to_string())
}

impl Guest for NamespaceGuard {
    fn metadata() -> AdmissionMetadata {
        AdmissionMetadata {
            info: PluginInfo {
                name: "namespace-guard".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                summary: "Refuses changes to protected namespaces by non-administrators.".into(),
                doc: "Denies CREATE, UPDATE and DELETE of a Namespace whose name is protected \
                      (an exact name or a `prefix*` from the settings) unless the user is an \
                      administrator (listed user, or member of a listed group). Requests without \
                      a username or for another kind are refused with code 400."
                    .into(),
                settings_doc: Some(
                    "`protectedNamespaces`: names, or prefixes ending in `*`. \
                     `adminUsers`: usernames always allowed. `adminGroups`: groups always allowed."
                        .into(),
                ),
            },
            webhook: Webhook {
                rules: vec![Rule {
                    operations: vec![Operation::Create, Operation::Update, Operation::Delete],
                    api_groups: vec!["".into()],
                    api_versions: vec!["v1".into()],
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

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        if let Some(bad) = parsed.protected_namespaces.iter().find(|p| p.is_empty() || p == &"*") {
            return Err(format!("invalid settings: protectedNamespaces entry {bad:?} would match every namespace"));
        }
        SETTINGS.with(|s| *s.borrow_mut() = Some(parsed));
        Ok(())
    }

    fn validate(req: AdmissionRequest) -> Verdict {
        if req.user_info.username.is_empty() {
            return deny(400, "request has no username".into());
        }
        if req.kind.kind != "Namespace" {
            return deny(400, format!("namespace-guard handles Namespace, not {}", req.kind.kind));
        }
        SETTINGS.with(|s| {
            let settings = s.borrow();
            let Some(settings) = settings.as_ref() else {
                return deny(500, "namespace-guard was not configured".into());
            };
            if settings.is_admin(&req.user_info) {
                return allow();
            }
            match namespace_name(&req) {
                Err(reason) => deny(400, reason),
                Ok(name) if settings.is_protected(&name) => {
                    deny(403, format!("namespace {name:?} is protected: only administrators may change it"))
                }
                Ok(_) => allow(),
            }
        })
    }
}

export!(NamespaceGuard);
