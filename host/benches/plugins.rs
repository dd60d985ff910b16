//! What a plugin costs: compiling it, and answering one admission request on
//! a warm or a fresh instance with its shipped settings, next to the same decision in
//! native Rust (the floor). Run: `cargo bench -p tollgate --bench plugins`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{BatchSize, Bencher, Criterion, criterion_group, criterion_main};
use tollgate::admission::review;
use tollgate::plugins::loader::{Loader, Settings};
use tollgate::runtime::engine::{EngineOptions, Runtime};
use wasmtime::component::Component;

use tollgate_test_artifacts as guests;

#[path = "../examples/native_admission_server/native_pod.rs"]
mod native_pod;

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);
const NAMESPACE_REVIEW: &str = include_str!("../../tests/data/namespace-update-team-a.json");
const POD_REVIEW: &str = include_str!("../../tests/data/pod-create-infra-toleration.json");

/// `TOLLGATE_BENCH_POOLING=0` runs without the pooling allocator, e.g. under
/// valgrind, which cannot reserve the pool's address space.
fn options() -> EngineOptions {
    let pooling = std::env::var("TOLLGATE_BENCH_POOLING").map_or(true, |v| v != "0");
    EngineOptions { pooling, ..EngineOptions::default() }
}

fn compile(c: &mut Criterion) {
    let runtime = Runtime::new(options()).expect("engine");
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for (name, path) in [
        ("namespace-validation", guests::NAMESPACE_VALIDATION),
        ("pod-validation", guests::POD_VALIDATION),
        ("jwt-org-router", guests::JWT_ORG_ROUTER),
    ] {
        let bytes = std::fs::read(path).expect("guest built");
        group.bench_function(name, |b| {
            b.iter(|| Component::new(runtime.engine(), black_box(&bytes)).expect("compiles"))
        });
    }
    group.finish();
}

/// A reference plugin with the settings it ships with.
fn load(loader: &Loader, guest: &str, plugin: &str) -> tollgate::plugins::plugin::Plugin {
    let file = format!("../plugins/{plugin}/{plugin}.settings.json");
    load_with(loader, guest, Settings::from_file(Path::new(&file)).expect("shipped settings"))
}

fn load_with(loader: &Loader, guest: &str, settings: Settings) -> tollgate::plugins::plugin::Plugin {
    let bytes = std::fs::read(guest).expect("guest built");
    loader.load_bytes(Path::new(guest), &bytes, settings).expect("loads")
}

/// The `misbehave` test guest doing `action` on every `validate`.
fn misbehave(loader: &Loader, action: &str) -> tollgate::plugins::plugin::Plugin {
    let text = serde_json::json!({ "validate": action }).to_string();
    let settings = Settings::from_text(&text, Path::new("misbehave.settings.json")).expect("settings");
    load_with(loader, guests::MISBEHAVE, settings)
}

/// Twice this machine's L3 cache (32 MiB; L2 is 1 MiB per core), so the
/// eviction reaches every level.
const EVICT_BYTES: usize = 64 << 20;

/// Writes every cache line of `buffer`, so what ran before is out of the
/// caches.
fn evict_caches(buffer: &mut [u8]) {
    for line in buffer.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    black_box(buffer);
}

/// Times `f`, evicting the caches before each run (not timed).
fn cold<R>(b: &mut Bencher, evict: &mut [u8], mut f: impl FnMut() -> R) {
    b.iter_batched(|| evict_caches(evict), |()| f(), BatchSize::PerIteration);
}

fn request(review: &str) -> tollgate::runtime::contract::types::AdmissionRequest {
    review::to_contract(&review::parse_review(review.as_bytes()).expect("review")).expect("convertible")
}

/// A review as the API server sends it: compact JSON (the files in
/// `tests/data` are indented for reading, and objects reach the plugin as
/// sent, so indentation would be bytes the plugin has to skip).
fn compact(review: &str) -> String {
    serde_json::from_str::<serde_json::Value>(review).expect("JSON").to_string()
}

