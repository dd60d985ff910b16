#!/bin/sh
# Cargo's rustc wrapper for this workspace (build.rustc-wrapper in
# .cargo/config.toml): makes sure the wasm32-wasip2 standard library is
# installed before anything compiles.
#
# Why: every build compiles the plugins for wasm32-wasip2 (host/build.rs),
# and every test build the test guests too (tests/artifacts/build.rs).
# rust-toolchain.toml lists the target, but rustup does not add a missing
# target to an installed toolchain when RUSTUP_AUTO_INSTALL=0, and cargo runs
# those build scripts near the end of a clean build (it starts the
# units that most others wait for first), so a missing target used to fail the
# build after ~13 minutes of compiling (issue 14).
#
# How: before it resolves or compiles anything, cargo asks rustc (through this
# wrapper) about the target: `rustc - --crate-name ___ --print=...`, the
# target-info probe. On that call only, this script asks that rustc where the
# wasm32-wasip2 libraries belong; if there is no libcore there, it runs
# `rustup target add` for the active toolchain (rustup's proxies set
# RUSTUP_TOOLCHAIN) and, if that does not fix it, explains and exits non-zero,
# which stops cargo within seconds. Every call, the probe included once the
# target is there, then runs unchanged (exec).
#
# Cargo runs: this script, [RUSTC_WORKSPACE_WRAPPER: clippy-driver under
# `cargo clippy`], rustc, then rustc's arguments.
#
# Cargo caches the probe's answer in <target dir>/.rustc_info.json, so this
# check runs once per target directory (and again when the compiler or this
# file changes), not on every build. The build scripts repeat it
# (host/guest-build) for builds that
# do not use this wrapper (RUSTC_WRAPPER set, cargo started outside the
# workspace).
#
# TOLLGATE_NOTICES=<file>, for tests: where the install notes go.

target=wasm32-wasip2

# Compiles, the calls that matter for speed, go straight on.
case " $* " in
*" ___ "*) ;;
*) exec "$@" ;;
esac

# Is this the probe, and which argument is rustc (the last one before the
# first option: what follows the wrappers)?
probe=false
rustc=
seen_option=false
prev=
for arg in "$@"; do
    case $arg in
    -*) seen_option=true ;;
    *) $seen_option || rustc=$arg ;;
    esac
    if [ "$prev" = --crate-name ] && [ "$arg" = ___ ]; then
        probe=true
    fi
    prev=$arg
done
$probe || exec "$@"

# Whether $rustc has the standard library for $target; sets $libdir.
has_std() {
    libdir=$("$rustc" --print target-libdir --target "$target" 2>/dev/null) || return 1
    for lib in "$libdir"/libcore-*.rlib; do
        [ -e "$lib" ] && return 0
    done
    return 1
}
has_std && exec "$@"

if [ -n "${RUSTUP_TOOLCHAIN:-}" ]; then
    install="rustup target add --toolchain $RUSTUP_TOOLCHAIN $target"
else
    install="rustup target add $target"
fi

# Cargo captures this call's output and shows it only if the call fails, so
# the notes (and rustup's progress) go to the terminal when there is one.
if [ -n "${TOLLGATE_NOTICES:-}" ]; then
    exec 3>>"$TOLLGATE_NOTICES"
elif (: >/dev/tty) 2>/dev/null; then
    exec 3>/dev/tty
else
    exec 3>&2
fi

if ! command -v rustup >/dev/null 2>&1; then
    reason="rustup is not on PATH, so it could not be installed."
else
    echo "tollgate: $target is not installed for $rustc; installing it: $install" >&3
    if [ -n "${RUSTUP_TOOLCHAIN:-}" ]; then
        rustup target add --toolchain "$RUSTUP_TOOLCHAIN" "$target" >&3 2>&3
    else
        rustup target add "$target" >&3 2>&3
    fi
    status=$?
    if [ "$status" -eq 0 ]; then
        has_std && exec "$@" 3>&-
        reason="\`$install\` succeeded, but this rustc still has none: it is not that toolchain's rustc."
    else
        reason="\`$install\` failed (exit status $status)."
    fi
fi

# Cargo also caches a failed probe, and would repeat this error after the
# target is installed; a newer mtime on this file makes it ask again.
touch "$0" 2>/dev/null

cat >&2 <<EOF
error: the $target standard library is not installed for $rustc
(no libcore in ${libdir:-its target-libdir}), and $reason
Tollgate compiles its plugins and test guests to WebAssembly for $target
(host/build.rs, tests/artifacts/build.rs), so every build of this workspace needs it. Install it, then
run cargo again:

    $install
EOF
exit 1
