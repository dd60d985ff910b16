//! The admission decision pipeline on its own, with no listener: real
//! compiled guests, a call budget and a deadline in, the response out. The
//! server and `tollgate eval` both answer through it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::admission::decision::{Decision, Failure, decide};
use tollgate::admission::review;
use tollgate::plugins::loader::{Loader, Settings};
use tollgate::plugins::plugin::Plugin;
use tollgate::runtime::engine::{EngineOptions, Runtime};
use tollgate::state::CallBudget;

use tollgate_test_artifacts as guests;

/// A misbehave guest (`Fail` policy, or `Ignore` for `misbehave-ignore`)
/// told to `validate` this way.
fn misbehave(guest: &str, validate: &str) -> Plugin {
    let runtime = Runtime::new(EngineOptions::default()).expect("engine");
    let bytes = std::fs::read(guest).expect("read guest");
    let settings = Settings { json: json!({ "validate": validate }).to_string(), ..Settings::none() };
    Loader::new(Arc::new(runtime)).load_bytes(Path::new(guest), &bytes, settings).expect("loads")
}

/// Decides a ConfigMap review with `plugin`, one call free unless `calls`
/// says otherwise, by `deadline` from now.
async fn decide_configmap(plugin: &Plugin, calls: usize, deadline: Duration) -> Decision {
    let text = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "namespace": "team", "operation": "CREATE", "userInfo": {"username": "dev"},
            "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
        }
    })
    .to_string();
    let review = review::parse_review(text.as_bytes()).expect("a review");
    let request = review::to_contract(&review).expect("convertible");
    decide(plugin, &review, &request, &CallBudget::new(calls), Instant::now() + deadline).await
}

#[tokio::test]
async fn the_plugins_verdict_answers_when_it_gives_one() {
    let decision = decide_configmap(&misbehave(guests::MISBEHAVE, "fail"), 1, Duration::from_secs(5)).await;
    assert!(decision.failure.is_none(), "{decision:?}");
    assert_eq!((decision.label(), decision.response.allowed), ("denied", false));
    assert_eq!(decision.response.uid, "u-1");
    assert_eq!(decision.response.result.message, "refused on purpose");

    let decision = decide_configmap(&misbehave(guests::MISBEHAVE, "ok"), 1, Duration::from_secs(5)).await;
    assert_eq!((decision.label(), decision.response.allowed), ("allowed", true));
}

#[tokio::test]
async fn a_failing_plugin_is_answered_by_its_failure_policy() {
    // Fail: a trap denies with 500, naming the cause.
    let decision = decide_configmap(&misbehave(guests::MISBEHAVE, "panic"), 1, Duration::from_secs(5)).await;
    assert!(matches!(decision.failure, Some(Failure::Plugin(_))), "{decision:?}");
    assert_eq!((decision.label(), decision.response.allowed), ("error", false));
    assert_eq!(decision.response.result.code, 500);
    assert!(decision.response.result.message.contains("denied by failurePolicy Fail"), "{decision:?}");

    // Ignore: a guest sleeping past its deadline is allowed, with a warning.
    let plugin = misbehave(guests::MISBEHAVE_IGNORE, "sleep");
    let decision = decide_configmap(&plugin, 1, Duration::from_millis(200)).await;
    assert_eq!(decision.failure.as_ref().map(Failure::cause), Some("deadline"), "{decision:?}");
    assert!(decision.response.allowed);
    let warnings = decision.response.warnings.unwrap_or_default();
    assert!(warnings.iter().any(|w| w.contains("allowed by failurePolicy Ignore")), "{warnings:?}");
}

#[tokio::test]
async fn no_call_free_before_the_deadline_is_answered_by_the_failure_policy() {
    let decision = decide_configmap(&misbehave(guests::MISBEHAVE, "ok"), 0, Duration::from_millis(50)).await;
    assert!(matches!(decision.failure, Some(Failure::Overloaded)), "{decision:?}");
    assert_eq!((decision.label(), decision.response.allowed), ("error", false));
    assert!(decision.response.result.message.contains("no plugin instance became free"), "{decision:?}");
}
