//! Webhook configurations generated from plugin metadata: one
//! `ValidatingWebhookConfiguration` entry per admission plugin (a
//! `MutatingWebhookConfiguration` entry for plugins that declare themselves
//! mutating), built with k8s-openapi's types so nobody writes webhook YAML by
//! hand. `tollgate webhooks` prints them; `tollgate serve --sync-webhooks`
//! applies them to the cluster (the `sync` module).
//!
//! The metadata was already checked the way the API server checks it when
//! the plugin loaded ([`crate::plugins::validation`]); what is checked here are the
//! options that are not the plugin's (domain, service, URL, CA bundle).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use crate::plugins::registry::Registry;
use crate::plugins::validation::{is_dns1123_label, is_dns1123_subdomain};
use crate::runtime::contract::types::{self, SelectorOperator, Webhook};
use crate::runtime::metadata::{failure_policy_name, match_policy_name, operation_name, scope_name, side_effects_name};

/// Default domain of webhook names: `<plugin>.tollgate.io` has the three
/// dot-separated segments the API server wants.
pub const DEFAULT_DOMAIN: &str = "tollgate.io";
/// Default name of the generated configuration objects.
pub const DEFAULT_CONFIG_NAME: &str = "tollgate";
/// The namespace Tollgate runs in by default.
pub const DEFAULT_NAMESPACE: &str = "tollgate";
/// Label every namespace carries with its own name (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Field manager of server-side apply, and the `app.kubernetes.io/managed-by` label value.
pub const MANAGER: &str = "tollgate";

/// How the API server reaches Tollgate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Through a Service in the cluster; the path comes from each plugin.
    Service {
        /// Service name.
        name: String,
        /// Service namespace.
        namespace: String,
        /// Service port.
        port: u16,
    },
    /// At a URL outside the cluster, `https://host:port`, to which each
    /// plugin's path is appended.
    Url(String),
}

/// Where the API server gets the CA that signed Tollgate's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// No caBundle: the API server's own trust roots (rarely what you want).
    None,
    /// The PEM bundle itself, put in `caBundle`.
    Bundle(Vec<u8>),
    /// cert-manager's CA injector fills `caBundle` from this Certificate
    /// (`namespace/name`), via `cert-manager.io/inject-ca-from`.
    CertManager(String),
    /// OpenShift's service-ca operator fills `caBundle`, via
    /// `service.beta.openshift.io/inject-cabundle`.
    ServiceCa,
}

/// Everything about the generated configuration that is not the plugins'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Name of the configuration objects.
    pub config_name: String,
    /// Webhook names are `<plugin>.<domain>`.
    pub domain: String,
    /// How the API server reaches Tollgate.
    pub target: Target,
    /// Where `caBundle` comes from.
    pub ca: CaSource,
    /// Namespaces no webhook applies to: Tollgate's own, so a broken
    /// Tollgate cannot stop anyone repairing it.
    pub exclude_namespaces: Vec<String>,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            config_name: DEFAULT_CONFIG_NAME.into(),
            domain: DEFAULT_DOMAIN.into(),
            target: Target::Service { name: "tollgate".into(), namespace: DEFAULT_NAMESPACE.into(), port: 443 },
            ca: CaSource::None,
            exclude_namespaces: vec![DEFAULT_NAMESPACE.into()],
        }
    }
}

