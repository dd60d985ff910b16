//! What a plugin declares about itself, as one type over the three kinds,
//! and the API server's spelling of the contract's webhook enums (shared by
//! the generated configurations, docs and summaries).

use serde::{Deserialize, Serialize};

use crate::runtime::contract::Kind;
use crate::runtime::contract::types::{
    AdmissionMetadata, AllowlistMetadata, FailurePolicy, MatchPolicy, Operation, PluginInfo, RouteMetadata, Scope,
    SideEffects, Webhook,
};

/// A plugin's metadata, whatever its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PluginMetadata {
    /// An admission plugin's metadata.
    Admission(AdmissionMetadata),
    /// A route plugin's metadata.
    Route(RouteMetadata),
    /// An allowlist plugin's metadata.
    Allowlist(AllowlistMetadata),
}

impl PluginMetadata {
    /// Name, version and documentation.
    pub fn info(&self) -> &PluginInfo {
        match self {
            Self::Admission(m) => &m.info,
            Self::Route(m) => &m.info,
            Self::Allowlist(m) => &m.info,
        }
    }

    /// The plugin's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Admission(_) => Kind::Admission,
            Self::Route(_) => Kind::Route,
            Self::Allowlist(_) => Kind::Allowlist,
        }
    }

    /// The webhook it declares, if it answers admission requests.
    pub fn webhook(&self) -> Option<&Webhook> {
        match self {
            Self::Admission(m) => Some(&m.webhook),
            Self::Allowlist(m) => m.webhook.as_ref(),
            Self::Route(_) => None,
        }
    }

    /// The HTTP path it answers admission requests on, if any.
    pub fn admission_path(&self) -> Option<String> {
        let webhook = self.webhook()?;
        Some(webhook.path.clone().unwrap_or_else(|| default_admission_path(&self.info().name)))
    }
}

/// The path an admission plugin gets when it declares none.
pub fn default_admission_path(name: &str) -> String {
    format!("/validate/{name}")
}

/// The API server's spelling of an operation.
pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
        Operation::All => "*",
    }
}

/// The API server's spelling of a scope.
pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Cluster => "Cluster",
        Scope::Namespaced => "Namespaced",
        Scope::All => "*",
    }
}

/// The API server's spelling of a failure policy.
pub fn failure_policy_name(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::Fail => "Fail",
        FailurePolicy::Ignore => "Ignore",
    }
}

/// The API server's spelling of a match policy.
pub fn match_policy_name(policy: MatchPolicy) -> &'static str {
    match policy {
        MatchPolicy::Exact => "Exact",
        MatchPolicy::Equivalent => "Equivalent",
    }
}

/// The API server's spelling of side effects.
pub fn side_effects_name(side_effects: SideEffects) -> &'static str {
    match side_effects {
        SideEffects::None => "None",
        SideEffects::NoneOnDryRun => "NoneOnDryRun",
    }
}
