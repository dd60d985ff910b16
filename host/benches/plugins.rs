//! What a plugin costs: compiling it, and answering one admission request on
//! a fresh instance, next to the same check written as native Rust (the
//! floor). Run: `cargo bench -p tollgate --bench plugins`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::Deserialize;
use tollgate::admission;
use tollgate::contract::types::{AdmissionRequest, UserInfo, Verdict};
use tollgate::engine::{EngineOptions, Runtime};
use tollgate::loader::{Loader, Settings};
use wasmtime::component::Component;

mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

const REVIEW: &str = include_str!("../../tests/data/namespace-update-team-a.json");
const SETTINGS: &str = include_str!("../../plugins/namespace-validation/namespace-validation.settings.json");

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
        ("jwt-org-router", guests::JWT_ORG_ROUTER),
        ("email-allowlist", guests::EMAIL_ALLOWLIST),
    ] {
        let bytes = std::fs::read(path).expect("guest built");
        group.bench_function(name, |b| {
            b.iter(|| Component::new(runtime.engine(), black_box(&bytes)).expect("compiles"))
        });
    }
    group.finish();
}

fn admission_call(c: &mut Criterion) {
    let loader = Loader::new(Arc::new(Runtime::new(options()).expect("engine")));
    let bytes = std::fs::read(guests::NAMESPACE_VALIDATION).expect("guest built");
    let settings = Settings::from_text(SETTINGS, Path::new("namespace-validation.settings.json")).expect("settings");
    let plugin = loader.load_bytes(Path::new("namespace-validation.wasm"), &bytes, settings).expect("loads");
    let request = admission::to_contract(&admission::parse_review(REVIEW.as_bytes()).expect("review")).expect("ok");
    let native = NativeGuard::configure(SETTINGS);
    assert_eq!(plugin.validate(&request).expect("answers"), native.validate(&request), "same decision");

    let mut group = c.benchmark_group("admission/namespace-validation");
    group.bench_function("wasm: fresh instance + configure + validate", |b| {
        b.iter(|| plugin.validate(black_box(&request)).expect("answers"))
    });
    group
        .bench_function("native: validate (settings parsed once)", |b| b.iter(|| native.validate(black_box(&request))));
    group.bench_function("native: configure + validate", |b| {
        b.iter(|| NativeGuard::configure(black_box(SETTINGS)).validate(black_box(&request)))
    });
    group.bench_function("host: parse review + convert", |b| {
        b.iter(|| admission::to_contract(&admission::parse_review(black_box(REVIEW.as_bytes())).expect("ok")))
    });
    group.finish();
}

/// namespace-validation's decision in native Rust, the same steps as the guest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NativeGuard {
    protected_namespaces: Vec<String>,
    admin_users: Vec<String>,
    admin_groups: Vec<String>,
}

#[derive(Deserialize)]
struct Object {
    metadata: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    name: Option<String>,
}

impl NativeGuard {
    fn configure(settings: &str) -> Self {
        serde_json::from_str(settings).expect("settings")
    }

    fn is_admin(&self, user: &UserInfo) -> bool {
        self.admin_users.contains(&user.username) || user.groups.iter().any(|g| self.admin_groups.contains(g))
    }

    fn validate(&self, req: &AdmissionRequest) -> Verdict {
        let verdict =
            |allowed, code, message: Option<String>| Verdict { allowed, code, message, warnings: vec![], patch: None };
        if req.user_info.username.is_empty() || req.kind.kind != "Namespace" {
            return verdict(false, Some(400), Some("bad request".into()));
        }
        if self.is_admin(&req.user_info) {
            return verdict(true, None, None);
        }
        let current = req.old_object.as_deref().or(req.object.as_deref()).unwrap_or("{}");
        let name = serde_json::from_str::<Object>(current).ok().and_then(|o| o.metadata).and_then(|m| m.name);
        let Some(name) = name.or_else(|| req.name.clone()) else {
            return verdict(false, Some(400), Some("request names no namespace".into()));
        };
        let protected = self.protected_namespaces.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => &name == p,
        });
        if protected {
            return verdict(
                false,
                Some(403),
                Some(format!("namespace {name:?} is protected: only administrators may change it")),
            );
        }
        verdict(true, None, None)
    }
}

criterion_group!(benches, compile, admission_call);
criterion_main!(benches);
