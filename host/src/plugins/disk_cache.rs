//! The compiled-code cache: a plugin's final component (its configured
//! snapshot, or the original when it has none), compiled, with its metadata,
//! so a restart or an unchanged file never compiles or snapshots again.
//!
//! An entry is keyed by the component's SHA-256, its settings, Tollgate's
//! version and the engine's compatibility hash (wasmtime version and
//! configuration). Deserialising compiled code is unsafe with bytes from
//! anywhere else, so an entry records the SHA-256 of its code, which is
//! checked before loading; a missing, stale or corrupt entry is ignored and
//! rebuilt. The directory is created readable by its owner only.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::runtime::metadata::PluginMetadata;

/// A cached plugin.
pub struct Cached {
    /// The compiled component.
    pub component: Component,
    /// What `metadata()` returned.
    pub metadata: PluginMetadata,
    /// The contract version it was built against.
    pub contract_version: String,
    /// True when `component` is a configured snapshot.
    pub configured: bool,
}

/// The entry's description, beside its compiled code.
#[derive(Serialize, Deserialize)]
struct Entry {
    code_sha256: String,
    metadata: PluginMetadata,
    contract_version: String,
    configured: bool,
}

/// Compiled plugins on disk.
#[derive(Debug)]
pub struct CodeCache {
    dir: PathBuf,
    engine_fingerprint: u64,
}

impl CodeCache {
    /// A cache in `dir` for code compiled by `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self { dir: dir.to_path_buf(), engine_fingerprint: hasher.finish() })
    }

    /// The key of a component (by its SHA-256, hex) with its settings.
    pub fn key(&self, component_sha256: &str, settings_json: &str) -> String {
        let mut key = Sha256::new();
        key.update(env!("CARGO_PKG_VERSION"));
        key.update(self.engine_fingerprint.to_le_bytes());
        key.update(component_sha256);
        key.update(settings_json);
        hex::encode(key.finalize())
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("{key}.cwasm")), self.dir.join(format!("{key}.json")))
    }

    /// The entry for `key`, if there is a valid one.
    pub fn get(&self, key: &str, engine: &Engine) -> Option<Cached> {
        let (code_path, entry_path) = self.paths(key);
        let entry: Entry = serde_json::from_slice(&std::fs::read(&entry_path).ok()?).ok()?;
        let code = std::fs::read(&code_path).ok()?;
        if hex::encode(Sha256::digest(&code)) != entry.code_sha256 {
            tracing::warn!(entry = %code_path.display(), "cached code does not match its recorded hash; rebuilding");
            let _ = std::fs::remove_file(&code_path);
            return None;
        }
        // SAFETY: these bytes were written by `put` from code this engine
        // configuration compiled (the key includes its compatibility hash),
        // and they are byte for byte what was written (checked above).
        // wasmtime also refuses code from another version or configuration.
        let component = match unsafe { Component::deserialize(engine, &code) } {
            Ok(component) => component,
            Err(error) => {
                tracing::warn!(entry = %code_path.display(), %error, "cached code is unusable; rebuilding");
                return None;
            }
        };
        Some(Cached {
            component,
            metadata: entry.metadata,
            contract_version: entry.contract_version,
            configured: entry.configured,
        })
    }

    /// Stores a plugin under `key`. Failures are logged, never fatal: the
    /// cache only saves time.
    pub fn put(
        &self,
        key: &str,
        component: &Component,
        metadata: &PluginMetadata,
        contract_version: &str,
        configured: bool,
    ) {
        if let Err(error) = self.try_put(key, component, metadata, contract_version, configured) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot write the compiled-code cache");
        }
    }

    fn try_put(
        &self,
        key: &str,
        component: &Component,
        metadata: &PluginMetadata,
        contract_version: &str,
        configured: bool,
    ) -> io::Result<()> {
        let code = component.serialize().map_err(|e| io::Error::other(format!("{e:#}")))?;
        let entry = Entry {
            code_sha256: hex::encode(Sha256::digest(&code)),
            metadata: metadata.clone(),
            contract_version: contract_version.to_string(),
            configured,
        };
        let (code_path, entry_path) = self.paths(key);
        // Code first, description last, each renamed into place: a reader
        // sees a whole entry or none.
        write_atomically(&code_path, &code)?;
        write_atomically(&entry_path, &serde_json::to_vec(&entry).map_err(io::Error::other)?)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
