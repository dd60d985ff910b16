//! Building Tollgate's guests from a build script, the way wasmtime's
//! test-programs do: a nested `cargo build --target wasm32-wasip2` of the
//! guest crates into `<target>/guests`, shared by every host profile.
//!
//! Two build scripts use it: `host/build.rs` builds the reference plugins
//! that the binary bundles, and `tests/artifacts/build.rs` builds the test
//! guests, which only tests need (a release build of the host never
//! compiles them).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guests are built for.
pub const GUEST_TARGET: &str = "wasm32-wasip2";
/// The cargo profile guests are built with (see the workspace manifest).
pub const GUEST_PROFILE: &str = "guest";

/// A guest crate.
pub struct Guest {
    /// Crate (and file) name, e.g. `namespace-validation`.
    pub name: String,
    /// Crate directory.
    pub dir: PathBuf,
    /// Built as a binary (a command component) rather than a library.
    pub is_bin: bool,
}

impl Guest {
    /// The constant naming this guest in generated code (`NAMESPACE_VALIDATION`).
    pub fn constant(&self) -> String {
        self.name.to_uppercase().replace('-', "_")
    }

    /// Where the built component is, under `target_dir`.
    pub fn artifact(&self, target_dir: &Path) -> PathBuf {
        let file = if self.is_bin { self.name.clone() } else { self.name.replace('-', "_") };
        target_dir.join(GUEST_TARGET).join(GUEST_PROFILE).join(format!("{file}.wasm"))
    }
}

/// The workspace root, from the calling build script's manifest directory
/// (`host/` or `tests/artifacts/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").exists() && dir.join("wit").exists())
        .expect("the workspace root holds Cargo.lock and wit/")
        .to_path_buf()
}

/// Builds `guests` (after making sure the guest target is installed) and
/// returns the directory they were built into. Rebuilds are asked for when
/// anything under `watched` (relative to `root`) changes, or the contract.
pub fn build_guests(root: &Path, guests: &[Guest], watched: &[&str]) -> PathBuf {
    for path in watched.iter().chain(&["wit", "Cargo.toml", "Cargo.lock"]) {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = guest_target_dir(&out_dir);
    ensure_guest_target();
    build(root, &target_dir, guests);
    for guest in guests {
        let file = guest.artifact(&target_dir);
        assert!(file.exists(), "guest {} was built but {} is missing", guest.name, file.display());
    }
    target_dir
}

/// Every guest crate directly below `dir`, sorted so generated files are
/// stable.
pub fn discover(dir: &Path) -> Vec<Guest> {
    let mut guests = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return guests };
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = fs::read_to_string(&manifest).expect("read guest manifest");
        assert!(
            text.contains(&format!("name = \"{name}\"")),
            "guest crate in {} must be named after its directory",
            entry.path().display()
        );
        // A cdylib is a plugin, a crate with src/main.rs a command guest;
        // anything else is a library the guests share, built as their
        // dependency.
        let is_bin = entry.path().join("src/main.rs").exists();
        if !is_bin && !text.contains("cdylib") {
            continue;
        }
        guests.push(Guest { name, dir: entry.path(), is_bin });
    }
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    guests
}

/// Guests are built into `<target>/guests` so every host profile (debug,
/// release, clippy) shares one guest build instead of rebuilding it.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .map(|target| target.join("guests"))
        .unwrap_or_else(|| out_dir.join("guests"))
}

/// Makes sure the `wasm32-wasip2` standard library is installed for the rustc
/// cargo builds with, running `rustup target add` if it is not, and panics
/// with the command to run if that does not fix it.
///
/// `.cargo/ensure-guest-target.sh` does the same before anything compiles;
/// this is the backstop for builds that do not run it: `RUSTC_WRAPPER` from
/// the environment (sccache) replaces the config's wrapper, cargo started
/// outside the workspace does not read `.cargo/config.toml`, and cargo reuses
/// its cached probe (from before the target was removed) without calling the
/// wrapper. Without it the nested cargo below fails with rustc's "can't find
/// crate for `core`".
fn ensure_guest_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    if let Some((_, true)) = guest_std(&rustc) {
        return;
    }
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok().filter(|toolchain| !toolchain.is_empty());
    let install = match &toolchain {
        Some(toolchain) => format!("rustup target add --toolchain {toolchain} {GUEST_TARGET}"),
        None => format!("rustup target add {GUEST_TARGET}"),
    };
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add"]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    // Build scripts talk to cargo on stdout; rustup's progress goes to stderr.
    rustup.arg(GUEST_TARGET).stdout(std::io::stderr());
    eprintln!("{GUEST_TARGET} is not installed for {rustc}; installing it: {install}");
    let outcome = match rustup.status() {
        Ok(status) if status.success() => match guest_std(&rustc) {
            Some((_, true)) => {
                println!(
                    "cargo:warning=installed the {GUEST_TARGET} target, which the guests are built for: {install}"
                );
                return;
            }
            _ => format!("`{install}` succeeded, but this rustc still has none: it is not that toolchain's rustc"),
        },
        Ok(status) => format!("`{install}` failed ({status})"),
        Err(error) => format!("rustup could not be run ({error})"),
    };
    let missing = match guest_std(&rustc) {
        Some((libdir, _)) => format!("no libcore in {}", libdir.display()),
        None => format!("`{rustc} --print target-libdir --target {GUEST_TARGET}` failed"),
    };
    panic!(
        "the {GUEST_TARGET} standard library is not installed for {rustc} ({missing}), and {outcome}. \
         Tollgate compiles its plugins and test guests to WebAssembly for {GUEST_TARGET} (host/build.rs, tests/artifacts/build.rs), \
         so every build of this workspace needs it. Install it, then run cargo again:\n\n    {install}\n"
    );
}

/// Where `rustc` keeps the guest target's standard library, and whether its
/// libcore is there; `None` if rustc cannot say.
fn guest_std(rustc: &str) -> Option<(PathBuf, bool)> {
    let output = Command::new(rustc).args(["--print", "target-libdir", "--target", GUEST_TARGET]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let has_core = fs::read_dir(&libdir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    });
    Some((libdir, has_core))
}

fn build(root: &Path, target_dir: &Path, guests: &[Guest]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .arg("build")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--profile")
        .arg(GUEST_PROFILE)
        .arg("--target-dir")
        .arg(target_dir);
    for guest in guests {
        cmd.arg("-p").arg(&guest.name);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the
    // host target; the guests get a plain build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the guests");
    assert!(
        status.success(),
        "building the guests for {GUEST_TARGET} failed (is the target installed? `rustup target add {GUEST_TARGET}`)"
    );
}
