//! Test guest `misbehave-ignore`: `misbehave` with failurePolicy Ignore.

use tollgate::plugin::types::FailurePolicy;

const NAME: &str = "misbehave-ignore";
const FAILURE_POLICY: FailurePolicy = FailurePolicy::Ignore;

include!("../../misbehave/src/misbehave.rs");
