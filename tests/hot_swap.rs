//! Plugins changed live in the directory of a running `tollgate serve`:
//! dropped, replaced, renamed into place, swapped by a ConfigMap-style
//! symlink, deleted, broken; and a client that keeps sending requests while
//! all that happens must see only correct answers.
//!
//! The `misbehave` guest serves as the plugin: settings `{"validate":"echo"}`
//! allow (and describe the request), `{"validate":"fail"}` deny with
//! "refused on purpose", so each answer says which version produced it.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Server, answers_within, ask, client, configmap_review, guests, logged};

const ALLOW: &str = r#"{"validate": "echo"}"#;
const DENY: &str = r#"{"validate": "fail"}"#;

/// Polls until the server answers `want` on `path` (bounded: a swap that
/// never shows up fails the test rather than hanging it).
async fn eventually(http: &reqwest::Client, server: &Server, path: &str, want: Option<bool>) {
    answers_within(http, server, path, want, Duration::from_secs(60)).await;
}

/// Writes `text` to `path` the way careful tools do: a hidden temporary file
/// renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn plugins_are_added_changed_and_removed_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client(&server.ca(), None);
    let (wasm, settings) = (dir.path().join("a.wasm"), dir.path().join("a.settings.json"));
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, None);

    // Dropped in: served.
    std::fs::write(&settings, ALLOW).unwrap();
    std::fs::copy(guests::MISBEHAVE, &wasm).unwrap();
    eventually(&http, &server, "/validate/misbehave", Some(true)).await;
    logged(&server, &["plugin added", "misbehave"]).await;

    // Settings edited in place: the next requests get the new settings.
    std::fs::write(&settings, DENY).unwrap();
    eventually(&http, &server, "/validate/misbehave", Some(false)).await;

    // A broken settings edit is refused; the previous version keeps serving.
    std::fs::write(&settings, "{ not json").unwrap();
    logged(&server, &["plugin refused", "a.settings.json", "not valid JSON"]).await;
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(false));
    let status: Value =
        support::plain().get(format!("http://{}/plugins", server.metrics)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["plugins"][0]["name"], "misbehave", "{status}");
    assert!(status["refused"][0]["reason"].as_str().unwrap().contains("not valid JSON"), "{status}");

    // So is a broken binary.
    std::fs::write(&settings, DENY).unwrap();
    std::fs::write(&wasm, b"\0asm garbage").unwrap();
    logged(&server, &["plugin refused", "a.wasm", "not a valid component"]).await;
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(false));

    // A different plugin renamed into place replaces it.
    std::fs::write(&settings, ALLOW).unwrap();
    write_atomically(&wasm, &std::fs::read(guests::MISBEHAVE_IGNORE).unwrap());
    eventually(&http, &server, "/validate/misbehave-ignore", Some(true)).await;
    eventually(&http, &server, "/validate/misbehave", None).await;

    // Deleted: gone.
    std::fs::remove_file(&wasm).unwrap();
    eventually(&http, &server, "/validate/misbehave-ignore", None).await;
    logged(&server, &["plugin removed", "misbehave-ignore"]).await;

    let metrics = server.metrics_text().await;
    assert!(metrics.contains("tollgate_plugin_loads_total{result=\"refused\"}"), "{metrics}");
    for change in ["added", "swapped", "removed"] {
        assert!(
            metrics.contains(&format!("tollgate_plugin_changes_total{{change=\"{change}\"}}")),
            "{change}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    // Kubernetes mounts a ConfigMap as `name -> ..data/name`, with `..data`
    // a symlink to a timestamped directory, swapped atomically on update.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let version = |name: &str, settings: &str| {
        let v = root.join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::copy(guests::MISBEHAVE, v.join("guard.wasm")).unwrap();
        std::fs::write(v.join("guard.settings.json"), settings).unwrap();
    };
    version("..2026_11_22_v1", ALLOW);
    std::os::unix::fs::symlink("..2026_11_22_v1", root.join("..data")).unwrap();
    for file in ["guard.wasm", "guard.settings.json"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), root.join(file)).unwrap();
    }
    let server = Server::start(root, &[]);
    let http = client(&server.ca(), None);
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(true));

    version("..2026_11_22_v2", DENY);
    std::os::unix::fs::symlink("..2026_11_22_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    eventually(&http, &server, "/validate/misbehave", Some(false)).await;
}

