//! The library's modules import each other in one direction only: a cycle
//! means a change to one module can climb back into another, and hides
//! which layer owns a concept. Checked at two levels: the layers (the
//! top-level modules, `runtime`, `plugins`, ...) and the modules inside
//! each layer. Reads `host/src` and fails naming the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, with its module path (`plugins::loader`;
/// `plugins/mod.rs` is `plugins`).
fn modules(src: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).expect("under src").with_extension("");
                let mut parts: Vec<String> =
                    relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts != ["main"] && parts != ["lib"] {
                    found.push((parts.join("::"), path));
                }
            }
        }
    }
    found
}

/// The module paths a file names: each `crate::a::b...` (and `super::b`,
/// relative to `parent`), as its first two segments; `crate::{a, b::c}`
/// names `a` and `b::c`, `super::{b, c}` both. Comments count too: a doc
/// link is a dependency a reader follows.
fn named(text: &str, parent: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect() };
    let path_at = |rest: &str| -> String {
        let first = ident(rest);
        match rest[first.len()..].strip_prefix("::") {
            Some(after) if !ident(after).is_empty() => format!("{first}::{}", ident(after)),
            _ => first,
        }
    };
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                for item in group.split('}').next().unwrap_or_default().split(',') {
                    names.insert(path_at(item.trim_start()));
                }
            }
            None => {
                names.insert(path_at(rest));
            }
        }
    }
    if !parent.is_empty() {
        for (at, _) in text.match_indices("super::") {
            let rest = &text[at + "super::".len()..];
            let items: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or_default().split(',').collect(),
                None => vec![rest],
            };
            for item in items {
                let name = ident(item.trim_start());
                if !name.is_empty() {
                    names.insert(format!("{parent}::{name}"));
                }
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// The import graph between module paths, and between layers.
fn graphs() -> (Graph, Graph) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = modules(&src);
    let known: BTreeSet<String> = found.iter().map(|(m, _)| m.clone()).collect();
    let (mut fine, mut layers) = (Graph::new(), Graph::new());
    for (module, path) in &found {
        let text = std::fs::read_to_string(path).expect("read module");
        let layer = module.split("::").next().unwrap_or_default().to_string();
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        layers.entry(layer.clone()).or_default();
        fine.entry(module.clone()).or_default();
        for name in named(&text, parent) {
            // `crate::runtime::contract::Kind` names the module
            // `runtime::contract`; `crate::state::HostState` names `state`.
            let target = if known.contains(&name) { name } else { name.split("::").next().unwrap_or_default().into() };
            let target_layer = target.split("::").next().unwrap_or_default().to_string();
            if target_layer != layer {
                layers.entry(layer.clone()).or_default().insert(target_layer);
            } else if target != *module && target != layer && module != &layer {
                fine.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    (fine, layers)
}

/// A cycle through `from`, as the modules on it, if there is one.
fn cycle_from(graph: &Graph, from: &str) -> Option<Vec<String>> {
    fn walk(graph: &Graph, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
        let last = path.last().expect("a start").clone();
        for next in graph.get(&last).into_iter().flatten() {
            if *next == path[0] {
                path.push(next.clone());
                return true;
            }
            if graph.contains_key(next) && seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, &mut path, &mut BTreeSet::new()).then_some(path)
}

fn cycles(graph: &Graph) -> Vec<String> {
    graph.keys().filter_map(|m| cycle_from(graph, m)).map(|c| c.join(" -> ")).collect()
}

#[test]
fn no_layer_imports_one_that_imports_it_back() {
    let (_, layers) = graphs();
    assert!(layers.len() > 8, "found the layers: {layers:?}");
    for layer in ["runtime", "plugins", "cluster", "lifecycle", "admission", "gateway", "serve"] {
        assert!(layers.contains_key(layer), "no layer {layer}: {layers:?}");
    }
    let found = cycles(&layers);
    assert!(found.is_empty(), "import cycles between layers:\n{}", found.join("\n"));
}

#[test]
fn no_module_of_a_layer_imports_one_that_imports_it_back() {
    let (fine, _) = graphs();
    assert!(fine.contains_key("plugins::loader") && fine.contains_key("runtime::engine"), "{fine:?}");
    let found = cycles(&fine);
    assert!(found.is_empty(), "import cycles inside a layer:\n{}", found.join("\n"));
}

#[test]
fn the_runtime_knows_nothing_above_it() {
    let (_, layers) = graphs();
    let runtime = &layers["runtime"];
    assert!(runtime.is_empty(), "the Wasm runtime imports {runtime:?}");
}

/// The binary's build (`cargo build --release`) does not depend on the test
/// guests: only `tests/artifacts`, a dev-dependency, builds them.
#[test]
fn release_builds_compile_no_test_guest() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let tree = |edges: &str| {
        let output = std::process::Command::new(&cargo)
            .args(["tree", "--offline", "--prefix", "none", "-e", edges, "--manifest-path"])
            .arg(&manifest)
            .args(["-p", "tollgate"])
            .output()
            .expect("run cargo tree");
        assert!(output.status.success(), "cargo tree: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let release = tree("normal,build");
    assert!(release.contains("tollgate-guest-build"), "{release}");
    assert!(!release.contains("tollgate-test-artifacts"), "a release build would build the test guests:\n{release}");
    assert!(tree("dev").contains("tollgate-test-artifacts"), "the tests get their guests elsewhere");
}
