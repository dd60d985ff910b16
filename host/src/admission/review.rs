//! AdmissionReview (admission.k8s.io/v1) in and out, with kube-rs's types:
//! parsing and checking a review, turning its request into the contract's
//! typed record, and a plugin's verdict into the response the API server
//! expects.
//!
//! The objects of a request stay the JSON text the API server sent
//! ([`RawObject`]): the host only hands them to the plugin, and reading them
//! into a tree (kube's `DynamicObject`) and printing them again was most of
//! the cost of parsing a review.

use std::borrow::Cow;
use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::admission::{self as kube, AdmissionResponse};
use kube_core::dynamic::ApiResource;
use kube_core::response::StatusSummary;
use kube_core::{DynamicResourceScope, Resource, TypeMeta};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::plugins::error::PluginError;
use crate::plugins::plugin::Plugin;
use crate::runtime::contract::types::{
    self, FailurePolicy, GroupVersionKind, GroupVersionResource, Operation, UserInfo, Verdict,
};

/// The only API version Tollgate answers.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The review kind.
pub const KIND: &str = "AdmissionReview";
/// Audit annotation naming the plugin (and version) that decided.
pub const AUDIT_PLUGIN_KEY: &str = "tollgate-plugin";

/// A review's request, as kube-rs parses it, its objects kept as JSON text.
pub type Request = kube::AdmissionRequest<RawObject>;

/// An object of a review (`object`, `oldObject`) as the JSON text the API
/// server sent. Its metadata is read only when asked for ([`Resource::meta`]):
/// reading it on every request cost 4 µs, and the host never needs it.
#[derive(Debug, Clone)]
pub struct RawObject {
    json: Box<RawValue>,
    metadata: OnceLock<ObjectMeta>,
}

impl RawObject {
    /// The object's JSON text, as sent.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// The object's `metadata`; empty when it has none or it is not
    /// ObjectMeta (a plugin refuses such an object, the host only passes it on).
    fn read_metadata(&self) -> ObjectMeta {
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            metadata: ObjectMeta,
        }
        serde_json::from_str::<Meta>(self.json.get()).map(|m| m.metadata).unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Box::<RawValue>::deserialize(deserializer)?;
        if !json.get().starts_with('{') {
            return Err(serde::de::Error::custom("an object of the request is not a JSON object"));
        }
        Ok(Self { json, metadata: OnceLock::new() })
    }
}

impl serde::Serialize for RawObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

/// The same answers as kube's `DynamicObject`: the type is known only at
/// run time.
impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        self.metadata.get_or_init(|| self.read_metadata())
    }

    /// Changes stay in the returned metadata; the JSON text is not rewritten.
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        if self.metadata.get().is_none() {
            self.metadata = OnceLock::from(self.read_metadata());
        }
        match self.metadata.get_mut() {
            Some(metadata) => metadata,
            None => unreachable!("metadata was set just above"),
        }
    }
}

/// The review's envelope. kube-rs's `AdmissionReview` flattens its
/// `TypeMeta`, which makes serde buffer the whole review in a generic tree
/// before reading any of it (and a raw object cannot be read from that
/// tree); naming the two fields reads the same document in one pass.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<Request>,
}

/// Why a body is not a usable AdmissionReview. Each is the client's fault
/// (HTTP 400), and the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not shaped like an AdmissionReview.
    #[error("body is not a valid AdmissionReview: {0}")]
    Malformed(String),
    /// Another kind or API version.
    #[error("expected kind {KIND} apiVersion {API_VERSION}, got kind {kind:?} apiVersion {api_version:?}")]
    WrongType {
        /// The kind sent.
        kind: String,
        /// The API version sent.
        api_version: String,
    },
    /// No `request` field.
    #[error("AdmissionReview has no request")]
    MissingRequest,
    /// An object that cannot be passed on.
    #[error("cannot encode {field}: {reason}")]
    Object {
        /// `object`, `oldObject` or `options`.
        field: &'static str,
        /// The serializer's reason.
        reason: String,
    },
}

/// Parses and checks a review body.
pub fn parse_review(body: &[u8]) -> Result<Request, ReviewError> {
    let review: Envelope = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::WrongType { kind: review.kind, api_version: review.api_version });
    }
    let mut request = review.request.ok_or(ReviewError::MissingRequest)?;
    // kube's own conversion does this: the response copies the review's type.
    request.types = TypeMeta { api_version: review.api_version, kind: review.kind };
    Ok(request)
}

