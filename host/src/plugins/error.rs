//! Errors of plugins: a file refused at load (and why, in words the
//! operator can act on), a directory that cannot be read, a request a plugin
//! could not answer.

use std::path::PathBuf;
use std::sync::Arc;

use crate::runtime::contract::Kind;
use crate::runtime::error::CallError;

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
/// loaded keep serving. Clone, so a refusal can be listed again while its
/// file stays as it is, without reading the file again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(Arc<std::io::Error>),
    /// Not a regular file (links followed): a directory, a named pipe, a
    /// device. Never read: a pipe or `/dev/zero` would never end.
    #[error("is a {0}, not a regular file")]
    NotAFile(&'static str),
    /// Not WebAssembly at all (told from the first bytes: the rest is not read).
    #[error("is not a WebAssembly file (it does not start with the \\0asm header)")]
    NotWasm,
    /// Larger than `--max-plugin-mib` (told from its size: it is not read).
    #[error("is {}, over the plugin size limit of {} (--max-plugin-mib)", in_units(*size), in_units(*limit))]
    TooLarge {
        /// The file's size, in bytes.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
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
        reason: SettingsError,
    },
    /// `configure()` failed.
    #[error("configure() {0}")]
    Configure(CallError),
    /// The plugin refused its settings.
    #[error("refused its settings: {message} ({settings})")]
    Settings {
        /// The plugin's own message, with what it quotes of the settings
        /// redacted (see [`crate::plugins::redact`]).
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

/// What the `/plugins` page says instead of a plugin's own words, unless
/// `--plugins-detail` is given.
const WITHHELD: &str = "the plugin's message is in the log (serve with --plugins-detail to show it here)";

impl Refusal {
    /// The reason in the host's words only: what the plugin itself wrote
    /// (its refusal of its settings, its last line on stderr when
    /// `configure` trapped) is left out. Those are the plugin author's
    /// text, which may quote settings in forms redaction cannot recognise;
    /// the unauthenticated `/plugins` page shows them only on request.
    pub fn host_words(&self) -> String {
        match self {
            Self::Settings { settings, .. } => format!("refused its settings ({settings}); {WITHHELD}"),
            Self::Configure(CallError::Trap { trap, guest_said: Some(_) }) => {
                format!("configure() trapped: {trap}; {WITHHELD}")
            }
            other => other.to_string(),
        }
    }

    /// True when the same files would be refused again for the same reason,
    /// so a file refused for it need not be read again until it changes.
    /// Not for failures that may pass on a second try: an I/O error, a
    /// deadline missed on a busy machine, an instance pool that was full.
    pub fn is_lasting(&self) -> bool {
        let passing = |e: &CallError| matches!(e, CallError::Deadline(_) | CallError::Instantiate(_));
        match self {
            Self::Read(_) | Self::SettingsFile { reason: SettingsError::Read(_), .. } => false,
            Self::Metadata(e) | Self::Configure(e) => !passing(e),
            _ => true,
        }
    }
}

/// What is wrong with a settings file. Never quotes the file's content:
/// reasons are logged and shown on `/plugins`, and settings hold secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SettingsError {
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Read(Arc<std::io::Error>),
    /// Not a regular file (links followed): a directory, a named pipe, a
    /// device.
    #[error("is a {0}, not a regular file")]
    NotAFile(&'static str),
    /// Larger than `--max-settings-kib` (told from its size: it is not read).
    #[error("is {}, over the settings size limit of {} (--max-settings-kib)", in_units(*size), in_units(*limit))]
    TooLarge {
        /// The file's size, in bytes.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A symbolic link leading out of the plugin directory. Settings are
    /// handed to the plugin and quoted in errors: a link to `/etc/shadow`
    /// would give both the host's secrets. Links within the directory (a
    /// ConfigMap volume's `name -> ..data/name`) are followed.
    #[error(
        "is a symbolic link to a file outside the plugin directory; only links within the directory are \
         followed (as a ConfigMap or Secret volume makes them)"
    )]
    OutsideDir,
    /// Not UTF-8 text.
    #[error("is not UTF-8 text")]
    NotText,
    /// Not JSON; the parser's message, with anything it quotes redacted.
    #[error("is not valid JSON: {0}")]
    Json(String),
    /// Not YAML; the parser's message, with anything it quotes redacted.
    #[error("is not valid YAML: {0}")]
    Yaml(String),
    /// More than one settings file for one plugin.
    #[error("several settings files for one plugin ({0}); keep one")]
    Several(String),
}

/// A size in the unit its limit flag uses: MiB from 1 MiB, else KiB, else bytes.
fn in_units(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b if b >= KIB => format!("{:.1} KiB", b as f64 / KIB as f64),
        b => format!("{b} bytes"),
    }
}

/// A refused plugin file and the reason.
#[derive(Debug, Clone, thiserror::Error)]
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
