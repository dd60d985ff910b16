//! What a plugin directory can do to the host that serves it: files too
//! large to read, a directory removed, recreated or emptied under a running
//! server, and settings (or links) whose content must not come back out
//! through refusal reasons.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Server, answers_within, ask, client, guests, logged};

const ALLOW: &str = r#"{"validate": "echo"}"#;

/// The `/plugins` status.
async fn status(server: &Server) -> Value {
    let url = format!("http://{}/plugins", server.metrics);
    support::plain().get(url).send().await.expect("/plugins reachable").json().await.expect("JSON status")
}

/// The reason `/plugins` gives for refusing `file` (by file name), if it does.
async fn refusal(server: &Server, file: &str) -> Option<String> {
    let status = status(server).await;
    status["refused"]
        .as_array()?
        .iter()
        .find(|r| r["file"].as_str().is_some_and(|f| f.ends_with(file)))
        .map(|r| r["reason"].as_str().expect("a reason").to_string())
}

/// The value of an unlabelled metric, e.g. `tollgate_plugin_dir_missing`.
async fn metric(server: &Server, name: &str) -> f64 {
    let metrics = server.metrics_text().await;
    let line =
        metrics.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name}: {metrics}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
}

/// Polls until `name` reads `want`.
async fn metric_becomes(server: &Server, name: &str, want: f64) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while metric(server, name).await != want {
        assert!(Instant::now() < give_up, "{name} never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's peak resident memory so far (VmHWM), in bytes.
fn peak_memory(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a size");
    kib << 10
}

/// A sparse file of `size` bytes starting with `head`: large on paper,
/// nothing on disk until read.
fn sparse(path: &Path, head: &[u8], size: u64) {
    std::fs::write(path, head).unwrap();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(size).unwrap();
}

/// Log lines containing every one of `words`.
fn count_logged(server: &Server, words: &[&str]) -> usize {
    server.log.lock().unwrap().iter().filter(|l| words.iter().all(|w| l.contains(w))).count()
}

#[tokio::test]
async fn big_files_are_refused_unread_and_not_read_again_while_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    support::install(dir.path(), "a", guests::MISBEHAVE, Some(ALLOW));
    let server = Server::start(dir.path(), &[]);
    let before = peak_memory(&server);

    // 300 MiB each: not WebAssembly; a component header over the size cap;
    // a plugin whose settings file is over its cap.
    const BIG: u64 = 300 << 20;
    sparse(&dir.path().join("big.wasm"), b"not wasm at all", BIG);
    sparse(&dir.path().join("huge.wasm"), b"\0asm\x0d\0\x01\0", BIG);
    std::fs::copy(guests::ADD_LABEL, dir.path().join("b.wasm")).unwrap();
    sparse(&dir.path().join("b.settings.json"), b"{", BIG);
    for file in ["big.wasm", "huge.wasm", "b.wasm"] {
        logged(&server, &["plugin refused", file]).await;
    }
    let grown = peak_memory(&server).saturating_sub(before);
    assert!(grown < 64 << 20, "the peak memory grew by {} MiB reading refused files", grown >> 20);
    assert!(refusal(&server, "big.wasm").await.unwrap().contains("is not a WebAssembly file"));
    assert!(
        refusal(&server, "huge.wasm")
            .await
            .unwrap()
            .contains("over the plugin size limit of 64 MiB (--max-plugin-mib)")
    );
    let settings = refusal(&server, "b.wasm").await.unwrap();
    assert!(settings.contains("b.settings.json") && settings.contains("(--max-settings-kib)"), "{settings}");
    let http = client(&server.ca(), None);
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(true), "the plugin that loaded serves");

    // Refused files are remembered once their timestamps are settled (a
    // second write of the same size within a tick would look the same).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    support::install(dir.path(), "c", guests::MISBEHAVE_IGNORE, Some(ALLOW));
    logged(&server, &["plugin added", "misbehave-ignore"]).await;
    // The same rescan logs its refusals right after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refusals = |server: &Server| {
        ["big.wasm", "huge.wasm", "b.wasm"].map(|file| count_logged(server, &["plugin refused", file]))
    };
    let counted = refusals(&server);

    // Another rescan: the refused files have not changed, so they are not
    // read (nor logged, nor counted) again, and are still listed as refused.
    std::fs::remove_file(dir.path().join("c.wasm")).unwrap();
    logged(&server, &["plugin removed", "misbehave-ignore"]).await;
    assert!(refusal(&server, "huge.wasm").await.is_some() && refusal(&server, "b.wasm").await.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refusals(&server), counted, "refused files unchanged since were read again");
    assert!(refusal(&server, "big.wasm").await.is_some(), "still listed as refused");

    // Changed, a file is read again.
    std::fs::write(dir.path().join("b.settings.json"), "{}").unwrap();
    logged(&server, &["plugin added", "add-label"]).await;
}

