//! The decision on one admission request, with no HTTP in it (as
//! Kubewarden's `evaluate`): a plugin, the review, a call budget and a
//! deadline in; the AdmissionReview response out, with how it was reached.
//! The admission listener and `tollgate eval` both decide here, so the
//! answer offline is the answer the server gives, failure policy included.

use std::time::{Duration, Instant};

use kube_core::admission::AdmissionResponse;

use super::review::{self, Request as ReviewRequest};
use crate::plugins::error::PluginError;
use crate::plugins::plugin::Plugin;
use crate::runtime::contract::types::AdmissionRequest;
use crate::state::CallBudget;

/// An admission request decided: the response to send and how it was
/// reached.
#[derive(Debug)]
pub struct Decision {
    /// What the API server gets; always a valid response, whatever the
    /// plugin did.
    pub response: AdmissionResponse,
    /// Why the failure policy answered, if the plugin's verdict did not.
    pub failure: Option<Failure>,
}

/// Why a plugin gave no verdict.
#[derive(Debug)]
pub enum Failure {
    /// A trap, its deadline, its memory cap, a malformed patch.
    Plugin(PluginError),
    /// No call of the budget came free before the deadline.
    Overloaded,
}

impl Failure {
    /// The cause as a metric label.
    pub fn cause(&self) -> &'static str {
        match self {
            Failure::Plugin(error) => error.cause(),
            Failure::Overloaded => "overloaded",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Plugin(error) => error.fmt(f),
            Failure::Overloaded => f.write_str("no plugin instance became free before the deadline"),
        }
    }
}

impl Decision {
    /// `allowed`, `denied`, or `error` when the failure policy answered: the
    /// decision label of the admission metrics.
    pub fn label(&self) -> &'static str {
        match (&self.failure, self.response.allowed) {
            (None, true) => "allowed",
            (None, false) => "denied",
            (Some(_), _) => "error",
        }
    }
}

/// Decides `request` (the contract's copy of `review`) with `plugin`,
/// taking one call of `calls` and answering by `deadline`: the plugin's
/// verdict, or its failure policy when it gives none in time.
pub async fn decide(
    plugin: &Plugin,
    review: &ReviewRequest,
    request: &AdmissionRequest,
    calls: &CallBudget,
    deadline: Instant,
) -> Decision {
    let left = || deadline.saturating_duration_since(Instant::now());
    let verdict = match calls.permit(left()).await {
        // The guest runs here, as a future that yields at every epoch tick:
        // no thread hand-off, and a long guest never holds the worker thread.
        Some(_permit) => match plugin.validate_async(request, left().max(Duration::from_millis(1))).await {
            Ok(verdict) => review::response(review, plugin, verdict).map_err(Failure::Plugin),
            Err(error) => Err(Failure::Plugin(error)),
        },
        None => Err(Failure::Overloaded),
    };
    match verdict {
        Ok(response) => Decision { response, failure: None },
        Err(failure) => {
            tracing::warn!(plugin = plugin.name(), cause = failure.cause(), error = %failure, "plugin failed; answering by its failure policy");
            let response = review::failure_response(review, plugin, &failure.to_string());
            Decision { response, failure: Some(failure) }
        }
    }
}
