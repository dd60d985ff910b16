//! Loading plugins: a file, bytes, or a whole directory. Each file is checked
//! step by step (is it a component, which world and contract version, does it
//! link, is its metadata valid, does it accept its settings) and refused with
//! the file name and the first reason that applies. Loading is blocking CPU
//! work (compilation): call it from a blocking thread, not the async runtime.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre};

use crate::plugins::disk_cache::CodeCache;
use crate::plugins::error::{DirError, LoadError, Refusal, SettingsError};
use crate::plugins::plugin::Plugin;
use crate::plugins::redact;
use crate::plugins::validation;
use crate::runtime::contract::{self, Kind};
use crate::runtime::engine::Runtime;
use crate::runtime::error::CallError;
use crate::runtime::instances::{Exports, Instances};
use crate::runtime::metadata::PluginMetadata;
use crate::runtime::sandbox::{self, Sandbox};
use crate::runtime::snapshot::SnapshotError;

/// Extension of plugin files.
pub const PLUGIN_EXTENSION: &str = "wasm";

/// Settings files beside `<stem>.wasm`, in the order they are looked for.
const SETTINGS_SUFFIXES: [&str; 3] = [".settings.json", ".settings.yaml", ".settings.yml"];

/// Default cap on a plugin file: 64 MiB. The reference plugins are well
/// under 1 MiB; components that carry a language runtime (Python through
/// componentize-py, about 40 MiB) still fit.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 64 << 20;
/// Default cap on a settings file: 1 MiB, what a ConfigMap holds in all.
pub const DEFAULT_MAX_SETTINGS_BYTES: u64 = 1 << 20;

/// How large the files of a plugin directory may be. A file over its cap is
/// refused from its size, before it is read: a 500 MB file dropped in the
/// directory once took the host's memory with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Largest plugin (`.wasm`) file, in bytes.
    pub max_plugin_bytes: u64,
    /// Largest settings file, in bytes.
    pub max_settings_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self { max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES, max_settings_bytes: DEFAULT_MAX_SETTINGS_BYTES }
    }
}

/// Settings handed to a plugin's `configure`, always as JSON text.
#[derive(Debug, Clone)]
pub struct Settings {
    /// JSON text.
    pub json: String,
    /// Where it came from, if from a file.
    pub file: Option<PathBuf>,
    /// Where a settings file was looked for, when none was found: a plugin
    /// that then refuses its (empty) settings is refused with this, so the
    /// operator sees which file name was expected.
    pub looked_for: Option<String>,
}

impl Settings {
    /// What a plugin gets when it has no settings file.
    pub fn none() -> Self {
        Self { json: "{}".into(), file: None, looked_for: None }
    }

    /// Reads a JSON or YAML settings file named by the user (`tollgate eval
    /// --settings`), wherever it is, up to [`DEFAULT_MAX_SETTINGS_BYTES`];
    /// YAML is converted to JSON so plugins parse one format.
    pub fn from_file(file: &Path) -> Result<Self, Refusal> {
        Self::read(file, None, DEFAULT_MAX_SETTINGS_BYTES)
    }

    /// Reads a settings file of a plugin directory: at most `max_bytes`, and
    /// only from within `dir` (the canonical directory) once symbolic
    /// links are followed.
    fn read(file: &Path, dir: Option<&Path>, max_bytes: u64) -> Result<Self, Refusal> {
        let refuse = |reason| Refusal::SettingsFile { file: file.to_path_buf(), reason };
        let text = read_settings_text(file, dir, max_bytes).map_err(refuse)?;
        Self::from_text(&text, file).map_err(refuse)
    }

    /// Parses settings text; `file` decides JSON or YAML by its extension.
    /// A parse error keeps the parser's words and position but nothing it
    /// quotes of the text (see [`redact::parse_error`]).
    pub fn from_text(text: &str, file: &Path) -> Result<Self, SettingsError> {
        let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let value: serde_json::Value = if is_yaml {
            serde_yaml::from_str(text).map_err(|e| SettingsError::Yaml(redact::parse_error(&e.to_string())))?
        } else {
            serde_json::from_str(text).map_err(|e| SettingsError::Json(redact::parse_error(&e.to_string())))?
        };
        Ok(Self { json: value.to_string(), file: Some(file.to_path_buf()), looked_for: None })
    }