#[tokio::test]
async fn a_client_sees_no_error_while_plugins_are_swapped_many_times() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("a.settings.json");
    std::fs::write(&settings, ALLOW).unwrap();
    std::fs::copy(guests::MISBEHAVE, dir.path().join("a.wasm")).unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = client(&server.ca(), None);
    let url = server.url("/validate/misbehave");

    // The client: sends until told to stop (or 200,000 requests, or 5 minutes),
    // and checks every answer is one of the two versions'.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn({
        let http = http.clone();
        async move {
            let (mut sent, mut allowed, mut denied) = (0u32, 0u32, 0u32);
            let give_up = Instant::now() + Duration::from_secs(300);
            while !*stop_rx.borrow() && sent < 200_000 && Instant::now() < give_up {
                sent += 1;
                let uid = format!("load-{sent}");
                let response = http.post(&url).json(&configmap_review(&uid)).send().await;
                let response = response.unwrap_or_else(|e| panic!("request {sent} failed: {e}"));
                assert_eq!(response.status(), 200, "request {sent}");
                let body: Value = response.json().await.unwrap();
                let answer = &body["response"];
                assert_eq!(answer["uid"], uid.as_str());
                match answer["allowed"].as_bool() {
                    Some(true) => {
                        assert!(answer["status"]["message"].as_str().unwrap_or("").contains("uid=load-"), "{answer}");
                        allowed += 1;
                    }
                    Some(false) => {
                        assert_eq!(answer["status"]["message"], "refused on purpose", "{answer}");
                        denied += 1;
                    }
                    None => panic!("request {sent}: no decision: {answer}"),
                }
            }
            (sent, allowed, denied)
        }
    });

    // Swap between the two versions, with a broken version in between.
    for round in 0..6 {
        let (text, want) = if round % 2 == 0 { (DENY, false) } else { (ALLOW, true) };
        std::fs::write(&settings, "{ broken").unwrap();
        logged(&server, &["plugin refused", "a.settings.json"]).await;
        std::fs::write(&settings, text).unwrap();
        eventually(&http, &server, "/validate/misbehave", Some(want)).await;
    }
    let _ = stop_tx.send(true);
    let (sent, allowed, denied) = load.await.expect("the client saw only correct answers");
    assert!(sent > 0 && allowed > 0 && denied > 0, "sent {sent}, allowed {allowed}, denied {denied}");
}

/// `tollgate_plugin_rescans_total` now.
async fn rescans(server: &Server) -> u64 {
    let metrics = server.metrics_text().await;
    let line = metrics.lines().find(|l| l.starts_with("tollgate_plugin_rescans_total ")).expect("rescan counter");
    line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count")
}

#[tokio::test]
async fn an_unchanged_directory_is_not_rescanned_again_and_again() {
    let dir = tempfile::tempdir().unwrap();
    support::install(dir.path(), "misbehave", guests::MISBEHAVE, Some(ALLOW));
    let server = Server::start(dir.path(), &[]);
    let http = client(&server.ca(), None);

    // A change is noticed, rescanned once its burst of events is over...
    let before = rescans(&server).await;
    write_atomically(&dir.path().join("misbehave.settings.json"), DENY.as_bytes());
    eventually(&http, &server, "/validate/misbehave", Some(false)).await;
    let after_change = rescans(&server).await;
    assert!(after_change > before, "the change was rescanned: {before} -> {after_change}");

    // ...and then nothing: the rescan's own reads of the files are not
    // changes (they used to start the next rescan, forever).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rescans(&server).await, after_change, "rescans while nothing changed");
}

#[tokio::test]
async fn a_relative_plugin_directory_keeps_its_plugins_at_the_first_change() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    support::install(&dir, "a", guests::MISBEHAVE, Some(ALLOW));
    // `--plugins plugins`, relative to the server's working directory.
    let server = Server::start_in(scratch.path(), Path::new("plugins"), &[]);
    let http = client(&server.ca(), None);
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(true));

    // The first change adds one plugin; the one serving stays as it is.
    support::install(&dir, "b", guests::ADD_LABEL, None);
    logged(&server, &["plugin added", "add-label"]).await;
    let log = server.log.lock().unwrap().join("\n");
    let changes: Vec<&str> =
        log.lines().filter(|l| l.contains("plugin added") || l.contains("plugin removed")).collect();
    assert_eq!(changes.len(), 1, "only b.wasm is new: {changes:#?}");
    assert!(changes[0].contains(&dir.join("b.wasm").canonicalize().unwrap().display().to_string()), "{changes:#?}");
}

#[tokio::test]
async fn a_plugin_whose_configure_sleeps_does_not_stall_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    support::install(dir.path(), "a", guests::MISBEHAVE_IGNORE, Some(ALLOW));
    let server = Server::start(dir.path(), &[]);
    let http = client(&server.ca(), None);

    // Dropped in: its `configure` sleeps 30 s through WASI clocks (a wait in
    // the host, where no epoch check runs) while its snapshot is taken.
    support::install(dir.path(), "sleepy", guests::MISBEHAVE, Some(r#"{"configure": "sleep"}"#));
    // Hang guards, not timing assertions: far below the guest's sleep.
    let guard = Duration::from_secs(20);
    let refused = logged(&server, &["plugin refused", "sleepy.wasm", "configure() ran past its deadline"]);
    tokio::time::timeout(guard, refused).await.expect("the sleeping configure was stopped at its deadline");
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, None);
    assert_eq!(ask(&http, &server, "/validate/misbehave-ignore").await, Some(true));

    // The watcher goes on to the next change.
    support::install(dir.path(), "b", guests::ADD_LABEL, None);
    let added = logged(&server, &["plugin added", "add-label"]);
    tokio::time::timeout(guard, added).await.expect("the next change was picked up");
}
