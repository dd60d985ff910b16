//! The plugin contract (`wit/`) as Rust types, and which versions of it this
//! host serves.

/// Bindings generated from `wit/plugin.wit`. The `host` world exports every
/// kind's interface; a plugin implements exactly one of them, and the loader
/// picks that interface's indices.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "host",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        // Guests run as futures that yield at every epoch tick, so a long
        // call never holds an async worker thread.
        exports: { default: async },
    });
}

pub use bindings::exports::tollgate::plugin::{admission, allowlist, route};
pub use bindings::tollgate::plugin::{services, types};

/// The WIT package every plugin interface belongs to.
pub const PACKAGE: &str = "tollgate:plugin";

/// Contract versions this host serves. A plugin built against any other
/// version is refused with both versions named.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.2.0"];

/// The kinds of plugin, one per world in the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Answers Kubernetes admission requests.
    Admission,
    /// Decides where gateway requests go.
    Route,
    /// Allows or denies by a list of e-mails, addresses or names.
    Allowlist,
}

impl Kind {
    /// Every kind, in the order the host reports them.
    pub const ALL: [Kind; 3] = [Kind::Admission, Kind::Route, Kind::Allowlist];

    /// The interface name a plugin of this kind exports, without version.
    pub fn interface(self) -> &'static str {
        match self {
            Kind::Admission => "admission",
            Kind::Route => "route",
            Kind::Allowlist => "allowlist",
        }
    }

    /// The fully qualified export name for a contract version.
    pub fn export_name(self, version: &str) -> String {
        format!("{PACKAGE}/{}@{version}", self.interface())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.interface())
    }
}

/// Splits an export name like `tollgate:plugin/admission@0.2.0` into the
/// interface and version, if it belongs to the Tollgate package.
pub fn parse_export(name: &str) -> Option<(&str, Option<&str>)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    Some(match rest.split_once('@') {
        Some((interface, version)) => (interface, Some(version)),
        None => (rest, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_round_trip() {
        let name = Kind::Route.export_name("0.2.0");
        assert_eq!(name, "tollgate:plugin/route@0.2.0");
        assert_eq!(parse_export(&name), Some(("route", Some("0.2.0"))));
        assert_eq!(parse_export("wasi:cli/run@0.2.0"), None);
        assert_eq!(parse_export("tollgate:plugin/admission"), Some(("admission", None)));
    }
}
