//! A fresh machine (issue 14): the pinned toolchain without the
//! `wasm32-wasip2` target, which rustup does not add by itself when
//! `RUSTUP_AUTO_INSTALL=0`. `.cargo/ensure-guest-target.sh`, this workspace's
//! rustc wrapper, must install the target or stop the build before anything
//! compiles, and must change nothing when the target is there.
//!
//! These tests never touch the machine's toolchains (other builds may be using
//! them): a fake `rustc` plays a toolchain without the target (it is the real
//! rustc, except that it names an empty directory as its wasm32-wasip2
//! target-libdir) and a stub `rustup` on PATH plays rustup. CI checks the
//! real thing: .ci/run removes the target before it builds.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

/// The toolchain rustup's proxies would name in `RUSTUP_TOOLCHAIN`.
const TOOLCHAIN: &str = "tollgate-test-toolchain";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ lives in the workspace root").to_path_buf()
}

/// The wrapper `.cargo/config.toml` names.
fn wrapper() -> PathBuf {
    workspace().join(".cargo/ensure-guest-target.sh")
}

/// The rustc of the toolchain running these tests: the one next to its cargo.
fn real_rustc() -> PathBuf {
    let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
    if rustc.exists() { rustc } else { PathBuf::from("rustc") }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// What the stub rustup does when asked to add the target.
#[derive(Clone, Copy)]
enum Rustup {
    /// Fails, as without network or with a toolchain rustup cannot change.
    Fails,
    /// Puts a libcore where the fake rustc looks for it.
    Installs,
}

/// A machine whose toolchain may lack the target: a temporary directory with
/// the fake rustc, the stub rustup, and a fresh cargo target directory.
struct Machine {
    dir: TempDir,
}

impl Machine {
    /// `std_installed`: whether the fake rustc's wasm32-wasip2 libdir has a
    /// libcore. `compiles`: whether the fake rustc compiles crates; when it
    /// does not, a regression fails the test instead of starting a long build.
    fn new(std_installed: bool, rustup: Rustup, compiles: bool) -> Machine {
        let machine = Machine { dir: tempfile::tempdir().unwrap() };
        let root = machine.dir.path();
        assert!(!root.to_string_lossy().contains('\''), "the scripts quote paths with '");
        fs::create_dir(machine.libdir()).unwrap();
        if std_installed {
            machine.install_std();
        }
        fs::create_dir(root.join("bin")).unwrap();
        let refuse = if compiles { ":" } else { "echo 'fake rustc: this test must not compile anything' >&2; exit 1" };
        write_script(
            &machine.rustc(),
            &format!(
                "case \" $* \" in\n\
                 *\" --print target-libdir --target wasm32-wasip2 \"*) echo '{libdir}'; exit 0 ;;\n\
                 *\" --crate-name ___ \"*) ;;\n\
                 *\" --crate-name \"*) {refuse} ;;\n\
                 esac\n\
                 exec '{real}' \"$@\"\n",
                libdir = machine.libdir().display(),
                real = real_rustc().display(),
            ),
        );
        let action = match rustup {
            Rustup::Fails => "echo 'error: (stub) could not download rust-std' >&2; exit 1".to_string(),
            Rustup::Installs => format!(": > '{}/libcore-0000000000000000.rlib'", machine.libdir().display()),
        };
        write_script(
            &root.join("bin/rustup"),
            &format!("echo \"$*\" >> '{log}'\n{action}\n", log = root.join("rustup.log").display()),
        );
        machine
    }

    fn libdir(&self) -> PathBuf {
        self.dir.path().join("wasm32-wasip2-lib")
    }

    fn rustc(&self) -> PathBuf {
        self.dir.path().join("rustc")
    }

    fn target_dir(&self) -> PathBuf {
        self.dir.path().join("target")
    }

    /// What `rustup target add` would have done.
    fn install_std(&self) {
        fs::write(self.libdir().join("libcore-0000000000000000.rlib"), "").unwrap();
    }

    /// The arguments of every rustup call, one call a line.
    fn rustup_calls(&self) -> String {
        fs::read_to_string(self.dir.path().join("rustup.log")).unwrap_or_default()
    }

    /// What the wrapper printed for the user (to the terminal, outside tests).
    fn notices(&self) -> String {
        fs::read_to_string(self.dir.path().join("notices")).unwrap_or_default()
    }

    /// Cargo, run in `dir` on this machine, with the wrappers `.cargo/config.toml`
    /// (or the caller) chooses rather than the environment's.
    fn cargo(&self, dir: &Path, args: &[&str]) -> Command {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path =
            std::env::join_paths(std::iter::once(self.dir.path().join("bin")).chain(std::env::split_paths(&path)))
                .unwrap();
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(dir)
            .args(args)
            .env("PATH", path)
            .env("RUSTC", self.rustc())
            .env("CARGO_TARGET_DIR", self.target_dir())
            .env("TOLLGATE_NOTICES", self.dir.path().join("notices"));
        // Cargo keys its cache of rustc's answers on RUSTUP_TOOLCHAIN too, and
        // keeps no cache when it names no installed toolchain; tests that need
        // it set it.
        for var in [
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_BUILD_RUSTC",
            "CARGO_BUILD_RUSTC_WRAPPER",
            "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_TARGET_DIR",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
        ] {
            cargo.env_remove(var);
        }
        cargo
    }

    /// A one-file binary crate (its own workspace) in this machine's directory.
    fn trivial_crate(&self) -> PathBuf {
        let dir = self.dir.path().join("trivial");
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"trivial\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
        )
        .unwrap();
        fs::write(dir.join("src/main.rs"), "fn main() {\n    println!(\"built through the wrapper\");\n}\n").unwrap();
        dir
    }
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run cargo")
}