/// Why no configuration could be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// An option the API server would reject.
    #[error("{option}: {reason}")]
    Option {
        /// The option, as spelled on the command line.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA bundle file cannot be read or holds no certificate.
    #[error("CA bundle {}: {reason}", file.display())]
    CaBundle {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl WebhookOptions {
    /// Checks the options the way the API server would check the objects
    /// they end up in.
    pub fn check(&self) -> Result<(), GenerateError> {
        let bad = |option, reason: String| Err(GenerateError::Option { option, reason });
        if !is_dns1123_subdomain(&self.config_name) {
            return bad("--config-name", format!("{:?} must be a DNS-1123 subdomain", self.config_name));
        }
        if !is_dns1123_subdomain(&self.domain) || !self.domain.contains('.') {
            return bad(
                "--domain",
                format!(
                    "{:?} must be a DNS-1123 subdomain of at least two segments (webhook names \
                     `<plugin>.<domain>` need three)",
                    self.domain
                ),
            );
        }
        match &self.target {
            Target::Service { name, namespace, port } => {
                if !is_dns1123_label(name) {
                    return bad("--service-name", format!("{name:?} must be a DNS-1123 label"));
                }
                if !is_dns1123_label(namespace) {
                    return bad("--service-namespace", format!("{namespace:?} must be a DNS-1123 label"));
                }
                if *port == 0 {
                    return bad("--service-port", "must be 1-65535".into());
                }
            }
            Target::Url(url) => check_url(url)?,
        }
        if let CaSource::CertManager(from) = &self.ca {
            match from.split_once('/') {
                Some((ns, name)) if is_dns1123_label(ns) && is_dns1123_subdomain(name) => {}
                _ => return bad("--inject-ca", format!("{from:?}: cert-manager wants <namespace>/<certificate>")),
            }
        }
        for ns in &self.exclude_namespaces {
            if !is_dns1123_label(ns) {
                return bad("--exclude-namespace", format!("{ns:?} is not a namespace name"));
            }
        }
        Ok(())
    }
}

/// The API server calls webhooks over HTTPS only, without query or fragment.
fn check_url(url: &str) -> Result<(), GenerateError> {
    let bad = |reason: String| Err(GenerateError::Option { option: "--url", reason });
    let Ok(uri) = url.parse::<http::Uri>() else {
        return bad(format!("{url:?} is not a URL"));
    };
    if uri.scheme_str() != Some("https") {
        return bad(format!("{url:?} must start with https:// (the API server calls webhooks over TLS only)"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return bad(format!("{url:?} has no host"));
    }
    if uri.query().is_some() || url.contains('#') {
        return bad(format!("{url:?} must not have a query or fragment"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return bad(format!("{url:?} must not have a path: each plugin's path is appended"));
    }
    Ok(())
}

/// Reads a PEM CA bundle and checks it holds at least one certificate.
pub fn read_ca_bundle(file: &Path) -> Result<Vec<u8>, GenerateError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let fail = |reason: String| GenerateError::CaBundle { file: file.to_path_buf(), reason };
    let pem = std::fs::read(file).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    Ok(pem)
}

/// The generated objects; either may be absent when no plugin needs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WebhookConfigs {
    /// Entries of validating plugins.
    pub validating: Option<ValidatingWebhookConfiguration>,
    /// Entries of mutating plugins.
    pub mutating: Option<MutatingWebhookConfiguration>,
}

impl WebhookConfigs {
    /// Names of the webhooks, validating then mutating.
    pub fn webhook_names(&self) -> Vec<&str> {
        let validating = self.validating.iter().flat_map(|c| c.webhooks.iter().flatten()).map(|w| w.name.as_str());
        let mutating = self.mutating.iter().flat_map(|c| c.webhooks.iter().flatten()).map(|w| w.name.as_str());
        validating.chain(mutating).collect()
    }

    /// The objects as a YAML stream (documents separated by `---`).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut docs = Vec::new();
        if let Some(config) = &self.validating {
            docs.push(serde_yaml::to_string(config)?);
        }
        if let Some(config) = &self.mutating {
            docs.push(serde_yaml::to_string(config)?);
        }
        Ok(docs.join("---\n"))
    }
}

/// One entry per admission plugin (and allowlist that answers admission
/// requests) in `registry`, in name order.
pub fn generate(registry: &Registry, options: &WebhookOptions) -> Result<WebhookConfigs, GenerateError> {
    options.check()?;
    let mut validating = Vec::new();
    let mut mutating = Vec::new();
    for plugin in registry.iter() {
        let (Some(hook), Some(path)) = (plugin.metadata().webhook(), plugin.metadata().admission_path()) else {
            continue;
        };
        let entry = entry(&format!("{}.{}", plugin.name(), options.domain), hook, &path, options);
        if hook.mutating { mutating.push(as_mutating(entry)) } else { validating.push(entry) }
    }
    let metadata = object_meta(options);
    Ok(WebhookConfigs {
        validating: (!validating.is_empty())
            .then(|| ValidatingWebhookConfiguration { metadata: metadata.clone(), webhooks: Some(validating) }),
        mutating: (!mutating.is_empty()).then_some(MutatingWebhookConfiguration { metadata, webhooks: Some(mutating) }),
    })
}

fn object_meta(options: &WebhookOptions) -> ObjectMeta {
    let annotations = match &options.ca {
        CaSource::CertManager(from) => Some(BTreeMap::from([("cert-manager.io/inject-ca-from".into(), from.clone())])),
        CaSource::ServiceCa => {
            Some(BTreeMap::from([("service.beta.openshift.io/inject-cabundle".into(), "true".into())]))
        }
        CaSource::None | CaSource::Bundle(_) => None,
    };
    ObjectMeta {
        name: Some(options.config_name.clone()),
        labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), MANAGER.into())])),
        annotations,
        ..ObjectMeta::default()
    }
}