    /// Every file name a settings file beside `wasm` may have, in the order
    /// they are looked for (see [`Settings::beside`]).
    pub fn candidates(wasm: &Path) -> Vec<PathBuf> {
        settings_stems(wasm)
            .iter()
            .flat_map(|stem| SETTINGS_SUFFIXES.iter().map(move |suffix| format!("{stem}{suffix}")))
            .map(|name| wasm.with_file_name(name))
            .collect()
    }

    /// The settings file beside a plugin file, if there is exactly one, else
    /// no settings (saying where they were looked for). It is read only if
    /// it is at most `max_bytes` and, links followed, inside the plugin's
    /// directory.
    ///
    /// Beside `<stem>.wasm` it is `<stem>.settings.json` (or `.yaml`, `.yml`),
    /// with `-` and `_` in the stem taken as the same: cargo writes crate
    /// `my-policy` as `my_policy.wasm`, while its settings file is named
    /// after the crate.
    pub fn beside(wasm: &Path, max_bytes: u64) -> Result<Self, Refusal> {
        // Anything there but a dangling link (a file being removed, as a
        // ConfigMap volume does it): a directory or pipe is refused, not
        // taken for "no settings".
        let found: Vec<PathBuf> = Self::candidates(wasm).into_iter().filter(|p| p.exists()).collect();
        match found.as_slice() {
            [] => {
                let dir = wasm.parent().map_or_else(String::new, |d| format!(" in {}", d.display()));
                let names: Vec<String> = settings_stems(wasm).iter().map(|s| format!("{s}.settings.json")).collect();
                Ok(Self { looked_for: Some(format!("{} (or .yaml, .yml){dir}", names.join(", "))), ..Self::none() })
            }
            [one] => {
                let dir = wasm.parent().unwrap_or(Path::new("."));
                let dir = dir.canonicalize().map_err(|e| Refusal::SettingsFile {
                    file: one.clone(),
                    reason: SettingsError::Read(Arc::new(e)),
                })?;
                Self::read(one, Some(&dir), max_bytes)
            }
            [first, ..] => Err(Refusal::SettingsFile {
                file: first.clone(),
                reason: SettingsError::Several(
                    found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                ),
            }),
        }
    }

    /// Where these settings came from, in words, for a refusal's reason.
    pub fn origin(&self) -> String {
        match (&self.file, &self.looked_for) {
            (Some(file), _) => format!("settings from {}", file.display()),
            (None, Some(looked_for)) => format!("no settings file; looked for {looked_for}"),
            (None, None) => "no settings given".into(),
        }
    }
}

/// The stems a settings file beside `wasm` may have: its own, and with `_`
/// and `-` swapped.
fn settings_stems(wasm: &Path) -> Vec<String> {
    let Some(stem) = wasm.file_stem().and_then(|s| s.to_str()) else { return Vec::new() };
    let mut stems = vec![stem.to_string()];
    for twin in [stem.replace('_', "-"), stem.replace('-', "_")] {
        if !stems.contains(&twin) {
            stems.push(twin);
        }
    }
    stems
}

/// The text of a settings file: opened first, then checked (where it really
/// is, its size) on the open file, so the file checked is the file read even
/// if a link is swapped meanwhile; and read no further than `max_bytes`,
/// even if it grows.
fn read_settings_text(file: &Path, dir: Option<&Path>, max_bytes: u64) -> Result<String, SettingsError> {
    let io = |e| SettingsError::Read(Arc::new(e));
    let mut opened = match open_regular(file).map_err(io)? {
        Ok(opened) => opened,
        Err(what) => return Err(SettingsError::NotAFile(what)),
    };
    if let Some(dir) = dir
        && !real_path(&opened, file).map_err(io)?.starts_with(dir)
    {
        return Err(SettingsError::OutsideDir);
    }
    let size = opened.metadata().map_err(io)?.len();
    if size > max_bytes {
        return Err(SettingsError::TooLarge { size, limit: max_bytes });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut opened).take(max_bytes + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(SettingsError::TooLarge { size: bytes.len() as u64, limit: max_bytes });
    }
    String::from_utf8(bytes).map_err(|_| SettingsError::NotText)
}

