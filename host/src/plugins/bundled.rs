//! The reference plugins, built by `host/build.rs` and embedded in the
//! binary with their default settings, so `tollgate serve` runs with no
//! plugin directory at all.

use std::path::PathBuf;

use crate::plugins::loader::{Loader, Settings};
use crate::plugins::registry::LoadReport;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/bundled.rs"));
}

/// (file name, component, default settings) of every bundled plugin.
pub use generated::BUNDLED;

/// Loads every bundled plugin. Their origin reads `bundled:<file>`.
pub fn load(loader: &Loader) -> LoadReport {
    let mut report = LoadReport::default();
    for (file, bytes, settings) in BUNDLED {
        let origin = PathBuf::from(format!("bundled:{file}"));
        let settings = match settings {
            Some(text) => {
                let stem = file.trim_end_matches(".wasm");
                let settings_file = PathBuf::from(format!("bundled:{stem}.settings.json"));
                match Settings::from_text(text, &settings_file) {
                    Ok(s) => s,
                    Err(reason) => {
                        let reason = crate::plugins::error::Refusal::SettingsFile { file: settings_file, reason };
                        report.refused.push(crate::plugins::error::LoadError { file: origin, reason });
                        continue;
                    }
                }
            }
            None => Settings::none(),
        };
        match loader.load_bytes(&origin, bytes, settings).and_then(|p| report.registry.insert(p)) {
            Ok(_) => {}
            Err(refused) => report.refused.push(refused),
        }
    }
    report
}
