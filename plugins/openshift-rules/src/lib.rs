//! What the OpenShift-style admission plugins share: name patterns from
//! settings, reading objects from the request, and the decision they make.
//!
//! Patterns take a fast path, since a regular expression costs more to
//! compile and to match than the rest of a decision: `^name$` is an exact
//! match and `^prefix.*` (or `^prefix`) a prefix match; only other
//! expressions are compiled as regular expressions (Go's `MatchString`
//! semantics: unanchored search).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// pod-validation's rules, shared by the plugin and the native baseline the
/// benchmarks compare it with, so both decide by the same code.
///
/// The pod is read into just what the rules need. serde skips the rest
/// without building it, and the strings borrow from the JSON text where it
/// has no escapes, so reading a pod allocates almost nothing (allocation was
/// a quarter of the plugin's time in Wasm).
pub mod pod {
    use std::borrow::Cow;

    use serde::Deserialize;

    use crate::{Decision, Patterns};

    /// `pod-validation.settings.json`.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Settings {
        /// Platform namespaces (regular expressions).
        pub protected_namespaces: Patterns,
        /// A protected namespace containing any of these is a customer one.
        pub customer_namespace_substrings: Vec<String>,
        /// Toleration keys customer pods may not have...
        pub blocked_toleration_keys: Vec<String>,
        /// ...with these effects.
        pub blocked_effects: Vec<String>,
    }

    /// What the rules read of an admission request.
    pub struct Request<'r> {
        /// `userInfo.username`.
        pub username: &'r str,
        /// `kind.kind`.
        pub kind: &'r str,
        /// `namespace`.
        pub namespace: Option<&'r str>,
        /// `object`, JSON text.
        pub object: Option<&'r str>,
        /// `oldObject`, JSON text.
        pub old_object: Option<&'r str>,
    }

    /// Rules 1-4 of OpenShift's pod webhook: pods outside platform
    /// namespaces may not tolerate the infra and control-plane taints.
    pub fn decide(s: &Settings, req: &Request) -> Decision {
        if req.username.is_empty() {
            return Decision::invalid("request has no username");
        }
        if req.kind != "Pod" {
            return Decision::invalid(format!("pod-validation handles Pod, not {:?}", req.kind));
        }
        // 1. The current pod (old for UPDATE/DELETE) and its namespace.
        let pod: Pod = match req.old_object.or(req.object).map(serde_json::from_str) {
            Some(Ok(pod)) => pod,
            Some(Err(e)) => return Decision::invalid(format!("pod is not a valid object: {e}")),
            None => return Decision::invalid("request carries no pod"),
        };
        let namespace: &str =
            if pod.metadata.namespace.is_empty() { req.namespace.unwrap_or_default() } else { &pod.metadata.namespace };
        // 2. Privileged: protected, and not one of the customer exceptions.
        let privileged = s.protected_namespaces.matches(namespace)
            && !s.customer_namespace_substrings.iter().any(|sub| namespace.contains(sub.as_str()));
        if privileged {
            return Decision::allow();
        }
        // 3. Customer pods may not tolerate the blocked taints.
        let blocked = pod.spec.tolerations.iter().find(|t| {
            s.blocked_toleration_keys.iter().any(|k| *k == t.key) && s.blocked_effects.iter().any(|e| *e == t.effect)
        });
        if let Some(t) = blocked {
            return Decision::deny(format!(
                "Not allowed to schedule a pod with {} {} toleration on an infra or control-plane node",
                t.effect, t.key
            ));
        }
        // 4.
        Decision::allow()
    }

    /// A Pod's namespace and tolerations.
    #[derive(Deserialize)]
    pub struct Pod<'a> {
        /// `metadata`, namespace only.
        #[serde(default, borrow)]
        pub metadata: Metadata<'a>,
        /// `spec`, tolerations only.
        #[serde(default, borrow)]
        pub spec: PodSpec<'a>,
    }

    /// The namespace of a pod.
    #[derive(Deserialize, Default)]
    pub struct Metadata<'a> {
        /// `namespace` (empty when the request names it instead).
        #[serde(default, borrow)]
        pub namespace: Cow<'a, str>,
    }

    /// The tolerations of a pod spec.
    #[derive(Deserialize, Default)]
    pub struct PodSpec<'a> {
        /// `tolerations`.
        #[serde(default, borrow)]
        pub tolerations: Vec<Toleration<'a>>,
    }

    /// One toleration.
    #[derive(Deserialize)]
    pub struct Toleration<'a> {
        /// `key` (empty matches every key).
        #[serde(default, borrow)]
        pub key: Cow<'a, str>,
        /// `effect`.
        #[serde(default, borrow)]
        pub effect: Cow<'a, str>,
    }
}