/// Opens `path` for reading if it is a regular file (links followed), else
/// says what it is. The open does not block: opening a named pipe would
/// wait for a writer, and the type is checked on the open file, so a file
/// swapped meanwhile is not read unchecked. (`O_NONBLOCK` changes nothing
/// for reading a regular file.)
fn open_regular(path: &Path) -> std::io::Result<Result<File, &'static str>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path)?;
    let kind = file.metadata()?.file_type();
    Ok(match () {
        () if kind.is_file() => Ok(file),
        () if kind.is_dir() => Err("directory"),
        () if kind.is_fifo() => Err("named pipe"),
        () if kind.is_char_device() || kind.is_block_device() => Err("device"),
        () if kind.is_socket() => Err("socket"),
        () => Err("special file"),
    })
}

/// Where an open file really is, every link resolved: from `/proc` for the
/// file as opened, else (no `/proc`) by resolving its path again.
fn real_path(opened: &File, path: &Path) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())).or_else(|_| path.canonicalize())
}

/// Reads a plugin file, its header first: a file that is not WebAssembly is
/// refused from its first 8 bytes, and one over `max_bytes` from its size,
/// without reading the rest. The read stops past `max_bytes` should the file
/// grow meanwhile.
pub fn read_plugin(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Refusal> {
    let io = |e| Refusal::Read(Arc::new(e));
    let mut file = open_regular(path).map_err(io)?.map_err(Refusal::NotAFile)?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    (&mut file).take(HEADER_LEN as u64).read_to_end(&mut header).map_err(io)?;
    sniff(&header)?;
    let size = file.metadata().map_err(io)?.len();
    if size > max_bytes {
        return Err(Refusal::TooLarge { size, limit: max_bytes });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend_from_slice(&header);
    (&mut file).take((max_bytes + 1).saturating_sub(HEADER_LEN as u64)).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Refusal::TooLarge { size: bytes.len() as u64, limit: max_bytes });
    }
    Ok(bytes)
}

/// Loads plugins into a runtime.
#[derive(Clone)]
pub struct Loader {
    runtime: Arc<Runtime>,
    cache: Option<Arc<CodeCache>>,
    limits: FileLimits,
}