/// The README's build on a machine that lacks the target and cannot install
/// it: cargo must stop at its first rustc call, before it compiles (or even
/// resolves) anything, and say what to do.
#[test]
fn missing_target_that_cannot_be_installed_stops_the_build_before_anything_compiles() {
    let machine = Machine::new(false, Rustup::Fails, false);
    // Failing, the wrapper touches itself: other builds only re-ask rustc once.
    let output = run(machine.cargo(&workspace(), &["build"]).env("RUSTUP_TOOLCHAIN", TOOLCHAIN));
    let stderr = text(&output.stderr);

    assert!(!output.status.success(), "cargo build succeeded without the target:\n{stderr}");
    assert!(!stderr.contains("Compiling"), "cargo compiled before the check stopped it:\n{stderr}");
    // The wrapper ran from .cargo/config.toml's relative path.
    assert!(stderr.contains(&format!("`{} ", wrapper().display())), "the workspace's wrapper did not run:\n{stderr}");
    let install = format!("rustup target add --toolchain {TOOLCHAIN} wasm32-wasip2");
    assert_eq!(machine.rustup_calls(), format!("target add --toolchain {TOOLCHAIN} wasm32-wasip2\n"));
    for expected in [
        format!("error: the wasm32-wasip2 standard library is not installed for {}", machine.rustc().display()),
        format!("(no libcore in {}), and `{install}` failed (exit status 1).", machine.libdir().display()),
        "Tollgate compiles its plugins and test guests to WebAssembly for wasm32-wasip2".to_string(),
        format!("\n      {install}\n"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert_eq!(
        machine.notices().lines().next(),
        Some(
            format!(
                "tollgate: wasm32-wasip2 is not installed for {}; installing it: {install}",
                machine.rustc().display()
            )
            .as_str()
        )
    );
}

/// A missing target that rustup can install is installed (for the active
/// toolchain, or the default one when cargo was not started by rustup), and
/// the build goes on.
#[test]
fn missing_target_is_installed_and_the_build_goes_on() {
    let machine = Machine::new(false, Rustup::Installs, true);
    let output = run(machine.cargo(&machine.trivial_crate(), &["run", "--quiet"]).env("RUSTC_WRAPPER", wrapper()));

    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "built through the wrapper\n");
    assert_eq!(machine.rustup_calls(), "target add wasm32-wasip2\n");
    assert_eq!(
        machine.notices(),
        format!(
            "tollgate: wasm32-wasip2 is not installed for {}; installing it: rustup target add wasm32-wasip2\n",
            machine.rustc().display()
        )
    );
}

/// With the target there, the wrapper is invisible: nothing is installed or
/// printed, every call (the probe, and each compile through a workspace
/// wrapper as under `cargo clippy`) reaches rustc unchanged.
#[test]
fn wrapper_is_transparent_when_the_target_is_present() {
    let machine = Machine::new(true, Rustup::Fails, true);
    let calls = machine.dir.path().join("workspace-wrapper.log");
    let workspace_wrapper = machine.dir.path().join("workspace-wrapper");
    write_script(&workspace_wrapper, &format!("echo \"$*\" >> '{}'\nexec \"$@\"\n", calls.display()));
    let output = run(machine
        .cargo(&machine.trivial_crate(), &["run", "--quiet"])
        .env("RUSTC_WRAPPER", wrapper())
        .env("RUSTC_WORKSPACE_WRAPPER", &workspace_wrapper));

    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "built through the wrapper\n");
    assert_eq!(machine.rustup_calls(), "");
    assert_eq!(machine.notices(), "");
    let calls = fs::read_to_string(calls).unwrap();
    let rustc = machine.rustc().display().to_string();
    assert!(calls.lines().any(|call| call.starts_with(&format!("{rustc} - --crate-name ___ "))), "{calls}");
    assert!(calls.lines().any(|call| call.starts_with(&format!("{rustc} --crate-name trivial "))), "{calls}");

    // Called directly as cargo calls it, it answers as rustc does.
    let direct = Command::new(wrapper()).arg(real_rustc()).arg("-vV").output().unwrap();
    let plain = Command::new(real_rustc()).arg("-vV").output().unwrap();
    assert!(direct.status.success());
    assert_eq!(text(&direct.stdout), text(&plain.stdout));
}

/// Cargo caches the answer to its first rustc call per target directory,
/// failures included; once the user has installed the target, the next build
/// must ask again instead of repeating the error.
#[test]
fn installing_the_target_after_a_failed_build_is_enough() {
    let machine = Machine::new(false, Rustup::Fails, true);
    // A copy of the wrapper, as it touches itself (cargo's cache key has its
    // mtime), dated in the past so the touch changes it even on file systems
    // with coarse timestamps.
    let copy = machine.dir.path().join("ensure-guest-target.sh");
    fs::copy(wrapper(), &copy).unwrap();
    fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    // Cargo writes its cache only into an existing target directory.
    fs::create_dir(machine.target_dir()).unwrap();
    let crate_dir = machine.trivial_crate();

    let failed = run(machine.cargo(&crate_dir, &["run", "--quiet"]).env("RUSTC_WRAPPER", &copy));
    assert!(!failed.status.success(), "{}", text(&failed.stderr));

    machine.install_std();
    let output = run(machine.cargo(&crate_dir, &["run", "--quiet"]).env("RUSTC_WRAPPER", &copy));
    assert!(output.status.success(), "cargo repeated its cached failure:\n{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "built through the wrapper\n");
}