/// The contract's request record for a parsed review request.
pub fn to_contract(req: &Request) -> Result<types::AdmissionRequest, ReviewError> {
    let gvk = |k: &kube_core::GroupVersionKind| GroupVersionKind {
        group: k.group.clone(),
        version: k.version.clone(),
        kind: k.kind.clone(),
    };
    let gvr = |r: &kube_core::GroupVersionResource| GroupVersionResource {
        group: r.group.clone(),
        version: r.version.clone(),
        resource: r.resource.clone(),
    };
    let user = &req.user_info;
    Ok(types::AdmissionRequest {
        uid: req.uid.clone(),
        kind: gvk(&req.kind),
        resource: gvr(&req.resource),
        sub_resource: req.sub_resource.clone(),
        request_kind: req.request_kind.as_ref().map(gvk),
        request_resource: req.request_resource.as_ref().map(gvr),
        name: Some(req.name.clone()).filter(|n| !n.is_empty()),
        namespace: req.namespace.clone(),
        operation: match req.operation {
            kube::Operation::Create => Operation::Create,
            kube::Operation::Update => Operation::Update,
            kube::Operation::Delete => Operation::Delete,
            kube::Operation::Connect => Operation::Connect,
        },
        user_info: UserInfo {
            username: user.username.clone().unwrap_or_default(),
            uid: user.uid.clone().unwrap_or_default(),
            groups: user.groups.clone().unwrap_or_default(),
            extra: user.extra.clone().unwrap_or_default().into_iter().collect(),
        },
        object: req.object.as_ref().map(|o| o.json().to_string()),
        old_object: req.old_object.as_ref().map(|o| o.json().to_string()),
        dry_run: req.dry_run,
        options: to_json("options", req.options.as_ref().map(|o| &o.0))?,
    })
}

/// An object of the request as JSON text for the plugin.
fn to_json<T: serde::Serialize>(field: &'static str, value: Option<&T>) -> Result<Option<String>, ReviewError> {
    value
        .map(|v| serde_json::to_string(v).map_err(|e| ReviewError::Object { field, reason: e.to_string() }))
        .transpose()
}

/// The response for a plugin's verdict: same uid, decision, status, warnings,
/// and an audit annotation naming the plugin and its version.
pub fn response(req: &Request, plugin: &Plugin, verdict: Verdict) -> Result<AdmissionResponse, PluginError> {
    let mut response = AdmissionResponse::from(req);
    response.allowed = verdict.allowed;
    if !verdict.allowed {
        response.result.status = Some(StatusSummary::Failure);
        // The API server turns a denial's code below 400 into 400
        // (webhook `ToStatusErr`); say here what the user will see.
        response.result.code = verdict.code.map_or(403, |code| code.max(400));
        response.result.reason = status_reason(response.result.code).to_string();
        response.result.message = verdict.message.unwrap_or_else(|| format!("denied by {}", plugin.name()));
    } else if let Some(message) = verdict.message {
        response.result.message = message;
    }
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    if let Some(patch) = verdict.patch {
        let bad = |reason: String| PluginError::BadAnswer { plugin: plugin.name().to_string(), reason };
        let patch: json_patch::Patch =
            serde_json::from_str(&patch).map_err(|e| bad(format!("patch is not a JSON Patch: {e}")))?;
        response = response.with_patch(patch).map_err(|e| bad(e.to_string()))?;
    }
    annotate(&mut response, plugin);
    Ok(response)
}

/// The response when a plugin gave no usable verdict, decided by its
/// failure policy: `Fail` denies with code 500 naming the plugin and the
/// cause; `Ignore` allows with a warning saying the same.
pub fn failure_response(req: &Request, plugin: &Plugin, cause: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(req);
    let policy = plugin.metadata().webhook().map_or(FailurePolicy::Fail, |w| w.failure_policy);
    match policy {
        FailurePolicy::Fail => {
            response.allowed = false;
            response.result.status = Some(StatusSummary::Failure);
            response.result.code = 500;
            response.result.reason = status_reason(500).to_string();
            response.result.message = format!("tollgate: {cause}; denied by failurePolicy Fail");
        }
        FailurePolicy::Ignore => {
            response.allowed = true;
            response.warnings = Some(vec![format!("tollgate: {cause}; allowed by failurePolicy Ignore")]);
        }
    }
    annotate(&mut response, plugin);
    response
}

