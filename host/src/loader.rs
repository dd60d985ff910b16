//! Loading plugins: a file, bytes, or a whole directory. Each file is checked
//! step by step (is it a component, which world and contract version, does it
//! link, is its metadata valid, does it accept its settings) and refused with
//! the file name and the first reason that applies. Loading is blocking CPU
//! work (compilation): call it from a blocking thread, not the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre};

use crate::cache::CodeCache;
use crate::contract::{self, Kind, admission, allowlist, route};
use crate::engine::Runtime;
use crate::error::{DirError, LoadError, Refusal};
use crate::instances::{Exports, Instances};
use crate::metadata::PluginMetadata;
use crate::plugin::Plugin;
use crate::registry::{LoadReport, Registry};
use crate::reload;
use crate::sandbox::{self, Sandbox};
use crate::snapshot::SnapshotError;
use crate::validation;

/// Extension of plugin files.
pub const PLUGIN_EXTENSION: &str = "wasm";

/// Settings files beside `<stem>.wasm`, in the order they are looked for.
const SETTINGS_SUFFIXES: [&str; 3] = [".settings.json", ".settings.yaml", ".settings.yml"];

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

    /// Reads a JSON or YAML settings file; YAML is converted to JSON so
    /// plugins parse one format.
    pub fn from_file(file: &Path) -> Result<Self, Refusal> {
        let refuse = |reason: String| Refusal::SettingsFile { file: file.to_path_buf(), reason };
        let text = std::fs::read_to_string(file).map_err(|e| refuse(format!("cannot read it: {e}")))?;
        Self::from_text(&text, file).map_err(refuse)
    }

    /// Parses settings text; `file` decides JSON or YAML by its extension.
    pub fn from_text(text: &str, file: &Path) -> Result<Self, String> {
        let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let value: serde_json::Value = if is_yaml {
            serde_yaml::from_str(text).map_err(|e| format!("is not valid YAML: {e}"))?
        } else {
            serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?
        };
        Ok(Self { json: value.to_string(), file: Some(file.to_path_buf()), looked_for: None })
    }

    /// The settings file beside a plugin file, if there is exactly one, else
    /// no settings (saying where they were looked for).
    ///
    /// Beside `<stem>.wasm` it is `<stem>.settings.json` (or `.yaml`, `.yml`),
    /// with `-` and `_` in the stem taken as the same: cargo writes crate
    /// `my-policy` as `my_policy.wasm`, while its settings file is named
    /// after the crate.
    pub fn beside(wasm: &Path) -> Result<Self, Refusal> {
        let Some(stem) = wasm.file_stem().and_then(|s| s.to_str()) else { return Ok(Self::none()) };
        let mut stems = vec![stem.to_string()];
        for twin in [stem.replace('_', "-"), stem.replace('-', "_")] {
            if !stems.contains(&twin) {
                stems.push(twin);
            }
        }
        let found: Vec<PathBuf> = stems
            .iter()
            .flat_map(|stem| SETTINGS_SUFFIXES.iter().map(move |suffix| format!("{stem}{suffix}")))
            .map(|name| wasm.with_file_name(name))
            .filter(|p| p.is_file())
            .collect();
        match found.as_slice() {
            [] => {
                let dir = wasm.parent().map_or_else(String::new, |d| format!(" in {}", d.display()));
                let names: Vec<String> = stems.iter().map(|s| format!("{s}.settings.json")).collect();
                Ok(Self { looked_for: Some(format!("{} (or .yaml, .yml){dir}", names.join(", "))), ..Self::none() })
            }
            [one] => Self::from_file(one),
            [first, ..] => Err(Refusal::SettingsFile {
                file: first.clone(),
                reason: format!(
                    "several settings files for one plugin ({}); keep one",
                    found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
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

/// Loads plugins into a runtime.
#[derive(Clone)]
pub struct Loader {
    runtime: Arc<Runtime>,
    cache: Option<Arc<CodeCache>>,
}

impl Loader {
    /// A loader for `runtime`, without a compiled-code cache.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime, cache: None }
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
        let bytes = std::fs::read(wasm).map_err(|e| fail(Refusal::Read(e)))?;
        let settings = Settings::beside(wasm).map_err(fail)?;
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

    /// Loads every `*.wasm` file of a directory, in name order. Files that
    /// fail are reported in [`LoadReport::refused`]; the rest serve. This is
    /// a rescan against nothing, so a first load and every later rescan
    /// follow the same rules.
    pub fn load_dir(&self, dir: &Path) -> Result<LoadReport, DirError> {
        let (registry, changes) = reload::rescan(self, dir, &Registry::default())?;
        Ok(LoadReport { registry, refused: changes.refused })
    }

    fn check(&self, origin: &Path, bytes: &[u8], settings: Settings) -> Result<Plugin, Refusal> {
        sniff(bytes)?;
        let engine = self.runtime.engine();
        let hash = hex::encode(Sha256::digest(bytes));
        let key = self.cache.as_ref().map(|cache| cache.key(&hash, &settings.json));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(hit) = cache.get(key, engine)
        {
            let kind = hit.metadata.kind();
            let link = |e: wasmtime::Error| Refusal::Link { kind, reason: format!("{e:#}") };
            let pre = self.runtime.linker().instantiate_pre(&hit.component).map_err(link)?;
            let exports = indices(kind, &pre).map_err(link)?;
            return Ok(Plugin {
                origin: origin.to_path_buf(),
                hash,
                contract_version: hit.contract_version,
                metadata: hit.metadata,
                settings: settings.json,
                configured: hit.configured,
                settings_file: settings.file,
                loaded_at: std::time::SystemTime::now(),
                from_cache: true,
                instances: Instances::new(self.runtime.clone(), pre, exports, hit.configured),
                runtime: self.runtime.clone(),
            });
        }
        let component = Component::new(engine, bytes).map_err(|e| Refusal::Compile(format!("{e:#}")))?;
        let (kind, contract_version) = world_of(&component, engine)?;
        let link = |e: wasmtime::Error| Refusal::Link { kind, reason: format!("{e:#}") };
        let pre = self.runtime.linker().instantiate_pre(&component).map_err(link)?;
        let exports = indices(kind, &pre).map_err(link)?;
        let label = origin.display().to_string();
        let deadline = self.runtime.options().load_deadline;

        let metadata =
            sandbox::block_on(sandbox::call(&self.runtime, &label, &pre, deadline, async |store, instance| {
                Ok(match &exports {
                    Exports::Admission(i) => {
                        PluginMetadata::Admission(i.load(&mut *store, instance)?.call_metadata(&mut *store).await?)
                    }
                    Exports::Route(i) => {
                        PluginMetadata::Route(i.load(&mut *store, instance)?.call_metadata(&mut *store).await?)
                    }
                    Exports::Allowlist(i) => {
                        PluginMetadata::Allowlist(i.load(&mut *store, instance)?.call_metadata(&mut *store).await?)
                    }
                })
            }))
            .map_err(Refusal::Metadata)?;
        let problems = validation::problems(&metadata);
        if !problems.is_empty() {
            return Err(Refusal::InvalidMetadata(problems));
        }

        let name = metadata.info().name.clone();
        let snapshot = match self.runtime.snapshotter() {
            Some(snapshotter) => {
                match snapshotter.configure(&name, bytes, kind, &contract_version, &settings.json, deadline) {
                    Ok(configured) => Some(configured),
                    Err(SnapshotError::Call(error)) => return Err(Refusal::Configure(error)),
                    Err(SnapshotError::Refused(message)) => {
                        return Err(Refusal::Settings { message, settings: settings.origin() });
                    }
                    Err(SnapshotError::Unsupported(why)) => {
                        tracing::warn!(plugin = %name, %why, "no configured snapshot; configuring on every call");
                        None
                    }
                }
            }
            None => None,
        };
        let (pre, exports, configured, component) = match snapshot {
            Some(configured) => {
                let component = Component::new(engine, &configured)
                    .map_err(|e| Refusal::Compile(format!("configured snapshot: {e:#}")))?;
                let pre = self.runtime.linker().instantiate_pre(&component).map_err(link)?;
                let exports = indices(kind, &pre).map_err(link)?;
                (pre, exports, true, component)
            }
            None => {
                let json = settings.json.as_str();
                let accepted =
                    sandbox::block_on(sandbox::call(&self.runtime, &name, &pre, deadline, async |store, instance| {
                        Ok(match &exports {
                            Exports::Admission(i) => {
                                i.load(&mut *store, instance)?.call_configure(&mut *store, json).await?
                            }
                            Exports::Route(i) => {
                                i.load(&mut *store, instance)?.call_configure(&mut *store, json).await?
                            }
                            Exports::Allowlist(i) => {
                                i.load(&mut *store, instance)?.call_configure(&mut *store, json).await?
                            }
                        })
                    }))
                    .map_err(Refusal::Configure)?;
                accepted.map_err(|message| Refusal::Settings { message, settings: settings.origin() })?;
                (pre, exports, false, component)
            }
        };
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            cache.put(key, &component, &metadata, &contract_version, configured);
        }

        Ok(Plugin {
            origin: origin.to_path_buf(),
            hash,
            contract_version,
            metadata,
            settings: settings.json,
            configured,
            settings_file: settings.file,
            loaded_at: std::time::SystemTime::now(),
            from_cache: false,
            instances: Instances::new(self.runtime.clone(), pre, exports, configured),
            runtime: self.runtime.clone(),
        })
    }
}

/// Where `kind`'s functions are in the component.
fn indices(kind: Kind, pre: &InstancePre<Sandbox>) -> wasmtime::Result<Exports> {
    Ok(match kind {
        Kind::Admission => Exports::Admission(admission::GuestIndices::new(pre)?),
        Kind::Route => Exports::Route(route::GuestIndices::new(pre)?),
        Kind::Allowlist => Exports::Allowlist(allowlist::GuestIndices::new(pre)?),
    })
}

/// Plugin files of a directory, sorted. Hidden files are skipped: copy tools
/// and editors write them while a file is being replaced.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, DirError> {
    let fail = |error| DirError { dir: dir.to_path_buf(), error };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
        if !hidden && path.extension().is_some_and(|e| e == PLUGIN_EXTENSION) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

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
        let err = Settings::from_text("{not json", Path::new("x.settings.json")).unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