/// Implements the contract's admission interface for a plugin crate: keeps
/// the settings `configure` parsed (serde, into `$settings`) and answers
/// `validate` with `$decide(&settings, &request) -> Decision`. Expand it in
/// the plugin's crate root after `wit_bindgen::generate!`, whose types
/// (`Guest`, `AdmissionMetadata`, `AdmissionRequest`, `Verdict`) and
/// `export!` it uses.
#[macro_export]
macro_rules! admission_plugin {
    ($plugin:ident, settings: $settings:ty, metadata: $metadata:expr, decide: $decide:path $(,)?) => {
        thread_local! {
            static SETTINGS: ::std::cell::RefCell<Option<$settings>> = const { ::std::cell::RefCell::new(None) };
        }

        struct $plugin;

        impl Guest for $plugin {
            fn metadata() -> AdmissionMetadata {
                $metadata
            }

            fn configure(settings: String) -> Result<(), String> {
                let parsed: $settings = $crate::parse_settings(&settings)?;
                SETTINGS.with(|s| *s.borrow_mut() = Some(parsed));
                Ok(())
            }

            fn validate(request: AdmissionRequest) -> Verdict {
                let decision = SETTINGS.with(|s| match s.borrow().as_ref() {
                    Some(settings) => $decide(settings, &request),
                    None => {
                        $crate::Decision { allowed: false, code: Some(500), message: Some("not configured".into()) }
                    }
                });
                Verdict {
                    allowed: decision.allowed,
                    code: decision.code,
                    message: decision.message,
                    warnings: vec![],
                    patch: None,
                }
            }
        }

        export!($plugin);
    };
}

/// A decision, converted by each plugin into its contract's `verdict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// HTTP-like code of a denial.
    pub code: Option<u16>,
    /// Why.
    pub message: Option<String>,
}

impl Decision {
    /// Allow, silently.
    pub fn allow() -> Self {
        Self { allowed: true, code: None, message: None }
    }

    /// Allow, saying why (shown in audit logs).
    pub fn allow_because(message: impl Into<String>) -> Self {
        Self { allowed: true, code: None, message: Some(message.into()) }
    }

    /// Deny with 403 Forbidden.
    pub fn deny(message: impl Into<String>) -> Self {
        Self { allowed: false, code: Some(403), message: Some(message.into()) }
    }

    /// Refuse a request the plugin cannot interpret (400): never allow it.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { allowed: false, code: Some(400), message: Some(message.into()) }
    }
}

/// One name pattern.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
}

const META: &[char] = &['\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$'];

impl Pattern {
    fn parse(source: &str) -> Result<Self, String> {
        if let Some(body) = source.strip_prefix('^') {
            if let Some(name) = body.strip_suffix('$')
                && !name.contains(META)
            {
                return Ok(Self::Exact(name.to_string()));
            }
            let prefix = body.strip_suffix(".*").unwrap_or(body);
            if !prefix.contains(META) {
                return Ok(Self::Prefix(prefix.to_string()));
            }
        }
        regex_lite::Regex::new(source)
            .map(Self::Regex)
            .map_err(|e| format!("{source:?} is not a valid regular expression: {e}"))
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Self::Exact(name) => text == name,
            Self::Prefix(prefix) => text.starts_with(prefix.as_str()),
            Self::Regex(regex) => regex.is_match(text),
        }
    }
}

/// A list of regular expressions from settings; a text matches when any
/// of them does.
#[derive(Debug, Clone, Default)]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    /// Parses every pattern, or says which one is invalid.
    pub fn parse<S: AsRef<str>>(sources: &[S]) -> Result<Self, String> {
        sources.iter().map(|s| Pattern::parse(s.as_ref())).collect::<Result<_, _>>().map(Self)
    }

    /// True when any pattern matches `text`.
    pub fn matches(&self, text: &str) -> bool {
        self.0.iter().any(|p| p.matches(text))
    }

    /// True when any pattern matches any of `texts`.
    pub fn matches_any<S: AsRef<str>>(&self, texts: &[S]) -> bool {
        texts.iter().any(|t| self.matches(t.as_ref()))
    }
}

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sources = Vec::<String>::deserialize(deserializer)?;
        Self::parse(&sources).map_err(serde::de::Error::custom)
    }
}