fn entry(name: &str, hook: &Webhook, path: &str, options: &WebhookOptions) -> ValidatingWebhook {
    let client_config = WebhookClientConfig {
        ca_bundle: match &options.ca {
            CaSource::Bundle(pem) => Some(ByteString(pem.clone())),
            _ => None,
        },
        service: match &options.target {
            Target::Service { name, namespace, port } => Some(ServiceReference {
                name: name.clone(),
                namespace: namespace.clone(),
                path: Some(path.to_string()),
                port: Some(i32::from(*port)),
            }),
            Target::Url(_) => None,
        },
        url: match &options.target {
            Target::Url(base) => Some(format!("{}{path}", base.trim_end_matches('/'))),
            Target::Service { .. } => None,
        },
    };
    ValidatingWebhook {
        name: name.to_string(),
        admission_review_versions: vec!["v1".into()],
        client_config,
        failure_policy: Some(failure_policy_name(hook.failure_policy).into()),
        match_policy: Some(match_policy_name(hook.match_policy).into()),
        side_effects: side_effects_name(hook.side_effects).into(),
        // The plugin's own deadline is this less a margin (see
        // `Plugin::call_deadline`), so its answer beats the API server's timeout.
        timeout_seconds: Some(hook.timeout_seconds as i32),
        rules: Some(hook.rules.iter().map(rule).collect()),
        namespace_selector: namespace_selector(hook.namespace_selector.as_ref(), &options.exclude_namespaces),
        object_selector: hook.object_selector.as_ref().map(selector),
        match_conditions: None,
    }
}

fn as_mutating(hook: ValidatingWebhook) -> MutatingWebhook {
    MutatingWebhook {
        name: hook.name,
        admission_review_versions: hook.admission_review_versions,
        client_config: hook.client_config,
        failure_policy: hook.failure_policy,
        match_policy: hook.match_policy,
        side_effects: hook.side_effects,
        timeout_seconds: hook.timeout_seconds,
        rules: hook.rules,
        namespace_selector: hook.namespace_selector,
        object_selector: hook.object_selector,
        match_conditions: hook.match_conditions,
        // A plugin sees the object once; later mutations are not re-checked.
        reinvocation_policy: Some("Never".into()),
    }
}

fn rule(rule: &types::Rule) -> RuleWithOperations {
    RuleWithOperations {
        operations: Some(rule.operations.iter().map(|o| operation_name(*o).to_string()).collect()),
        api_groups: Some(rule.api_groups.clone()),
        api_versions: Some(rule.api_versions.clone()),
        resources: Some(rule.resources.clone()),
        scope: Some(scope_name(rule.scope).into()),
    }
}

/// The plugin's namespace selector, and the excluded namespaces on top.
fn namespace_selector(declared: Option<&types::LabelSelector>, exclude: &[String]) -> Option<LabelSelector> {
    let mut out = declared.map(selector).unwrap_or_default();
    if !exclude.is_empty() {
        out.match_expressions.get_or_insert_with(Vec::new).push(LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.into(),
            operator: "NotIn".into(),
            values: Some(exclude.to_vec()),
        });
    }
    (out != LabelSelector::default()).then_some(out)
}

fn selector(declared: &types::LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: (!declared.match_labels.is_empty()).then(|| declared.match_labels.iter().cloned().collect()),
        match_expressions: (!declared.match_expressions.is_empty()).then(|| {
            declared
                .match_expressions
                .iter()
                .map(|req| LabelSelectorRequirement {
                    key: req.key.clone(),
                    operator: match req.operator {
                        SelectorOperator::In => "In",
                        SelectorOperator::NotIn => "NotIn",
                        SelectorOperator::Exists => "Exists",
                        SelectorOperator::DoesNotExist => "DoesNotExist",
                    }
                    .into(),
                    values: (!req.values.is_empty()).then(|| req.values.clone()),
                })
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let ok = WebhookOptions::default();
        assert!(ok.check().is_ok());
        let with = |f: fn(&mut WebhookOptions)| {
            let mut o = WebhookOptions::default();
            f(&mut o);
            o.check().map_err(|e| e.to_string())
        };
        assert!(with(|o| o.domain = "local".into()).unwrap_err().contains("--domain"));
        assert!(with(|o| o.target = Target::Url("http://x:1".into())).unwrap_err().contains("https://"));
        assert!(with(|o| o.target = Target::Url("https://x:1/p".into())).unwrap_err().contains("path"));
        assert!(with(|o| o.target = Target::Url("https://x:1?a=b".into())).unwrap_err().contains("query"));
        assert!(with(|o| o.target = Target::Url("https://tollgate.example.com:8443".into())).is_ok());
        assert!(with(|o| o.ca = CaSource::CertManager("no-slash".into())).unwrap_err().contains("--inject-ca"));
        assert!(with(|o| o.exclude_namespaces = vec!["Bad".into()]).is_err());
    }

    #[test]
    fn own_namespace_is_added_to_the_declared_selector() {
        let declared =
            types::LabelSelector { match_labels: vec![("team".into(), "a".into())], match_expressions: vec![] };
        let merged = namespace_selector(Some(&declared), &["tollgate".into()]).unwrap();
        assert_eq!(merged.match_labels.unwrap().get("team").map(String::as_str), Some("a"));
        let expressions = merged.match_expressions.unwrap();
        assert_eq!(expressions.len(), 1);
        assert_eq!(expressions[0].operator, "NotIn");
        assert!(namespace_selector(None, &[]).is_none());
    }
}