impl Loader {
    /// A loader for `runtime`, without a compiled-code cache, with the
    /// default [`FileLimits`].
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime, cache: None, limits: FileLimits::default() }
    }

    /// Caps the files it reads at `limits`.
    pub fn with_limits(mut self, limits: FileLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How large the files it reads may be.
    pub fn limits(&self) -> FileLimits {
        self.limits
    }

    /// Reads a plugin file under this loader's cap (see [`read_plugin`]).
    pub fn read_plugin(&self, path: &Path) -> Result<Vec<u8>, Refusal> {
        read_plugin(path, self.limits.max_plugin_bytes)
    }

    /// The settings beside a plugin file, under this loader's cap (see
    /// [`Settings::beside`]).
    pub fn settings_beside(&self, wasm: &Path) -> Result<Settings, Refusal> {
        Settings::beside(wasm, self.limits.max_settings_bytes)
    }

    /// Keeps compiled plugins in `cache`, so an unchanged file is never
    /// compiled again.
    pub fn with_cache(mut self, cache: Arc<CodeCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The runtime plugins are loaded into.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Loads one plugin file and the settings file beside it.
    pub fn load_file(&self, wasm: &Path) -> Result<Plugin, LoadError> {
        let fail = |reason| LoadError { file: wasm.to_path_buf(), reason };
        let bytes = self.read_plugin(wasm).map_err(fail)?;
        let settings = self.settings_beside(wasm).map_err(fail)?;
        self.load_bytes(wasm, &bytes, settings)
    }

    /// Loads a plugin from bytes; `origin` names it in logs and errors.
    pub fn load_bytes(&self, origin: &Path, bytes: &[u8], settings: Settings) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let plugin =
            self.check(origin, bytes, settings).map_err(|reason| LoadError { file: origin.to_path_buf(), reason })?;
        tracing::info!(
            plugin = plugin.name(),
            version = plugin.version(),
            kind = %plugin.kind(),
            file = %origin.display(),
            hash = &plugin.hash()[..12],
            cached = plugin.from_cache(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        Ok(plugin)
    }

    /// Checks and compiles a plugin file's bytes into a plugin: from the
    /// compiled-code cache when it holds them, else compiled, its metadata
    /// read and checked, and configured (into a snapshot when possible).
    fn check(&self, origin: &Path, bytes: &[u8], settings: Settings) -> Result<Plugin, Refusal> {
        sniff(bytes)?;
        let hash = hex::encode(Sha256::digest(bytes));
        let key = self.cache.as_ref().map(|cache| cache.key(&hash, &settings.json));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(hit) = cache.get(key, self.runtime.engine())
        {
            let (pre, exports) = self.link(&hit.component, hit.metadata.kind())?;
            let built = Built {
                contract_version: hit.contract_version,
                metadata: hit.metadata,
                configured: hit.configured,
                pre,
                exports,
            };
            return Ok(self.plugin(origin, hash, settings, built, true));
        }
        let component = Component::new(self.runtime.engine(), bytes).map_err(|e| Refusal::Compile(format!("{e:#}")))?;
        let (kind, contract_version) = world_of(&component, self.runtime.engine())?;
        let (pre, exports) = self.link(&component, kind)?;
        let metadata = self.read_metadata(&origin.display().to_string(), &pre, &exports)?;
        let name = metadata.info().name.clone();
        let (component, pre, exports, configured) =
            match self.snapshot(&name, bytes, kind, &contract_version, &settings)? {
                Some(configured) => {
                    let component = Component::new(self.runtime.engine(), &configured)
                        .map_err(|e| Refusal::Compile(format!("configured snapshot: {e:#}")))?;
                    let (pre, exports) = self.link(&component, kind)?;
                    (component, pre, exports, true)
                }
                None => {
                    self.configure_once(&name, &pre, &exports, &settings)?;
                    (component, pre, exports, false)
                }
            };
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            cache.put(key, &component, &metadata, &contract_version, configured);
        }
        let built = Built { contract_version, metadata, configured, pre, exports };
        Ok(self.plugin(origin, hash, settings, built, false))
    }

    /// `component` linked against the host, with `kind`'s functions found.
    fn link(&self, component: &Component, kind: Kind) -> Result<(InstancePre<Sandbox>, Exports), Refusal> {
        let link = |e: wasmtime::Error| Refusal::Link { kind, reason: format!("{e:#}") };
        let pre = self.runtime.linker().instantiate_pre(component).map_err(link)?;
        let exports = Exports::of(kind, &pre).map_err(link)?;
        Ok((pre, exports))
    }

    /// The plugin's metadata, read from a fresh instance and checked as the
    /// API server would check it.
    fn read_metadata(
        &self,
        label: &str,
        pre: &InstancePre<Sandbox>,
        exports: &Exports,
    ) -> Result<PluginMetadata, Refusal> {
        let deadline = self.runtime.options().load_deadline;
        let metadata =
            sandbox::block_on(sandbox::call(self.runtime.stores(), label, pre, deadline, async |store, instance| {
                exports.load(&mut *store, instance)?.metadata(store).await
            }))
            .map_err(Refusal::Metadata)?;
        let problems = validation::problems(&metadata);
        if !problems.is_empty() {
            return Err(Refusal::InvalidMetadata(problems));
        }
        Ok(metadata)
    }

    /// The component configured with `settings` as a snapshot, or `None`
    /// when snapshots are unavailable for it (it is then configured on every
    /// call); refused when `configure` fails or refuses the settings.
    fn snapshot(
        &self,
        name: &str,
        bytes: &[u8],
        kind: Kind,
        contract_version: &str,
        settings: &Settings,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let Some(snapshotter) = self.runtime.snapshotter() else { return Ok(None) };
        let deadline = self.runtime.options().load_deadline;
        match snapshotter.configure(name, bytes, kind, contract_version, &settings.json, deadline) {
            Ok(configured) => Ok(Some(configured)),
            Err(SnapshotError::Call(error)) => Err(Refusal::Configure(redact_guest_said(error, &settings.json))),
            Err(SnapshotError::Refused(message)) => Err(settings_refused(&message, settings)),
            Err(SnapshotError::Unsupported(why)) => {
                tracing::warn!(plugin = %name, %why, "no configured snapshot; configuring on every call");
                Ok(None)
            }
        }
    }

    /// Runs `configure` once on a fresh instance, so settings it refuses
    /// refuse the plugin at load rather than fail every call.
    fn configure_once(
        &self,
        name: &str,
        pre: &InstancePre<Sandbox>,
        exports: &Exports,
        settings: &Settings,
    ) -> Result<(), Refusal> {
        let deadline = self.runtime.options().load_deadline;
        let json = settings.json.as_str();
        let accepted =
            sandbox::block_on(sandbox::call(self.runtime.stores(), name, pre, deadline, async |store, instance| {
                exports.load(&mut *store, instance)?.configure(store, json).await
            }))
            .map_err(|error| Refusal::Configure(redact_guest_said(error, &settings.json)))?;
        accepted.map_err(|message| settings_refused(&message, settings))
    }

    /// The one place a [`Plugin`] is put together.
    fn plugin(&self, origin: &Path, hash: String, settings: Settings, built: Built, from_cache: bool) -> Plugin {
        Plugin {
            origin: origin.to_path_buf(),
            hash,
            contract_version: built.contract_version,
            metadata: built.metadata,
            settings: settings.json,
            configured: built.configured,
            settings_file: settings.file,
            loaded_at: std::time::SystemTime::now(),
            from_cache,
            instances: Instances::new(self.runtime.pool().clone(), built.pre, built.exports, built.configured),
            runtime: self.runtime.clone(),
        }
    }
}

/// What compiling (or the cache) established about a plugin, and its code
/// linked against the host.
struct Built {
    contract_version: String,
    metadata: PluginMetadata,
    /// Whether its code is a configured snapshot.
    configured: bool,
    pre: InstancePre<Sandbox>,
    exports: Exports,
}

/// The plugin refused `settings` with `message`, which is redacted: it is
/// the plugin author's text, and often quotes the value it did not like.
fn settings_refused(message: &str, settings: &Settings) -> Refusal {
    Refusal::Settings { message: redact::plugin_message(message, &settings.json), settings: settings.origin() }
}

/// A failed `configure` call, with what the plugin last wrote on stderr (a
/// panic message may quote its settings) redacted.
fn redact_guest_said(error: CallError, settings_json: &str) -> CallError {
    match error {
        CallError::Trap { trap, guest_said: Some(said) } => {
            CallError::Trap { trap, guest_said: Some(redact::plugin_message(&said, settings_json)) }
        }
        other => other,
    }
}

/// Plugin files of a directory, sorted. Hidden files are skipped: copy tools
/// and editors write them while a file is being replaced. So are dangling
/// links (a file being removed); anything else named `*.wasm`, a directory
/// or a pipe, is listed, to be refused with the reason.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, DirError> {
    let fail = |error| DirError { dir: dir.to_path_buf(), error };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
        if !hidden && path.extension().is_some_and(|e| e == PLUGIN_EXTENSION) && path.exists() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Bytes of a WebAssembly header: `\0asm`, then a version (core modules) or
/// a version and layer (components).
const HEADER_LEN: usize = 8;

/// Tells a component from a core module from anything else by the header,
/// so the operator gets the precise reason.
fn sniff(bytes: &[u8]) -> Result<(), Refusal> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if !bytes.starts_with(MAGIC) {
        return Err(Refusal::NotWasm);
    }
    if bytes.get(4..8) == Some(&CORE_VERSION[..]) {
        return Err(Refusal::CoreModule);
    }
    Ok(())
}

