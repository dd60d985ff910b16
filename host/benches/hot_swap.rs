//! Hot swap, measured on the real binary: start-up time and resident memory
//! with 1, 10 and 100 plugin files, cold and with the compiled-code cache;
//! and swap latency (settings file written -> first answer from the new
//! version) over 100 swaps while a client keeps sending requests, with the
//! number of requests that failed. Run: `cargo bench -p tollgate --bench hot_swap`.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, client, configmap_review, guests};

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn startup() {
    println!("start-up: process start -> plugins ready (pod-validation copies, each with its own settings so");
    println!("that each is compiled and snapshotted; all but one are refused as duplicate names after loading");
    println!("in full, which is the work measured)");
    for n in [1usize, 10, 100] {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::fs::read_to_string(support::shipped_settings("pod-validation")).unwrap();
        for i in 0..n {
            let mut settings: Value = serde_json::from_str(&shipped).unwrap();
            settings["protectedNamespaces"].as_array_mut().unwrap().push(json!(format!("^bench-{i}$")));
            support::install(dir.path(), &format!("p{i:03}"), guests::POD_VALIDATION, Some(&settings.to_string()));
        }
        let cache = tempfile::tempdir().unwrap();
        for run in ["cold", "cached"] {
            let server = Server::start_with_cache(dir.path(), Some(cache.path()), &["--no-watch"]);
            let elapsed = server.started.elapsed();
            println!(
                "  {n:>3} plugins, {run:<6}: {:>8.1} ms, RSS {:>6.1} MiB",
                elapsed.as_secs_f64() * 1e3,
                rss_mib(server.pid())
            );
        }
    }
}

/// One swap scenario: the plugin directory, the URL probed, how version `i`
/// is written, and how its answer is recognised.
struct Scenario {
    name: &'static str,
    dir: tempfile::TempDir,
    path: &'static str,
    write: fn(&std::path::Path, usize),
    is_version: fn(&Value, usize) -> bool,
}

/// Settings rewritten in place, alternating two versions of the same code.
fn settings_scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.settings.json"), r#"{"validate": "fail"}"#).unwrap();
    std::fs::copy(guests::MISBEHAVE, dir.path().join("a.wasm")).unwrap();
    Scenario {
        name: "settings file rewritten (two versions, same code)",
        dir,
        path: "/validate/misbehave",
        write: |dir, i| {
            let text = if i % 2 == 0 { r#"{"validate": "echo"}"# } else { r#"{"validate": "fail"}"# };
            std::fs::write(dir.join("a.settings.json"), text).unwrap();
        },
        is_version: |body, i| body["response"]["allowed"].as_bool() == Some(i % 2 == 0),
    }
}

/// A new build of the plugin renamed into place, alternating two builds
/// (add-label 1.0.0 and 2.0.0: different code, same name).
fn code_scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::ADD_LABEL, dir.path().join("add-label.wasm")).unwrap();
    Scenario {
        name: "plugin file replaced by rename (two builds)",
        dir,
        path: "/mutate/add-label",
        write: |dir, i| {
            let build = if i % 2 == 0 { guests::ADD_LABEL_V2 } else { guests::ADD_LABEL };
            let tmp = dir.join(".add-label.wasm.tmp");
            std::fs::copy(build, &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("add-label.wasm")).unwrap();
        },
        is_version: |body, i| {
            let want = if i % 2 == 0 { "add-label@2.0.0" } else { "add-label@1.0.0" };
            body["response"]["auditAnnotations"]["tollgate-plugin"] == want
        },
    }
}

async fn swaps(scenario: Scenario) {
    const SWAPS: usize = 100;
    let server = Server::start(scenario.dir.path(), &[]);
    let http = client(&server.ca(), None);
    let url = server.url(scenario.path);

    // Background load: a client sending continuously, counting failures.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (mut sent, mut failed) = (0u64, 0u64);
            while !*stop_rx.borrow() {
                sent += 1;
                match http.post(&url).json(&configmap_review("load")).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => failed += 1,
                }
            }
            (sent, failed)
        }
    });

    let mut latencies = Vec::with_capacity(SWAPS);
    for i in 0..SWAPS {
        let written = Instant::now();
        (scenario.write)(scenario.dir.path(), i);
        loop {
            let body = support::post_review(&http, &url, &configmap_review("probe")).await;
            if (scenario.is_version)(&body, i) {
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(60), "swap {i} never served");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(written.elapsed());
    }
    let _ = stop_tx.send(true);
    let (sent, failed) = load.await.unwrap();
    latencies.sort();
    // Nearest rank: the p-th percentile of n samples is the ceil(p*n)-th smallest.
    let pct = |p: f64| {
        let rank = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1e3
    };
    println!(
        "swap latency, {}: {SWAPS} swaps (file written -> first answer from the new version), under load:",
        scenario.name
    );
    println!("  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", pct(0.5), pct(0.99), pct(1.0));
    println!("  background requests: {sent} sent, {failed} failed");
}

fn main() {
    // `cargo bench` passes flags such as --bench; this bench takes none.
    startup();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(swaps(settings_scenario()));
    runtime.block_on(swaps(code_scenario()));
}
