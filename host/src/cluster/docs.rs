//! Documentation generated from plugin metadata (`tollgate docs`): what each
//! plugin is, what it matches and what settings it takes, as JSON for tools
//! or Markdown for people. The metadata is the single source, as for the
//! webhook configurations.

use std::fmt::Write as _;

use serde::Serialize;

use crate::plugins::registry::Registry;
use crate::plugins::summary::{rule_fields, subject_name};
use crate::runtime::contract::types::{LabelSelector, SelectorOperator, Webhook};
use crate::runtime::metadata::PluginMetadata;
use crate::runtime::metadata::{failure_policy_name, match_policy_name, side_effects_name};

/// Output format of `tollgate docs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DocsFormat {
    /// One JSON document.
    Json,
    /// Markdown for people.
    Markdown,
}

/// One plugin's documentation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PluginDoc<'a> {
    /// Where the API server reaches it, if it answers admission requests.
    admission_path: Option<String>,
    /// Everything it declared (name, kind, version, doc, rules, routes...).
    #[serde(flatten)]
    metadata: &'a PluginMetadata,
}

/// Renders every plugin of `registry`, in name order.
pub fn render(registry: &Registry, format: DocsFormat) -> Result<String, serde_json::Error> {
    match format {
        DocsFormat::Json => {
            let plugins: Vec<PluginDoc> = registry
                .iter()
                .map(|p| PluginDoc { admission_path: p.metadata().admission_path(), metadata: p.metadata() })
                .collect();
            let mut json = serde_json::to_string_pretty(&serde_json::json!({ "plugins": plugins }))?;
            json.push('\n');
            Ok(json)
        }
        DocsFormat::Markdown => Ok(markdown(registry)),
    }
}

fn markdown(registry: &Registry) -> String {
    let mut out = String::from("# Tollgate plugins\n\n");
    if registry.is_empty() {
        out.push_str("No plugins.\n");
        return out;
    }
    out.push_str("| Plugin | Kind | Version | Summary |\n|---|---|---|---|\n");
    for plugin in registry.iter() {
        let info = plugin.metadata().info();
        let _ = writeln!(
            out,
            "| [{name}](#{name}) | {} | {} | {} |",
            plugin.kind(),
            info.version,
            cell(&info.summary),
            name = info.name
        );
    }
    for plugin in registry.iter() {
        let metadata = plugin.metadata();
        let info = metadata.info();
        let _ = write!(
            out,
            "\n## {}\n\n{} plugin, version {}. {}\n\n",
            info.name,
            plugin.kind(),
            info.version,
            info.summary
        );
        if !info.doc.trim().is_empty() {
            let _ = write!(out, "{}\n\n", info.doc.trim_end());
        }
        match metadata {
            PluginMetadata::Route(m) => {
                out.push_str("### Routes\n\n| Hosts | Path prefix | Methods | Priority |\n|---|---|---|---|\n");
                for r in &m.matches {
                    let _ = writeln!(
                        out,
                        "| {} | `{}` | {} | {} |",
                        or_any(&r.hosts),
                        r.path_prefix,
                        or_any(&r.methods),
                        r.priority
                    );
                }
                out.push('\n');
            }
            PluginMetadata::Allowlist(m) => {
                let routes = if m.routes.is_empty() { "every route".to_string() } else { m.routes.join(", ") };
                let _ = write!(out, "### Allowlist\n\nChecks the {} on {routes}.\n\n", subject_name(m.subject));
            }
            PluginMetadata::Admission(_) => {}
        }
        if let (Some(hook), Some(path)) = (metadata.webhook(), metadata.admission_path()) {
            webhook(&mut out, hook, &path);
        }
        out.push_str("### Settings\n\n");
        match &info.settings_doc {
            Some(doc) if !doc.trim().is_empty() => {
                let _ = writeln!(out, "{}", doc.trim_end());
            }
            _ => out.push_str("None.\n"),
        }
    }
    out
}

fn webhook(out: &mut String, hook: &Webhook, path: &str) {
    let _ = write!(
        out,
        "### Admission\n\n- Path: `{path}`\n- Kind: {}\n- Failure policy: {}\n- Timeout: {} s\n- Match policy: {}\n- Side effects: {}\n",
        if hook.mutating { "mutating" } else { "validating" },
        failure_policy_name(hook.failure_policy),
        hook.timeout_seconds,
        match_policy_name(hook.match_policy),
        side_effects_name(hook.side_effects),
    );
    if let Some(s) = &hook.namespace_selector {
        let _ = writeln!(out, "- Namespace selector: {}", selector(s));
    }
    if let Some(s) = &hook.object_selector {
        let _ = writeln!(out, "- Object selector: {}", selector(s));
    }
    out.push_str("\n| Operations | API groups | API versions | Resources | Scope |\n|---|---|---|---|---|\n");
    for rule in &hook.rules {
        let [ops, groups, versions, resources, scope] = rule_fields(rule, ", ", "\"\" (core)");
        let _ = writeln!(out, "| {ops} | {groups} | {versions} | {resources} | {scope} |");
    }
    out.push('\n');
}

/// A label selector in kubectl's `-l` syntax.
fn selector(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s.match_labels.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
    for req in &s.match_expressions {
        let values = req.values.join(",");
        parts.push(match req.operator {
            SelectorOperator::In => format!("`{} in ({values})`", req.key),
            SelectorOperator::NotIn => format!("`{} notin ({values})`", req.key),
            SelectorOperator::Exists => format!("`{}`", req.key),
            SelectorOperator::DoesNotExist => format!("`!{}`", req.key),
        });
    }
    if parts.is_empty() { "everything".into() } else { parts.join(", ") }
}

fn or_any(items: &[String]) -> String {
    if items.is_empty() { "any".into() } else { items.join(", ") }
}

/// Keeps a table cell on one line and its pipes literal.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