/// Which kind a component is, from the Tollgate interface it exports, and
/// which contract version it was built against.
fn world_of(component: &Component, engine: &wasmtime::Engine) -> Result<(Kind, String), Refusal> {
    let exports: Vec<String> = component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
    let mut found = Vec::new();
    let mut unsupported = None;
    for name in &exports {
        let Some((interface, version)) = contract::parse_export(name) else { continue };
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.interface() == interface) else { continue };
        match version {
            Some(v) if contract::SUPPORTED_VERSIONS.contains(&v) => found.push((kind, v.to_string())),
            other => unsupported = Some(other.unwrap_or("an unversioned package").to_string()),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(match unsupported {
            Some(built) => Refusal::UnsupportedVersion {
                built: format!("{}@{built}", contract::PACKAGE),
                supported: contract::SUPPORTED_VERSIONS
                    .iter()
                    .map(|v| format!("{}@{v}", contract::PACKAGE))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            None => Refusal::NotAPlugin {
                expected: Kind::ALL
                    .iter()
                    .map(|k| k.export_name(contract::SUPPORTED_VERSIONS[0]))
                    .collect::<Vec<_>>()
                    .join(", "),
                found: exports.join(", "),
            },
        }),
        _ => Err(Refusal::SeveralKinds(found.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>().join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_the_file_kinds_apart() {
        assert!(matches!(sniff(b"hello"), Err(Refusal::NotWasm)));
        assert!(matches!(sniff(b"\0asm\x01\0\0\0"), Err(Refusal::CoreModule)));
        assert!(sniff(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn yaml_settings_become_json() {
        let s = Settings::from_text("emails:\n  - a@b.c\n", Path::new("x.settings.yaml")).unwrap();
        assert_eq!(s.json, r#"{"emails":["a@b.c"]}"#);
        let err = Settings::from_text("{not json", Path::new("x.settings.json")).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn a_plugin_file_is_refused_from_its_header_or_size_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("big.wasm");
        std::fs::write(&text, b"hello, not wasm").unwrap();
        assert!(matches!(read_plugin(&text, 4), Err(Refusal::NotWasm)), "the header decides before the size");
        let component = dir.path().join("c.wasm");
        std::fs::write(&component, b"\0asm\x0d\0\x01\0and then some").unwrap();
        let refused = read_plugin(&component, 10).unwrap_err();
        assert!(matches!(refused, Refusal::TooLarge { size: 21, limit: 10 }), "{refused}");
        assert!(refused.to_string().contains("--max-plugin-mib"), "{refused}");
        assert_eq!(read_plugin(&component, 21).unwrap().len(), 21);
    }

    #[test]
    fn settings_are_read_within_the_directory_and_their_size_limit() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.yaml");
        std::fs::write(&secret, "password: hunter2-very-secret\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let wasm = root.join("p.wasm");
        // A ConfigMap volume: `name -> ..data/name`, `..data -> ..<timestamp>`.
        std::fs::create_dir(root.join("..2026_01_01")).unwrap();
        std::fs::write(root.join("..2026_01_01/p.settings.json"), r#"{"a": 1}"#).unwrap();
        std::os::unix::fs::symlink("..2026_01_01", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/p.settings.json", root.join("p.settings.json")).unwrap();
        assert_eq!(Settings::beside(&wasm, 1024).unwrap().json, r#"{"a":1}"#);
        assert!(matches!(
            Settings::beside(&wasm, 4),
            Err(Refusal::SettingsFile { reason: SettingsError::TooLarge { size: 8, limit: 4 }, .. })
        ));

        std::fs::remove_file(root.join("p.settings.json")).unwrap();
        std::os::unix::fs::symlink(&secret, root.join("p.settings.yaml")).unwrap();
        let refused = Settings::beside(&wasm, 1024).unwrap_err().to_string();
        assert!(refused.contains("outside the plugin directory"), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");
    }

    #[test]
    fn a_settings_parse_error_does_not_quote_the_file() {
        let err = Settings::from_text("token: !!int Bearer SUPERSECRET\n", Path::new("x.settings.yaml"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SUPERSECRET") && err.contains("expected an integer at line 1"), "{err}");
        let err = Settings::from_text("{\"token\": \"Bearer SUPERSECRET\" x}", Path::new("x.settings.json"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SUPERSECRET") && err.contains("line 1 column"), "{err}");
    }
}
