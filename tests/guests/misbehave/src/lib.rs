//! Test guest `misbehave` (failurePolicy Fail): see misbehave.rs.

use tollgate::plugin::types::FailurePolicy;

const NAME: &str = "misbehave";
const FAILURE_POLICY: FailurePolicy = FailurePolicy::Fail;

include!("misbehave.rs");