fn admission_call(c: &mut Criterion) {
    let loader = Loader::new(Arc::new(Runtime::new(options()).expect("engine")));
    // The same plugin with a fresh instance for every call (`--calls-per-instance 1`).
    let fresh_loader =
        Loader::new(Arc::new(Runtime::new(EngineOptions { calls_per_instance: 1, ..options() }).expect("engine")));
    // Calls run as the server runs them: futures on a tokio runtime.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let pod = load(&loader, guests::POD_VALIDATION, "pod-validation");
    let pod_fresh = load(&fresh_loader, guests::POD_VALIDATION, "pod-validation");
    let pod_review = compact(POD_REVIEW);
    let pod_request = request(&pod_review);
    let native = native_pod::Policy::shipped();
    let wasm_verdict = pod.validate(&pod_request).expect("answers");
    assert_eq!(wasm_verdict.allowed, native.decide(&pod_request).is_ok(), "same decision");
    let mut group = c.benchmark_group("admission/pod-validation");
    group.bench_function("wasm: warm instance + validate", |b| {
        b.iter(|| rt.block_on(pod.validate_async(black_box(&pod_request), DEADLINE)).expect("answers"))
    });
    group.bench_function("wasm: fresh instance of the configured snapshot + validate", |b| {
        b.iter(|| rt.block_on(pod_fresh.validate_async(black_box(&pod_request), DEADLINE)).expect("answers"))
    });
    group.bench_function("native: settings parsed once", |b| b.iter(|| native.decide(black_box(&pod_request))));
    group.bench_function("native: settings parsed per call", |b| {
        b.iter(|| native_pod::Policy::shipped().decide(black_box(&pod_request)))
    });
    group.bench_function("host: parse review + convert", |b| b.iter(|| request(black_box(&pod_review))));
    // What a call costs before the plugin does any work: a plugin that
    // allows without reading the request (handing the request over and
    // the verdict back).
    let trivial = misbehave(&loader, "ok");
    group.bench_function("wasm: warm instance + a validate that reads nothing", |b| {
        b.iter(|| rt.block_on(trivial.validate_async(black_box(&pod_request), DEADLINE)).expect("answers"))
    });
    // A plugin that prints a line to stdout and one to stderr on every call
    // (log events are not written: no subscriber is installed).
    let chatty = misbehave(&loader, "print");
    group.bench_function("wasm: warm instance + a validate that prints two lines", |b| {
        b.iter(|| rt.block_on(chatty.validate_async(black_box(&pod_request), DEADLINE)).expect("answers"))
    });
    // In a server, the rest of the request (TLS, HTTP, parsing) pushes the
    // plugin's code and memory out of the CPU caches between calls; these
    // run each call after evicting them (the eviction is not timed).
    let mut evict = vec![0u8; EVICT_BYTES];
    group.bench_function("wasm, caches evicted: warm instance + validate", |b| {
        cold(b, &mut evict, || rt.block_on(pod.validate_async(black_box(&pod_request), DEADLINE)).expect("answers"))
    });
    group.bench_function("wasm, caches evicted: warm instance + a validate that reads nothing", |b| {
        cold(b, &mut evict, || rt.block_on(trivial.validate_async(black_box(&pod_request), DEADLINE)).expect("answers"))
    });
    group.bench_function("native, caches evicted", |b| cold(b, &mut evict, || native.decide(black_box(&pod_request))));
    group.finish();

    let ns = load(&loader, guests::NAMESPACE_VALIDATION, "namespace-validation");
    let ns_request = request(&compact(NAMESPACE_REVIEW));
    let mut group = c.benchmark_group("admission/namespace-validation");
    group.bench_function("wasm: warm instance + validate", |b| {
        b.iter(|| rt.block_on(ns.validate_async(black_box(&ns_request), DEADLINE)).expect("answers"))
    });
    group.finish();
}

/// The host's JWT verification (`services.verify-jwt`) for an RS256 token:
/// seen before (the verified-token cache) and never seen (signature checked).
fn jwt(c: &mut Criterion) {
    use tollgate::runtime::contract::services::{JwtAlgorithm, JwtKey, JwtPolicy};
    use tollgate::runtime::jwt::Verifier;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/jwt");
    let private = std::fs::read(format!("{data}/client-rs256.key")).expect("test key");
    let pem = std::fs::read_to_string(format!("{data}/client-rs256.pub.pem")).expect("test key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&private).expect("RSA key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("client-1".into());
    let exp = tollgate::runtime::jwt::now_seconds() + 3600;
    let token = |jti: u32| {
        let claims = serde_json::json!({"org": "org-a", "sub": "bench", "exp": exp, "jti": jti.to_string()});
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let (first, second) = (token(1), token(2));
    let policy = JwtPolicy {
        keys: vec![JwtKey { kid: Some("client-1".into()), algorithm: JwtAlgorithm::Rs256, pem }],
        leeway_seconds: 30,
        issuer: None,
        audience: None,
    };
    let mut group = c.benchmark_group("jwt");
    let verifier = Verifier::default();
    verifier.verify(&first, &policy).expect("verifies");
    group.bench_function("verify: token seen before", |b| b.iter(|| verifier.verify(black_box(&first), &policy)));
    group.bench_function("verify: new token (key parsed before)", |b| {
        b.iter_batched(
            || {
                let verifier = Verifier::default();
                verifier.verify(&first, &policy).expect("verifies");
                verifier
            },
            |verifier| verifier.verify(black_box(&second), &policy).expect("verifies"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, compile, admission_call, jwt);
criterion_main!(benches);
