//! What the host says about a plugin to people and tools (`tollgate
//! inspect`, and the `/plugins` status endpoint): one serialisable record,
//! and a text rendering.

use std::fmt::Write as _;

use serde::Serialize;

use crate::plugins::plugin::Plugin;
use crate::plugins::registry::LoadReport;
use crate::runtime::contract::types::{Rule, SubjectKind, Webhook};
use crate::runtime::metadata::PluginMetadata;
use crate::runtime::metadata::{failure_policy_name, operation_name, scope_name};

/// One loaded plugin.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginSummary<'a> {
    /// Declared name.
    pub name: &'a str,
    /// Declared version.
    pub version: &'a str,
    /// File it came from.
    pub file: String,
    /// SHA-256 of the component.
    pub sha256: &'a str,
    /// Contract version it was built against.
    pub contract: String,
    /// Settings file, if any.
    pub settings_file: Option<String>,
    /// Admission path, if it answers admission requests.
    pub admission_path: Option<String>,
    /// When this version was loaded (seconds since the Unix epoch).
    pub loaded_at: u64,
    /// True when requests run on a configured snapshot.
    pub snapshot: bool,
    /// Everything it declared.
    pub metadata: &'a PluginMetadata,
}

impl<'a> From<&'a Plugin> for PluginSummary<'a> {
    fn from(p: &'a Plugin) -> Self {
        Self {
            name: p.name(),
            version: p.version(),
            file: p.origin().display().to_string(),
            sha256: p.hash(),
            contract: format!("{}@{}", crate::runtime::contract::PACKAGE, p.contract_version()),
            settings_file: p.settings_file().map(|f| f.display().to_string()),
            admission_path: p.metadata().admission_path(),
            loaded_at: p.loaded_at().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            snapshot: p.is_snapshot(),
            metadata: p.metadata(),
        }
    }
}

/// A refused file.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalSummary {
    /// The file.
    pub file: String,
    /// Why (settings values redacted).
    pub reason: String,
    /// Why, in the host's words only, without what the plugin itself wrote:
    /// what the unauthenticated `/plugins` page shows unless
    /// `--plugins-detail` is given (see [`crate::plugins::error::Refusal::host_words`]).
    #[serde(skip)]
    pub host_words: String,
}

impl RefusalSummary {
    /// This refusal as `/plugins` shows it: with the plugin's own words
    /// only when `detail` is on.
    pub fn for_status(&self, detail: bool) -> Self {
        let reason = if detail { self.reason.clone() } else { self.host_words.clone() };
        Self { file: self.file.clone(), reason, host_words: self.host_words.clone() }
    }
}

impl From<&crate::plugins::error::LoadError> for RefusalSummary {
    fn from(refused: &crate::plugins::error::LoadError) -> Self {
        Self {
            file: refused.file.display().to_string(),
            reason: refused.reason.to_string(),
            host_words: refused.reason.host_words(),
        }
    }
}

/// The plugin directory of a running server, as `/plugins` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DirStatus {
    /// The directory (absolute).
    pub path: String,
    /// `ok`, `empty` or `missing`.
    pub condition: DirCondition,
    /// Since when it has been empty or missing (seconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// What that means for what serves, in words.
    pub detail: String,
}

impl DirStatus {
    /// `path` in `condition` since `since`, with `serving` plugins serving.
    pub fn new(path: &std::path::Path, condition: DirCondition, since: std::time::SystemTime, serving: usize) -> Self {
        let detail = match condition {
            DirCondition::Ok => format!("read; {serving} plugin(s) serve from it"),
            DirCondition::Empty => format!(
                "empty: the {serving} plugin(s) loaded from it keep serving (an emptied directory is taken for a \
                 copy under way or a mistake; remove plugin files themselves, or restart, to stop serving them)"
            ),
            DirCondition::Missing => {
                format!("cannot be read: the {serving} plugin(s) loaded from it keep serving until it is back")
            }
        };
        let since = (condition != DirCondition::Ok)
            .then(|| since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        Self { path: path.display().to_string(), condition, since, detail }
    }
}

/// A whole load: plugins and refusals.
#[derive(Debug, Serialize)]
pub struct ReportSummary<'a> {
    /// Loaded plugins, by name.
    pub plugins: Vec<PluginSummary<'a>>,
    /// Refused files.
    pub refused: Vec<RefusalSummary>,
}

impl<'a> From<&'a LoadReport> for ReportSummary<'a> {
    fn from(report: &'a LoadReport) -> Self {
        Self {
            plugins: report.registry.iter().map(|p| PluginSummary::from(p.as_ref())).collect(),
            refused: report.refused.iter().map(RefusalSummary::from).collect(),
        }
    }
}

/// What a running server serves, and the files it refused last time it
/// looked (the `/plugins` status endpoint).
#[derive(Debug, Serialize)]
pub struct ServingSummary<'a> {
    /// Plugins serving, by name.
    pub plugins: Vec<PluginSummary<'a>>,
    /// Files refused by the latest load or rescan; for a file whose older
    /// version is serving, this is why the new one is not.
    pub refused: &'a [RefusalSummary],
    /// How webhook sync goes, when syncing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_sync: Option<SyncStatus>,
    /// The plugin directory, when serving one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirStatus>,
}

