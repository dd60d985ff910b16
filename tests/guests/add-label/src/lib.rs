//! Test guest `add-label`: a mutating admission plugin that labels the
//! ConfigMaps it admits `tollgate.io/checked: "true"`, with a namespace and an
//! object selector, so generated MutatingWebhookConfigurations and JSON
//! patches have a subject.

use tollgate::plugin::types::FailurePolicy;

const VERSION: &str = "1.0.0";
const FAILURE_POLICY: FailurePolicy = FailurePolicy::Ignore;
const TIMEOUT_SECONDS: u32 = 3;

include!("add_label.rs");
