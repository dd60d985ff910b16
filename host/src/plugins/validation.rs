//! Checks plugin metadata the way the Kubernetes API server checks a
//! ValidatingWebhookConfiguration (k8s.io/kubernetes pkg/apis/admissionregistration
//! validation), plus Tollgate's own rules for names and routes, so a plugin
//! the API server would reject is refused at load, not at deploy.

use crate::runtime::contract::types::{
    LabelSelector, Operation, PluginInfo, RouteMatch, Rule, SelectorOperator, Webhook,
};
use crate::runtime::metadata::PluginMetadata;

/// Every problem found, each prefixed with the field it concerns. Empty when
/// the metadata is valid.
pub fn problems(metadata: &PluginMetadata) -> Vec<String> {
    let mut out = Problems::default();
    info(&mut out, metadata.info());
    match metadata {
        PluginMetadata::Admission(m) => webhook(&mut out, "webhook", &m.webhook),
        PluginMetadata::Route(m) => {
            if m.matches.is_empty() {
                out.push("matches", "must declare at least one route match".into());
            }
            for (i, route) in m.matches.iter().enumerate() {
                route_match(&mut out, &format!("matches[{i}]"), route);
            }
        }
        PluginMetadata::Allowlist(m) => {
            for (i, route) in m.routes.iter().enumerate() {
                if !is_dns1123_label(route) {
                    out.push(&format!("routes[{i}]"), format!("{route:?} is not a plugin name (DNS-1123 label)"));
                }
            }
            if let Some(hook) = &m.webhook {
                webhook(&mut out, "webhook", hook);
            }
        }
    }
    out.0
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, field: &str, problem: String) {
        self.0.push(format!("{field}: {problem}"));
    }
}

fn info(out: &mut Problems, info: &PluginInfo) {
    if !is_dns1123_label(&info.name) {
        out.push(
            "name",
            format!(
                "{:?} must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', \
                 starting and ending with a letter or digit",
                info.name
            ),
        );
    }
    if semver::Version::parse(&info.version).is_err() {
        out.push("version", format!("{:?} is not a semantic version like 1.2.3", info.version));
    }
    if info.summary.trim().is_empty() {
        out.push("summary", "must not be empty".into());
    } else if info.summary.contains('\n') {
        out.push("summary", "must be one line".into());
    }
}

fn webhook(out: &mut Problems, field: &str, hook: &Webhook) {
    if hook.rules.is_empty() {
        out.push(&format!("{field}.rules"), "must declare at least one rule".into());
    }
    for (i, r) in hook.rules.iter().enumerate() {
        rule(out, &format!("{field}.rules[{i}]"), r);
    }
    if !(1..=30).contains(&hook.timeout_seconds) {
        out.push(
            &format!("{field}.timeoutSeconds"),
            format!("{} must be between 1 and 30 seconds", hook.timeout_seconds),
        );
    }
    if let Some(path) = &hook.path {
        webhook_path(out, &format!("{field}.path"), path);
    }
    for (name, selector) in [("namespaceSelector", &hook.namespace_selector), ("objectSelector", &hook.object_selector)]
    {
        if let Some(selector) = selector {
            label_selector(out, &format!("{field}.{name}"), selector);
        }
    }
}

fn rule(out: &mut Problems, field: &str, rule: &Rule) {
    if rule.operations.is_empty() {
        out.push(&format!("{field}.operations"), "Required value".into());
    } else if rule.operations.len() > 1 && rule.operations.contains(&Operation::All) {
        out.push(&format!("{field}.operations"), "if '*' is present, must not specify other operations".into());
    }
    wildcard_list(out, &format!("{field}.apiGroups"), &rule.api_groups, "API groups", true);
    wildcard_list(out, &format!("{field}.apiVersions"), &rule.api_versions, "API versions", false);
    resources(out, &format!("{field}.resources"), &rule.resources);
}

/// apiGroups / apiVersions: at least one; '*' only alone. Versions may not
/// be empty strings; the core group is the empty string.
fn wildcard_list(out: &mut Problems, field: &str, items: &[String], what: &str, empty_ok: bool) {
    if items.is_empty() {
        out.push(field, "Required value".into());
        return;
    }
    if items.len() > 1 && items.iter().any(|i| i == "*") {
        out.push(field, format!("if '*' is present, must not specify other {what}"));
    }
    if !empty_ok && items.iter().any(String::is_empty) {
        out.push(field, format!("{what} must not be empty strings"));
    }
}

/// The API server's validateResources, rule for rule.
fn resources(out: &mut Problems, field: &str, resources: &[String]) {
    if resources.is_empty() {
        out.push(field, "Required value".into());
        return;
    }
    let mut with_wildcard_sub = Vec::new(); // "x/*"
    let mut sub_with_wildcard_res = Vec::new(); // "*/x"
    let mut has_double_wildcard = false;
    let mut has_single_wildcard = false;
    let mut has_plain_resource = false;
    for (i, entry) in resources.iter().enumerate() {
        let here = format!("{field}[{i}]");
        if entry.is_empty() {
            out.push(&here, "Required value".into());
            continue;
        }
        if entry == "*/*" {
            has_double_wildcard = true;
        }
        if entry == "*" {
            has_single_wildcard = true;
        }
        let Some((res, sub)) = entry.split_once('/') else {
            has_plain_resource |= entry != "*";
            continue;
        };
        if with_wildcard_sub.contains(&res) {
            out.push(&here, format!("if '{res}/*' is present, must not specify {entry}"));
        }
        if sub_with_wildcard_res.contains(&sub) {
            out.push(&here, format!("if '*/{sub}' is present, must not specify {entry}"));
        }
        if sub == "*" {
            with_wildcard_sub.push(res);
        }
        if res == "*" {
            sub_with_wildcard_res.push(sub);
        }
    }
    if resources.len() > 1 && has_double_wildcard {
        out.push(field, "if '*/*' is present, must not specify other resources".into());
    }
    if has_single_wildcard && has_plain_resource {
        out.push(field, "if '*' is present, must not specify other resources without subresources".into());
    }
}