/// The parts of any Kubernetes object the plugins read: name, namespace and
/// labels. serde skips everything else unread: reading `spec`, `status` and
/// the annotations into trees no rule looked at was 30% of
/// namespace-validation's time.
#[derive(Debug, Default, Deserialize)]
pub struct Object {
    /// `metadata`.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// `metadata` of an object.
#[derive(Debug, Default, Deserialize)]
pub struct ObjectMeta {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace (empty for cluster-scoped objects).
    #[serde(default)]
    pub namespace: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Parses an object of the request, if it has one.
pub fn parse_object(json: Option<&str>, field: &str) -> Result<Option<Object>, String> {
    json.map(|text| serde_json::from_str(text).map_err(|e| format!("{field} is not a valid object: {e}"))).transpose()
}

/// Parses settings text into `T`, prefixing errors so the operator knows
/// they come from the settings.
pub fn parse_settings<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("invalid settings: {e}"))
}

/// True when `groups` contains `group`.
pub fn has_group<S: AsRef<str>>(groups: &[S], group: &str) -> bool {
    groups.iter().any(|g| g.as_ref() == group)
}

/// True when `groups` contains any of `wanted`.
pub fn has_any_group<S: AsRef<str>, W: AsRef<str>>(groups: &[S], wanted: &[W]) -> bool {
    wanted.iter().any(|w| has_group(groups, w.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_the_fast_path_when_they_can() {
        let p = Patterns::parse(&["^default$", "^kube-.*", "^redhat-", "^openshift-(a|b)$"]).unwrap();
        assert!(matches!(p.0[0], Pattern::Exact(_)));
        assert!(matches!(p.0[1], Pattern::Prefix(_)));
        assert!(matches!(p.0[2], Pattern::Prefix(_)));
        assert!(matches!(p.0[3], Pattern::Regex(_)));
        assert!(p.matches("default"));
        assert!(!p.matches("default-configs"));
        assert!(p.matches("kube-system"));
        assert!(!p.matches("my-kube-ns"));
        assert!(p.matches("redhat-anything"));
        assert!(p.matches("openshift-b"));
        assert!(!p.matches("openshift-c"));
    }

    #[test]
    fn unanchored_patterns_search_like_go() {
        let p = Patterns::parse(&["monitoring"]).unwrap();
        assert!(p.matches("my-monitoring-ns"));
    }

    #[test]
    fn pod_strings_borrow_but_escaped_ones_still_read() {
        let json = r#"{"metadata": {"namespace": "team-a", "labels": {"x": "y"}},
            "spec": {"tolerations": [{"key": "node-role.kubernetes.io\/infra", "effect": "NoSchedule"}]}}"#;
        let pod: pod::Pod = serde_json::from_str(json).unwrap();
        assert!(matches!(pod.metadata.namespace, std::borrow::Cow::Borrowed("team-a")));
        assert_eq!(pod.spec.tolerations[0].key, "node-role.kubernetes.io/infra");
        assert_eq!(pod.spec.tolerations[0].effect, "NoSchedule");
        let bare: pod::Pod = serde_json::from_str("{}").unwrap();
        assert!(bare.metadata.namespace.is_empty() && bare.spec.tolerations.is_empty());
    }

    #[test]
    fn pod_rules() {
        let settings: pod::Settings = serde_json::from_str(
            r#"{"protectedNamespaces": ["^openshift-.*"], "customerNamespaceSubstrings": ["-customer"],
                "blockedTolerationKeys": ["node-role.kubernetes.io/infra"], "blockedEffects": ["NoSchedule"]}"#,
        )
        .unwrap();
        let pod = |namespace: &str, effect: &str| {
            format!(
                r#"{{"metadata": {{"namespace": "{namespace}"}}, "spec": {{"tolerations":
                    [{{"key": "node-role.kubernetes.io/infra", "effect": "{effect}"}}]}}}}"#
            )
        };
        let decide = |username: &str, object: &str| {
            let req = pod::Request { username, kind: "Pod", namespace: None, object: Some(object), old_object: None };
            let d = pod::decide(&settings, &req);
            (d.allowed, d.code)
        };
        assert_eq!(decide("alice", &pod("team-a", "NoSchedule")), (false, Some(403)));
        assert_eq!(decide("alice", &pod("team-a", "NoExecute")), (true, None));
        assert_eq!(decide("alice", &pod("openshift-monitoring", "NoSchedule")), (true, None));
        assert_eq!(decide("alice", &pod("openshift-customer", "NoSchedule")), (false, Some(403)));
        assert_eq!(decide("", &pod("team-a", "NoExecute")), (false, Some(400)));
        assert_eq!(decide("alice", r#"{"metadata": 5}"#), (false, Some(400)));
    }

    #[test]
    fn invalid_patterns_are_named() {
        let err = Patterns::parse(&["^ok$", "(unclosed"]).unwrap_err();
        assert!(err.contains("\"(unclosed\""), "{err}");
    }
}
