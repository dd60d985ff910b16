//! Typed errors of the library. Each says what failed and, where the operator
//! can act, what to do.

use std::path::PathBuf;
use std::time::Duration;

use crate::contract::Kind;

/// The engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("could not configure the WebAssembly engine: {0}")]
    Config(String),
}

/// A call into a plugin failed. The plugin did not answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The epoch deadline interrupted the guest.
    #[error("ran past its deadline of {} ms", .0.as_millis())]
    Deadline(Duration),
    /// The guest asked for more memory than its cap.
    #[error("exceeded its memory cap of {cap_mib} MiB")]
    MemoryCap {
        /// The cap, in MiB.
        cap_mib: usize,
    },
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access...).
    #[error("trapped: {trap}{}", guest_said.as_ref().map(|s| format!(" (guest said: {s})")).unwrap_or_default())]
    Trap {
        /// The trap, as wasmtime reports it.
        trap: String,
        /// The guest's last line on stderr, e.g. its panic message.
        guest_said: Option<String>,
    },
    /// The instance could not be created (pool exhausted, start trapped...).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

/// A request could not be answered by a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The call itself failed.
    #[error("plugin {plugin} {source}")]
    Call {
        /// The plugin's name.
        plugin: String,
        /// What went wrong.
        source: CallError,
    },
    /// `configure` refused the settings the plugin accepted at load time.
    #[error("plugin {plugin} refused its settings: {message}")]
    Configure {
        /// The plugin's name.
        plugin: String,
        /// The plugin's own message.
        message: String,
    },
    /// The request was for another kind of plugin.
    #[error("plugin {plugin} is a {actual} plugin; this request needs a {expected} plugin")]
    WrongKind {
        /// The plugin's name.
        plugin: String,
        /// The kind the request needs.
        expected: Kind,
        /// The kind the plugin is.
        actual: Kind,
    },
    /// The plugin's answer breaks the contract (e.g. a patch from a
    /// non-mutating plugin).
    #[error("plugin {plugin} returned an invalid answer: {reason}")]
    BadAnswer {
        /// The plugin's name.
        plugin: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl PluginError {
    /// A short label for metrics: trap, deadline, memory, instantiate,
    /// settings, bad_answer or internal.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Call { source: CallError::Trap { .. }, .. } => "trap",
            Self::Call { source: CallError::Deadline(_), .. } => "deadline",
            Self::Call { source: CallError::MemoryCap { .. }, .. } => "memory",
            Self::Call { source: CallError::Instantiate(_), .. } => "instantiate",
            Self::Configure { .. } => "settings",
            Self::BadAnswer { .. } => "bad_answer",
            Self::WrongKind { .. } => "internal",
        }
    }
}

/// Why a plugin file was refused. Shown with the file name; the plugins that
/// loaded keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    /// Not WebAssembly at all.
    #[error("is not a WebAssembly file (it does not start with the \\0asm header)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "is a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 \
         target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// wasmtime could not compile it.
    #[error("is not a valid component: {0}")]
    Compile(String),
    /// It exports no Tollgate interface.
    #[error("is not a Tollgate plugin: it exports none of {expected}; it exports [{found}]")]
    NotAPlugin {
        /// The interfaces the host looks for.
        expected: String,
        /// What the component exports.
        found: String,
    },
    /// It was built against a contract version this host does not serve.
    #[error("was built against {built}, host supports {supported}: rebuild it against a supported version of wit/")]
    UnsupportedVersion {
        /// e.g. `tollgate:plugin@0.0.1`.
        built: String,
        /// e.g. `tollgate:plugin@0.2.0`.
        supported: String,
    },
    /// It exports more than one kind's interface.
    #[error("exports several plugin interfaces ({0}); a plugin must target exactly one world")]
    SeveralKinds(String),
    /// Its imports or export signatures do not match what the host provides.
    #[error("does not match the {kind} world of the contract: {reason}")]
    Link {
        /// The kind it claims to be.
        kind: Kind,
        /// wasmtime's explanation.
        reason: String,
    },
    /// `metadata()` failed.
    #[error("metadata() {0}")]
    Metadata(CallError),
    /// The metadata is invalid (as the Kubernetes API server would judge).
    #[error("has invalid metadata: {}", .0.join("; "))]
    InvalidMetadata(Vec<String>),
    /// The settings file could not be read or parsed.
    #[error("settings file {}: {reason}", file.display())]
    SettingsFile {
        /// The settings file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `configure()` failed.
    #[error("configure() {0}")]
    Configure(CallError),
    /// The plugin refused its settings.
    #[error("refused its settings: {message} ({settings})")]
    Settings {
        /// The plugin's own message.
        message: String,
        /// Where the settings came from, or where they were looked for.
        settings: String,
    },
    /// Another loaded plugin already has this name or path.
    #[error("{what} {value:?} is already used by {}", other.display())]
    Duplicate {
        /// "name" or "path".
        what: &'static str,
        /// The duplicated value.
        value: String,
        /// The file that has it first.
        other: PathBuf,
    },
}

/// A refused plugin file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct LoadError {
    /// The plugin file.
    pub file: PathBuf,
    /// Why it was refused.
    pub reason: Refusal,
}

/// A plugin directory could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read plugin directory {}: {error}", dir.display())]
pub struct DirError {
    /// The directory.
    pub dir: PathBuf,
    /// The I/O error (in the message, not a `source`, so it is printed once).
    pub error: std::io::Error,
}