/// The `reason` the API server's own `metav1.Status` carries for an HTTP
/// code (k8s.io/apimachinery `pkg/api/errors`: `NewGenericServerResponse`
/// and the `StatusReason` constants of `pkg/apis/meta/v1/types.go`). kubectl
/// prints it, as in `Error from server (Forbidden): ...`; without it the
/// denial reads `Error from server: ...`. Codes with no reason of their own
/// get none (the API server's `StatusReasonUnknown` is the empty string).
pub fn status_reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        500.. => "InternalError",
        _ => "",
    }
}

/// Names the plugin (and version) that decided, for the audit log.
fn annotate(response: &mut AdmissionResponse, plugin: &Plugin) {
    response.audit_annotations.insert(AUDIT_PLUGIN_KEY.to_string(), format!("{}@{}", plugin.name(), plugin.version()));
}

/// The review the API server reads, as JSON bytes.
///
/// The API server wants `patch` as base64 text (Go's encoding of `[]byte`),
/// but kube-core serialises its `Vec<u8>` as an array of numbers
/// (kube-rs/kube#1781), which the API server rejects. So the patch is taken
/// out and put back as base64.
pub fn review_json(mut response: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine as _;
    let Some(patch) = response.patch.take() else {
        return serde_json::to_vec(&response.into_review());
    };
    let mut review = serde_json::to_value(response.into_review())?;
    review["response"]["patch"] = base64::engine::general_purpose::STANDARD.encode(patch).into();
    serde_json::to_vec(&review)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
        "uid":"705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind":{"group":"","version":"v1","kind":"Namespace"},
        "resource":{"group":"","version":"v1","resource":"namespaces"},
        "name":"kube-system","operation":"DELETE",
        "userInfo":{"username":"alice","groups":["system:authenticated"],"extra":{"k":["v"]}},
        "oldObject":{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"kube-system"}},
        "dryRun":true}}"#;

    #[test]
    fn a_review_becomes_the_contract_record() {
        let req = parse_review(REVIEW.as_bytes()).unwrap();
        let c = to_contract(&req).unwrap();
        assert_eq!(c.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(c.operation, Operation::Delete);
        assert_eq!(c.kind.kind, "Namespace");
        assert_eq!(c.name.as_deref(), Some("kube-system"));
        assert_eq!(c.user_info.username, "alice");
        assert_eq!(c.user_info.extra, vec![("k".to_string(), vec!["v".to_string()])]);
        assert!(c.dry_run);
        assert!(c.object.is_none());
        let old: serde_json::Value = serde_json::from_str(c.old_object.as_deref().unwrap()).unwrap();
        assert_eq!(old["metadata"]["name"], "kube-system");
    }

    #[test]
    fn objects_pass_through_as_sent_and_their_metadata_is_read_when_asked() {
        let req = parse_review(REVIEW.as_bytes()).unwrap();
        let old = req.old_object.as_ref().unwrap();
        assert_eq!(old.json(), r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"kube-system"}}"#);
        assert_eq!(old.meta().name.as_deref(), Some("kube-system"));
        let response = AdmissionResponse::from(&req).into_review();
        assert_eq!(response.types.api_version, API_VERSION, "the response copies the review's type");

        let not_an_object = REVIEW.replace(r#""oldObject":{"apiVersion"#, r#""oldObject":["x"],"o":{"apiVersion"#);
        let error = parse_review(not_an_object.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("not a JSON object"), "{error}");
    }

    #[test]
    fn bad_reviews_say_why() {
        assert!(matches!(parse_review(b""), Err(ReviewError::Malformed(_))));
        assert!(matches!(parse_review(b"[1]"), Err(ReviewError::Malformed(_))));
        let v1beta1 = REVIEW.replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1");
        assert!(matches!(parse_review(v1beta1.as_bytes()), Err(ReviewError::WrongType { .. })));
        let no_request = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(parse_review(no_request.as_bytes()), Err(ReviewError::MissingRequest)));
    }
}