fn webhook_path(out: &mut Problems, field: &str, path: &str) {
    if !path.starts_with('/') {
        out.push(field, format!("{path:?} must start with '/'"));
    }
    if path.len() > 1024 {
        out.push(field, "must be at most 1024 characters".into());
    }
    if let Some(bad) = path.chars().find(|c| !(c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:@".contains(*c))) {
        out.push(field, format!("{path:?} contains {bad:?}, which is not allowed in a URL path"));
    }
    if path.split('/').any(|segment| segment == ".." || segment == ".") {
        out.push(field, format!("{path:?} must not contain '.' or '..' segments"));
    }
}

fn label_selector(out: &mut Problems, field: &str, selector: &LabelSelector) {
    for (key, value) in &selector.match_labels {
        label_key(out, &format!("{field}.matchLabels"), key);
        label_value(out, &format!("{field}.matchLabels[{key}]"), value);
    }
    for (i, req) in selector.match_expressions.iter().enumerate() {
        let here = format!("{field}.matchExpressions[{i}]");
        label_key(out, &format!("{here}.key"), &req.key);
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn if req.values.is_empty() => {
                out.push(&format!("{here}.values"), "must be specified when operator is In or NotIn".into())
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !req.values.is_empty() => out
                .push(&format!("{here}.values"), "may not be specified when operator is Exists or DoesNotExist".into()),
            _ => {}
        }
        for value in &req.values {
            label_value(out, &format!("{here}.values"), value);
        }
    }
}

/// A qualified name: optional DNS subdomain prefix and '/', then a name of
/// at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends.
fn label_key(out: &mut Problems, field: &str, key: &str) {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns1123_subdomain(prefix)
    {
        out.push(field, format!("{key:?}: prefix must be a DNS-1123 subdomain"));
    }
    if name.is_empty() || !is_label_value(name) {
        out.push(field, format!("{key:?} is not a valid label key"));
    }
}

fn label_value(out: &mut Problems, field: &str, value: &str) {
    if !value.is_empty() && !is_label_value(value) {
        out.push(field, format!("{value:?} is not a valid label value"));
    }
}

fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn route_match(out: &mut Problems, field: &str, route: &RouteMatch) {
    if !route.path_prefix.starts_with('/') {
        out.push(&format!("{field}.pathPrefix"), format!("{:?} must start with '/'", route.path_prefix));
    }
    for method in &route.methods {
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
            out.push(&format!("{field}.methods"), format!("{method:?} must be an upper-case HTTP method"));
        }
    }
    for host in &route.hosts {
        if !is_dns1123_subdomain(host) {
            out.push(&format!("{field}.hosts"), format!("{host:?} must be a lower-case host name without port"));
        }
    }
}

/// Lowercase alphanumerics and '-', alphanumeric at both ends, 1 to 63.
pub fn is_dns1123_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn resource_problems(items: &[&str]) -> Vec<String> {
        let mut out = Problems::default();
        resources(&mut out, "r", &strings(items));
        out.0
    }

    #[test]
    fn resources_follow_the_api_server() {
        assert!(resource_problems(&["pods", "pods/status", "configmaps"]).is_empty());
        assert!(resource_problems(&["*"]).is_empty());
        assert!(resource_problems(&["*/*"]).is_empty());
        assert!(resource_problems(&["*", "*/status"]).is_empty());
        assert!(resource_problems(&["pods/*", "deployments/scale"]).is_empty());
        assert_eq!(resource_problems(&["*", "pods"]).len(), 1);
        assert_eq!(resource_problems(&["*/*", "pods"]).len(), 1);
        assert_eq!(resource_problems(&["pods/*", "pods/status"]).len(), 1);
        assert_eq!(resource_problems(&["*/status", "pods/status"]).len(), 1);
        assert_eq!(resource_problems(&[""]).len(), 1);
        assert_eq!(resource_problems(&[]).len(), 1);
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("namespace-validation"));
        assert!(is_dns1123_label("a"));
        assert!(!is_dns1123_label("Namespace"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a_b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("tollgate.example.com"));
        assert!(!is_dns1123_subdomain("tollgate..com"));
    }

    #[test]
    fn selectors() {
        use crate::runtime::contract::types::LabelRequirement;
        let mut out = Problems::default();
        label_selector(
            &mut out,
            "s",
            &LabelSelector {
                match_labels: vec![("app.kubernetes.io/name".into(), "x".into()), ("bad key!".into(), "v".into())],
                match_expressions: vec![
                    LabelRequirement { key: "k".into(), operator: SelectorOperator::In, values: vec![] },
                    LabelRequirement { key: "k".into(), operator: SelectorOperator::Exists, values: strings(&["v"]) },
                    LabelRequirement { key: "k".into(), operator: SelectorOperator::NotIn, values: strings(&["ok"]) },
                ],
            },
        );
        assert_eq!(out.0.len(), 3, "{:?}", out.0);
    }

    #[test]
    fn paths() {
        let check = |p: &str| {
            let mut out = Problems::default();
            webhook_path(&mut out, "p", p);
            out.0.len()
        };
        assert_eq!(check("/validate/x"), 0);
        assert_eq!(check("validate"), 1);
        assert_eq!(check("/a b"), 1);
        assert_eq!(check("/a/../b"), 1);
    }
}