#[tokio::test]
async fn a_directory_removed_and_recreated_is_watched_again_and_an_emptied_one_keeps_serving() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    support::install(&dir, "a", guests::MISBEHAVE, Some(ALLOW));
    let server = Server::start(&dir, &[]);
    let http = client(&server.ca(), None);
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(true));
    assert_eq!(status(&server).await["directory"]["condition"], "ok");

    // Removed: what was loaded from it keeps serving, said loudly.
    std::fs::remove_dir_all(&dir).unwrap();
    logged(&server, &["WARN", "plugin directory cannot be read", "keep serving"]).await;
    metric_becomes(&server, "tollgate_plugin_dir_missing", 1.0).await;
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(true));
    let directory = &status(&server).await["directory"];
    assert_eq!(directory["condition"], "missing", "{directory}");
    assert!(directory["since"].as_u64().is_some(), "{directory}");
    let readyz = support::plain().get(format!("http://{}/readyz?verbose", server.metrics)).send().await.unwrap();
    assert_eq!(readyz.status(), 200, "what serves is the last good set");
    assert!(readyz.text().await.unwrap().contains("cannot be read"));

    // Recreated empty: watched again; still what was loaded serves.
    std::fs::create_dir(&dir).unwrap();
    logged(&server, &["WARN", "watching the new one"]).await;
    metric_becomes(&server, "tollgate_plugin_dir_empty", 1.0).await;
    assert_eq!(metric(&server, "tollgate_plugin_dir_missing").await, 0.0);
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(true));
    assert_eq!(status(&server).await["directory"]["condition"], "empty");

    // Filled: picked up from the new directory's events, well before the
    // periodic rescan (30 s); what it holds is what serves.
    support::install(&dir, "b", guests::MISBEHAVE_IGNORE, Some(ALLOW));
    answers_within(&http, &server, "/validate/misbehave-ignore", Some(true), Duration::from_secs(20)).await;
    answers_within(&http, &server, "/validate/misbehave", None, Duration::from_secs(20)).await;
    assert_eq!(metric(&server, "tollgate_plugin_dir_empty").await, 0.0);
    assert!(metric(&server, "tollgate_plugin_dir_rewatches_total").await >= 1.0);
    assert_eq!(status(&server).await["directory"]["condition"], "ok");

    // Emptied in place (`rm -rf plugins/*`): still serving, said loudly.
    // (Settings first: a rescan in between still finds the plugin.)
    std::fs::remove_file(dir.join("b.settings.json")).unwrap();
    std::fs::remove_file(dir.join("b.wasm")).unwrap();
    logged(&server, &["WARN", "plugin directory is empty", "keep serving"]).await;
    metric_becomes(&server, "tollgate_plugin_dir_empty", 1.0).await;
    assert_eq!(ask(&http, &server, "/validate/misbehave-ignore").await, Some(true));

    // A plugin file removed while anything else stays is removed, the last
    // one too: that is deliberate.
    support::install(&dir, "b", guests::MISBEHAVE_IGNORE, Some(ALLOW));
    metric_becomes(&server, "tollgate_plugin_dir_empty", 0.0).await;
    std::fs::remove_file(dir.join("b.wasm")).unwrap();
    answers_within(&http, &server, "/validate/misbehave-ignore", None, Duration::from_secs(60)).await;
    logged(&server, &["WARN", "no plugin serves any more"]).await;
}

