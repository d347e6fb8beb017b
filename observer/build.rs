//! Builds the kernel programs (`observer-ebpf`) for the BPF target and leaves
//! the object in `OUT_DIR`, where `src/ebpf.rs` embeds it.
//!
//! Toolchain: `CP_OBSERVER_BPF_TOOLCHAIN` if set, else the rustup toolchain
//! `cp-observer-bpf` that `cargo xtask build-ebpf` links to Debian's compiler
//! when it exists, else `nightly` (the usual aya setup: nightly + rust-src).

use std::{env, process::Command};

const LINKED: &str = "cp-observer-bpf";

fn main() -> aya_build::Result<()> {
    println!("cargo:rerun-if-env-changed=CP_OBSERVER_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-changed=../observer-common/src");
    let toolchain = env::var("CP_OBSERVER_BPF_TOOLCHAIN").unwrap_or_else(|_| {
        if toolchain_exists(LINKED) {
            LINKED.to_owned()
        } else {
            "nightly".to_owned()
        }
    });
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
        aya_build::Toolchain::Custom(&toolchain),
    )
}

fn toolchain_exists(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
