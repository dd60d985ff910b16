//! What a plugin declares about itself, as one type over the three kinds.

use serde::{Deserialize, Serialize};

use crate::contract::Kind;
use crate::contract::types::{AdmissionMetadata, AllowlistMetadata, PluginInfo, RouteMetadata, Webhook};

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
