//! Making sure the eBPF toolchain is here, and installing it when it is not.
//!
//! Two routes, tried in order:
//! 1. the usual aya setup: a rustup `nightly` with `rust-src`, and
//!    `bpf-linker` on PATH;
//! 2. Debian's packaged compiler (`rustc-web`, whose library source comes
//!    with `rust-web-src`) linked into rustup as the toolchain
//!    `cp-observer-bpf`, and `bpf-linker` built against Debian's LLVM 22.
//!
//! `observer/build.rs` picks `cp-observer-bpf` when it exists, `nightly`
//! otherwise. Every check is a file test or a quick command, so a machine
//! that has everything pays almost nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::command::run_checked;

/// The rustup toolchain name `observer/build.rs` looks for.
const LINKED: &str = "cp-observer-bpf";
/// Debian's library source, needed for `-Z build-std=core`.
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";
const DEBIAN_LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// Debian packages of route 2: the compiler, its source, and what
/// bpf-linker needs to build against LLVM 22.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// bpf-linker release known to work with rustc 1.96 / LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Ensures one route is complete.
pub fn ensure() -> Result<()> {
    if nightly_has_rust_src() {
        if which("bpf-linker").is_none() {
            say("installing bpf-linker for the nightly toolchain");
            run_checked(Command::new("cargo").args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ]))?;
        }
        return Ok(());
    }
    ensure_debian_compiler()?;
    ensure_linked_toolchain()?;
    if which("bpf-linker").is_none() {
        say("building bpf-linker against Debian's LLVM 22 (about a minute)");
        let path = format!(
            "{DEBIAN_LLVM_BIN}:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run_checked(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    BPF_LINKER_VERSION,
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("PATH", path),
        )?;
    }
    Ok(())
}

/// Ensures the commands the lab and the tests run (`ip` from iproute2).
pub fn ensure_lab_tools() -> Result<()> {
    if which("ip").is_some() {
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!("the lab needs `ip` (iproute2); install it");
    }
    ensure_debian_packages(&["iproute2"])
}

fn say(what: &str) {
    eprintln!("xtask: {what}");
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

fn ensure_debian_compiler() -> Result<()> {
    if which("apt-get").is_none() {
        bail!(
            "no eBPF toolchain: install a rustup nightly with rust-src and `cargo install bpf-linker`, \
             or run on Debian where xtask can install rustc-web"
        );
    }
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    if !Path::new(DEBIAN_RUST_SRC).join("core").is_dir() {
        bail!("rust-web-src is installed but {DEBIAN_RUST_SRC} is missing");
    }
    Ok(())
}

/// Installs the Debian packages of `packages` that are missing.
pub fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

/// Links Debian's compiler into rustup as `cp-observer-bpf`: a directory
/// whose `bin/` holds links to /usr/bin/rustc and /usr/bin/cargo and whose
/// `lib` is /usr/lib (where the library source lives).
fn ensure_linked_toolchain() -> Result<()> {
    let ok = Command::new("rustup")
        .args(["run", LINKED, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    say(&format!(
        "linking Debian's rustc into rustup as the toolchain {LINKED}"
    ));
    let dir = toolchain_dir()?;
    std::fs::create_dir_all(dir.join("bin"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (link, target) in [
        ("bin/rustc", "/usr/bin/rustc"),
        ("bin/cargo", "/usr/bin/cargo"),
        ("lib", "/usr/lib"),
    ] {
        let link = dir.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    run_checked(
        Command::new("rustup")
            .args(["toolchain", "link", LINKED])
            .arg(&dir),
    )
}

fn toolchain_dir() -> Result<PathBuf> {
    cache_dir("toolchain")
}

/// `~/.cache/cp-observer/NAME`, where everything installed or built once
/// is kept (not created here).
pub fn cache_dir(name: &str) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/cp-observer").join(name))
}

/// The release of the running kernel (`uname -r`).
pub fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
