//! Running one plugin offline on one request, as `tollgate eval` does (like
//! `kwctl run`): the same code path the servers use, without a server. A
//! review is decided by [`decision::decide`], as the admission listener
//! decides it: a plugin that fails is answered by its failure policy.

use std::time::Instant;

use serde::Deserialize;

use crate::admission::decision;
use crate::admission::review;
use crate::plugins::error::PluginError;
use crate::plugins::plugin::{AllowCheck, Plugin};
use crate::runtime::contract::Kind;
use crate::runtime::contract::types::{Identity, RequestHead};
use crate::runtime::sandbox;
use crate::state::CallBudget;

/// Why an evaluation could not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The request file is not a request this plugin can take.
    #[error("request is not usable: {0}")]
    Request(String),
    /// An AdmissionReview that is malformed.
    #[error(transparent)]
    Review(#[from] review::ReviewError),
    /// The plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The answer cannot be written as JSON.
    #[error("answer cannot be shown as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// An allowlist check request: the request head, the route it is on, the
/// identity already established and the body
/// (`{"request": {...}, "route": "r", "identity": {"email": "..."}, "body": "..."}`).
#[derive(Debug, Deserialize)]
pub struct CheckRequest {
    /// The HTTP request head.
    pub request: RequestHead,
    /// The route plugin's name.
    #[serde(default)]
    pub route: String,
    /// Who the gateway established the caller is.
    #[serde(default = "no_identity")]
    pub identity: Identity,
    /// The request body, for allowlists that inspect it.
    #[serde(default)]
    pub body: Option<String>,
}

fn no_identity() -> Identity {
    Identity { email: None, subject: None }
}

/// What an evaluation answered.
#[derive(Debug)]
pub struct Evaluation {
    /// The answer as JSON: an AdmissionReview response for a review, a route
    /// decision for a request head, an allow decision for a check request.
    pub answer: serde_json::Value,
    /// Why the plugin gave no verdict, when its failure policy answered a
    /// review.
    pub failure: Option<String>,
}

/// Evaluates `request` (JSON text) with `plugin`.
pub fn eval(plugin: &Plugin, request: &str) -> Result<Evaluation, EvalError> {
    let value: serde_json::Value =
        serde_json::from_str(request).map_err(|e| EvalError::Request(format!("not JSON: {e}")))?;
    if value.get("kind").and_then(|k| k.as_str()) == Some(review::KIND) {
        let review = review::parse_review(request.as_bytes())?;
        let request = review::to_contract(&review)?;
        // One call, as the server's budget would give it.
        let deadline = Instant::now() + plugin.call_deadline();
        let calls = CallBudget::new(1);
        let decision = sandbox::block_on(decision::decide(plugin, &review, &request, &calls, deadline));
        let failure = decision.failure.as_ref().map(ToString::to_string);
        let answer = serde_json::from_slice(&review::review_json(decision.response)?)?;
        return Ok(Evaluation { answer, failure });
    }
    match plugin.kind() {
        Kind::Route => {
            let head: RequestHead = serde_json::from_value(value)
                .map_err(|e| EvalError::Request(format!("not a route request head: {e}")))?;
            to_json(&plugin.route(&head)?)
        }
        Kind::Allowlist => {
            let check: CheckRequest = serde_json::from_value(value).map_err(|e| {
                EvalError::Request(format!("not an allowlist check {{\"request\": ..., \"identity\": ...}}: {e}"))
            })?;
            to_json(&plugin.check_request(&AllowCheck {
                request: &check.request,
                route: &check.route,
                identity: &check.identity,
                body: check.body.as_deref(),
            })?)
        }
        Kind::Admission => Err(EvalError::Request(format!(
            "an admission plugin takes an AdmissionReview (kind {}, apiVersion {})",
            review::KIND,
            review::API_VERSION
        ))),
    }
}

fn to_json<T: serde::Serialize>(answer: &T) -> Result<Evaluation, EvalError> {
    Ok(Evaluation { answer: serde_json::to_value(answer)?, failure: None })
}
