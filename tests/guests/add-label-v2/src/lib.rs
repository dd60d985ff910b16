//! Test guest `add-label-v2`: the next version of `add-label` (same name),
//! with failurePolicy Fail and a longer timeout, so a swap changes metadata.

use tollgate::plugin::types::FailurePolicy;

const VERSION: &str = "2.0.0";
const FAILURE_POLICY: FailurePolicy = FailurePolicy::Fail;
const TIMEOUT_SECONDS: u32 = 5;

include!("../../add-label/src/add_label.rs");
