//! Builds the kernel programs (`observer-ebpf`) for the BPF target and leaves
//! the object in `OUT_DIR`, where `src/ebpf.rs` embeds it.
//!
//! Toolchain: `CP_OBSERVER_BPF_TOOLCHAIN` if set, else the rustup toolchain
//! `cp-observer-bpf` that `cargo xtask build-ebpf` links to Debian's compiler
//! when it exists, else `nightly` (the usual aya setup: nightly + rust-src).
//!
//! `aya_build` forwards every line of the inner cargo build (each crate it
//! compiles, `core` included) as a build-script warning. So this script runs
//! itself a second time to do the build, keeps that output, and shows one
//! line when the build succeeds (plus any compiler diagnostic), all of it
//! when it fails.

use std::{
    env,
    process::{Command, ExitCode},
};

const LINKED: &str = "cp-observer-bpf";
/// Set in the second run, the one that builds, to the toolchain the first
/// run picked.
const INNER: &str = "CP_OBSERVER_BUILD_EBPF";
const WARNING: &str = "cargo:warning=";

fn main() -> ExitCode {
    if let Ok(toolchain) = env::var(INNER) {
        return match build(&toolchain) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("{WARNING}{e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let toolchain = toolchain();
    let out =
        match env::current_exe().and_then(|me| Command::new(me).env(INNER, &toolchain).output()) {
            Ok(out) => out,
            Err(e) => {
                eprintln!("cannot run the build script again to build the kernel programs: {e}");
                return ExitCode::FAILURE;
            }
        };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (log, directives): (Vec<&str>, Vec<&str>) =
        stdout.lines().partition(|l| l.starts_with(WARNING));
    let log = log.iter().map(|l| &l[WARNING.len()..]);
    for directive in directives {
        println!("{directive}");
    }
    if !out.status.success() {
        for line in log {
            println!("{WARNING}{line}");
        }
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("building the kernel programs (observer-ebpf) failed; its output is above");
        return ExitCode::FAILURE;
    }
    for line in log.filter(|l| !l.trim().is_empty() && !is_progress(l)) {
        println!("{WARNING}{line}");
    }
    println!("{WARNING}kernel programs built (observer-ebpf, toolchain {toolchain})");
    ExitCode::SUCCESS
}

/// The inner build: `aya_build` as documented.
fn build(toolchain: &str) -> aya_build::Result<()> {
    println!("cargo:rerun-if-env-changed=CP_OBSERVER_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-changed=../observer-common/src");
    if toolchain == LINKED {
        // Debian's compiler is a stable release: let it take `-Z build-std`.
        // SAFETY: build scripts are single-threaded.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir: "../observer-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
}

fn toolchain() -> String {
    env::var("CP_OBSERVER_BPF_TOOLCHAIN").unwrap_or_else(|_| {
        if toolchain_exists(LINKED) {
            LINKED.to_owned()
        } else {
            "nightly".to_owned()
        }
    })
}

fn toolchain_exists(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Cargo's own progress lines (`   Compiling core v0.0.0`, `    Finished
/// ...`): right-aligned verbs, not diagnostics.
fn is_progress(line: &str) -> bool {
    let trimmed = line.trim_start();
    line.len() > trimmed.len()
        && trimmed.split_once(' ').is_some_and(|(verb, _)| {
            verb.chars().all(|c| c.is_ascii_alphabetic())
                && verb.starts_with(|c: char| c.is_ascii_uppercase())
        })
}