#[tokio::test]
async fn refusal_reasons_do_not_quote_settings_and_settings_links_stay_in_the_directory() {
    let outside = tempfile::tempdir().unwrap();
    let shadow = outside.path().join("shadow");
    std::fs::write(&shadow, "root:$6$SECRETHASH0123:19000:0:99999:7:::\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A settings type error: serde quotes the value it did not expect.
    let token = r#"{"orgs": {"acme": "Bearer SUPERSECRET-e2e-0123"}}"#;
    support::install(dir.path(), "router", guests::JWT_ORG_ROUTER, Some(token));
    // A settings file linked to a file outside the directory.
    std::fs::copy(guests::MISBEHAVE, dir.path().join("guard.wasm")).unwrap();
    std::os::unix::fs::symlink(&shadow, dir.path().join("guard.settings.yaml")).unwrap();
    let secrets = ["SUPERSECRET", "SECRETHASH"];

    // By default, /plugins gives the host's words only.
    let server = Server::start(dir.path(), &["--plugins-detail=false"]);
    let router = refusal(&server, "router.wasm").await.expect("router refused");
    assert!(router.contains("refused its settings") && router.contains("router.settings.json"), "{router}");
    assert!(router.contains("--plugins-detail"), "{router}");
    let guard = refusal(&server, "guard.wasm").await.expect("guard refused");
    assert!(guard.contains("guard.settings.yaml") && guard.contains("outside the plugin directory"), "{guard}");
    // The log has the plugin's message, its quotes of the settings redacted.
    logged(&server, &["plugin refused", "router.wasm", "invalid type: string", "<redacted>"]).await;
    let everything = format!("{}\n{}", status(&server).await, server.log.lock().unwrap().join("\n"));
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret} leaked: {everything}");
    }
    drop(server);

    // With --plugins-detail, the plugin's message is shown, redacted too.
    let server = Server::start(dir.path(), &["--plugins-detail"]);
    let router = refusal(&server, "router.wasm").await.expect("router refused");
    assert!(router.contains("invalid type: string \"<redacted>\", expected struct Org"), "{router}");
    let everything = format!("{}\n{}", status(&server).await, server.log.lock().unwrap().join("\n"));
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret} leaked: {everything}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_are_refused_as_what_they_are_and_never_block_loading() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let mkfifo = |name: &str| {
        let status = std::process::Command::new("mkfifo").arg(path(name)).status().expect("mkfifo runs");
        assert!(status.success(), "mkfifo {name}");
    };
    support::install(dir.path(), "good", guests::MISBEHAVE, Some(ALLOW));
    // Named like plugins: a pipe (opening it for reading would wait for a
    // writer), a link to an endless device, a directory.
    mkfifo("pipe.wasm");
    std::os::unix::fs::symlink("/dev/zero", path("zero.wasm")).unwrap();
    std::fs::create_dir(path("folder.wasm")).unwrap();
    // Plugins whose settings file is a pipe or a directory: refused, not
    // taken for "no settings".
    std::fs::copy(guests::MISBEHAVE, path("piped.wasm")).unwrap();
    mkfifo("piped.settings.json");
    std::fs::copy(guests::MISBEHAVE, path("boxed.wasm")).unwrap();
    std::fs::create_dir(path("boxed.settings.json")).unwrap();

    let server = Server::start(dir.path(), &[]);
    let http = client(&server.ca(), None);
    assert_eq!(ask(&http, &server, "/validate/misbehave").await, Some(true));
    for (file, what) in [
        ("pipe.wasm", "is a named pipe, not a regular file"),
        ("zero.wasm", "is a device, not a regular file"),
        ("folder.wasm", "is a directory, not a regular file"),
        ("piped.wasm", "piped.settings.json: is a named pipe, not a regular file"),
        ("boxed.wasm", "boxed.settings.json: is a directory, not a regular file"),
    ] {
        let reason = refusal(&server, file).await.unwrap_or_else(|| panic!("{file} not refused"));
        assert!(reason.contains(what), "{file}: {reason}");
    }
}
