//! The plugin lifecycle in process, without a listener: the first load and
//! each rescan go through `Lifecycle`, which counts, reports and swaps alike;
//! what requests read is `HostState`. Real compiled guests in a real
//! directory; no file events (rescans are called directly).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tollgate::lifecycle::Lifecycle;
use tollgate::metrics::{ChangeLabels, LoadLabels};
use tollgate::plugins::loader::Loader;
use tollgate::plugins::summary::DirCondition;
use tollgate::runtime::engine::{EngineOptions, Runtime};
use tollgate::state::{CallBudgets, HostState};

use tollgate_test_artifacts as guests;

const ALLOW: &str = r#"{"validate": "echo"}"#;

fn loader() -> Loader {
    let options = EngineOptions { max_instances: 16, ..EngineOptions::default() };
    Loader::new(Arc::new(Runtime::new(options).expect("engine")))
}

fn host() -> Arc<HostState> {
    Arc::new(HostState::new(CallBudgets::new(4, 4, Duration::from_millis(100))))
}

fn install(dir: &Path, stem: &str, guest: &str, settings: Option<&str>) {
    std::fs::copy(guest, dir.join(format!("{stem}.wasm"))).expect("copy guest");
    if let Some(text) = settings {
        std::fs::write(dir.join(format!("{stem}.settings.json")), text).expect("write settings");
    }
}

fn serving(state: &HostState) -> Vec<String> {
    state.registry().iter().map(|p| p.name().to_string()).collect()
}

fn refused(state: &HostState) -> Vec<String> {
    state.refused().iter().map(|r| Path::new(&r.file).file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// (loaded, refused) files counted so far.
fn loads(state: &HostState) -> (u64, u64) {
    let count = |result| state.metrics.plugin_loads.get_or_create(&LoadLabels { result }).get();
    (count("loaded"), count("refused"))
}

/// (added, swapped, removed) plugins counted so far.
fn changes(state: &HostState) -> (u64, u64, u64) {
    let count = |change| state.metrics.plugin_changes.get_or_create(&ChangeLabels { change }).get();
    (count("added"), count("swapped"), count("removed"))
}

#[tokio::test]
async fn the_first_load_and_each_rescan_count_report_and_swap_alike() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "a", guests::MISBEHAVE, Some(ALLOW));
    install(dir.path(), "broken", guests::PANIC_IN_METADATA, None);
    let state = host();
    let mut lifecycle = Lifecycle::new(loader(), Some(dir.path()), state.clone(), None);
    assert!(!state.readiness().ready(), "nothing loaded yet");

    lifecycle.load().await.expect("the directory loads");
    assert!(state.readiness().ready());
    assert_eq!(serving(&state), ["misbehave"]);
    assert_eq!(refused(&state), ["broken.wasm"]);
    assert_eq!(loads(&state), (1, 1));
    assert_eq!(changes(&state), (1, 0, 0), "the first load adds what it serves");
    let status = state.plugin_dir().expect("a directory is served");
    assert_eq!(
        (status.condition, status.path),
        (DirCondition::Ok, dir.path().canonicalize().unwrap().display().to_string())
    );

    // A new file is added; the refused one, unchanged, is listed again but
    // neither read nor counted again.
    install(dir.path(), "b", guests::ADD_LABEL, None);
    let first = state.registry().get("misbehave").cloned().expect("serving");
    lifecycle.rescan().await;
    assert_eq!(serving(&state), ["add-label", "misbehave"]);
    assert!(Arc::ptr_eq(&first, state.registry().get("misbehave").unwrap()), "an unchanged file keeps its plugin");
    assert_eq!(refused(&state), ["broken.wasm"]);
    assert_eq!(loads(&state), (2, 1));
    assert_eq!(changes(&state), (2, 0, 0));
    assert_eq!(state.metrics.plugin_rescans.get(), 1, "the first load is not a rescan");

    // Bad settings for a serving plugin: refused, the last good version serves.
    std::fs::write(dir.path().join("a.settings.json"), "{ not json").unwrap();
    lifecycle.rescan().await;
    assert!(Arc::ptr_eq(&first, state.registry().get("misbehave").unwrap()), "the last good version serves");
    assert_eq!(refused(&state), ["a.wasm", "broken.wasm"]);
    assert_eq!(loads(&state), (2, 2));

    // Fixed settings swap it; a removed file stops serving.
    std::fs::write(dir.path().join("a.settings.json"), r#"{"validate": "fail"}"#).unwrap();
    std::fs::remove_file(dir.path().join("b.wasm")).unwrap();
    lifecycle.rescan().await;
    assert_eq!(serving(&state), ["misbehave"]);
    assert!(!Arc::ptr_eq(&first, state.registry().get("misbehave").unwrap()), "the new settings serve");
    assert_eq!(refused(&state), ["broken.wasm"]);
    assert_eq!(changes(&state), (2, 1, 1));
    assert_eq!(state.plugin_dir().unwrap().detail, "read; 1 plugin(s) serve from it");
}

#[tokio::test]
async fn an_emptied_or_missing_directory_keeps_what_serves_and_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    install(&dir, "a", guests::MISBEHAVE, Some(ALLOW));
    let state = host();
    let mut lifecycle = Lifecycle::new(loader(), Some(&dir), state.clone(), None);
    lifecycle.load().await.unwrap();

    for file in ["a.wasm", "a.settings.json"] {
        std::fs::remove_file(dir.join(file)).unwrap();
    }
    lifecycle.rescan().await;
    assert_eq!(serving(&state), ["misbehave"]);
    assert_eq!(state.plugin_dir().unwrap().condition, DirCondition::Empty);
    assert_eq!(state.metrics.plugin_dir_empty.get(), 1);

    std::fs::remove_dir(&dir).unwrap();
    lifecycle.rescan().await;
    assert_eq!(serving(&state), ["misbehave"]);
    assert_eq!(state.plugin_dir().unwrap().condition, DirCondition::Missing);
    assert_eq!((state.metrics.plugin_dir_missing.get(), state.metrics.plugin_dir_empty.get()), (1, 0));
    assert!(state.readiness().ready(), "what serves still serves");

    std::fs::create_dir(&dir).unwrap();
    install(&dir, "b", guests::ADD_LABEL, None);
    lifecycle.rescan().await;
    assert_eq!(serving(&state), ["add-label"], "back: serving what it holds");
    assert_eq!(state.plugin_dir().unwrap().condition, DirCondition::Ok);
}

#[tokio::test]
async fn without_a_directory_the_bundled_plugins_serve() {
    let state = host();
    let mut lifecycle = Lifecycle::new(loader(), None, state.clone(), None);
    lifecycle.load().await.unwrap();
    let names = serving(&state);
    assert!(
        names.contains(&"namespace-validation".to_string()) && names.contains(&"jwt-org-router".to_string()),
        "{names:?}"
    );
    assert_eq!(loads(&state), (names.len() as u64, 0));
    assert_eq!(changes(&state).0, names.len() as u64);
    assert!(state.plugin_dir().is_none());
}