/// Human-readable text for a load report.
pub fn render_text(report: &LoadReport) -> String {
    let mut out = String::new();
    for plugin in report.registry.iter() {
        let info = plugin.metadata().info();
        let _ = writeln!(out, "{} {} ({})", info.name, info.version, plugin.kind());
        let _ = writeln!(out, "  {}", info.summary);
        let _ = writeln!(out, "  file: {}", plugin.origin().display());
        let _ = writeln!(out, "  sha256: {}", plugin.hash());
        if let Some(settings) = plugin.settings_file() {
            let _ = writeln!(out, "  settings: {}", settings.display());
        }
        match plugin.metadata() {
            PluginMetadata::Route(m) => {
                for r in &m.matches {
                    let hosts = if r.hosts.is_empty() { "*".to_string() } else { r.hosts.join(",") };
                    let methods = if r.methods.is_empty() { "*".to_string() } else { r.methods.join(",") };
                    let _ = writeln!(
                        out,
                        "  route: {methods} host={hosts} path={}* priority={}",
                        r.path_prefix, r.priority
                    );
                }
            }
            PluginMetadata::Allowlist(m) => {
                let routes = if m.routes.is_empty() { "every route".to_string() } else { m.routes.join(", ") };
                let _ = writeln!(out, "  checks: {} on {routes}", subject_name(m.subject));
            }
            PluginMetadata::Admission(_) => {}
        }
        if let (Some(webhook), Some(path)) = (plugin.metadata().webhook(), plugin.metadata().admission_path()) {
            render_webhook(&mut out, webhook, &path);
        }
    }
    for refused in &report.refused {
        let _ = writeln!(out, "REFUSED {}: {}", refused.file.display(), refused.reason);
    }
    out
}

fn render_webhook(out: &mut String, webhook: &Webhook, path: &str) {
    let _ = writeln!(
        out,
        "  admission: {path} failurePolicy={} timeout={}s{}",
        failure_policy_name(webhook.failure_policy),
        webhook.timeout_seconds,
        if webhook.mutating { " mutating" } else { "" }
    );
    for rule in &webhook.rules {
        let _ = writeln!(out, "  rule: {}", render_rule(rule));
    }
}

/// A rule as the API server spells its fields.
pub fn render_rule(rule: &Rule) -> String {
    let [ops, groups, versions, resources, scope] = rule_fields(rule, ",", "\"\"");
    format!("{ops} groups={groups} versions={versions} resources={resources} scope={scope}")
}

/// A rule's operations, API groups (the core group, named "", written as `core`),
/// versions, resources and scope, each list joined with `separator`.
pub fn rule_fields(rule: &Rule, separator: &str, core: &str) -> [String; 5] {
    let ops: Vec<&str> = rule.operations.iter().map(|o| operation_name(*o)).collect();
    let groups: Vec<&str> = rule.api_groups.iter().map(|g| if g.is_empty() { core } else { g.as_str() }).collect();
    [
        ops.join(separator),
        groups.join(separator),
        rule.api_versions.join(separator),
        rule.resources.join(separator),
        scope_name(rule.scope).to_string(),
    ]
}

/// What an allowlist checks, in words.
pub fn subject_name(subject: SubjectKind) -> &'static str {
    match subject {
        SubjectKind::Email => "e-mail",
        SubjectKind::ClientAddress => "client address",
        SubjectKind::Name => "name",
    }
}

/// What the plugin directory looks like to the host, as `/plugins`, the
/// readiness detail and the `tollgate_plugin_dir_*` gauges tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DirCondition {
    /// Read as it is; what serves is what it holds.
    #[default]
    Ok,
    /// It holds nothing at all (hidden files aside) while plugins serve:
    /// they keep serving. An emptied or recreated directory is most often a
    /// copy or sync half done (`rm -rf`, then copy), or a mistake, and for
    /// an admission controller serving nothing means enforcing nothing.
    /// Removing plugin files one by one still removes each, the last too,
    /// as long as anything else (a settings file, say) stays in the
    /// directory; a restart serves what the directory holds.
    Empty,
    /// It cannot be read (removed, or not readable): the plugins loaded
    /// from it keep serving until it can be read again.
    Missing,
}

/// How webhook sync goes: written by the sync tasks (the `sync` module), read
/// by readiness, `/plugins` and metrics.
#[derive(Debug, Default)]
pub struct SyncHealth {
    state: std::sync::Mutex<SyncStatus>,
}

/// A snapshot of [`SyncHealth`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncStatus {
    /// Some sync succeeded since the start.
    pub ever_applied: bool,
    /// The latest attempt failed, and why.
    pub error: Option<String>,
    /// Watching the configurations fails (changes by others are then
    /// repaired only at the next plugin change), and why.
    pub watch_error: Option<String>,
    /// When the latest successful sync ended.
    #[serde(skip)]
    pub last_success: Option<std::time::SystemTime>,
}

impl SyncHealth {
    /// The current status.
    pub fn status(&self) -> SyncStatus {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the status (a poisoned lock still holds a usable status).
    pub fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
