//! A real kube-apiserver for the end-to-end tests, built once from Debian's
//! `kubernetes` source package and cached (no registry ships the binary).
//!
//! Recipe: enable deb-src, install Go, etcd and the build tools, fetch the
//! source package, build `cmd/kube-apiserver` statically, keep the binary in
//! `~/.cache/cp-observer/kube/` and drop the source tree. About five minutes
//! and 1.3 GB of memory the first time; a file test afterwards.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{command::run_checked, toolchain};

/// The version Debian 12 packages (1.20.5+really1.20.2).
const VERSION: &str = "v1.20.2";
const SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// Paths of the binaries the e2e tests need.
pub struct Binaries {
    /// The cached kube-apiserver.
    pub apiserver: PathBuf,
    /// etcd from Debian.
    pub etcd: PathBuf,
    /// kubectl (the machine's, or Debian's).
    pub kubectl: PathBuf,
}

impl Binaries {
    /// The environment through which the tests and the lab find them.
    pub fn env(&self) -> [(&'static str, &Path); 3] {
        [
            ("CP_OBSERVER_KUBE_APISERVER", &self.apiserver),
            ("CP_OBSERVER_ETCD", &self.etcd),
            ("CP_OBSERVER_KUBECTL", &self.kubectl),
        ]
    }
}

/// Builds the apiserver if it is not cached, installs etcd and kubectl.
pub fn ensure() -> Result<Binaries> {
    let dir = cache_dir()?;
    let apiserver = dir.join(format!("kube-apiserver-{VERSION}"));
    toolchain::ensure_debian_packages(&["etcd-server"])?;
    if toolchain::which("kubectl").is_none() {
        toolchain::ensure_debian_packages(&["kubernetes-client"])?;
    }
    let kubectl = toolchain::which("kubectl").context("kubectl is still missing")?;
    if !apiserver.exists() {
        build(&dir, &apiserver)?;
    }
    Ok(Binaries {
        apiserver,
        etcd: PathBuf::from("/usr/bin/etcd"),
        kubectl,
    })
}

fn cache_dir() -> Result<PathBuf> {
    let dir = toolchain::cache_dir("kube")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn build(dir: &Path, target: &Path) -> Result<()> {
    eprintln!(
        "xtask: building kube-apiserver {VERSION} from Debian's source package (about 5 minutes, once)"
    );
    enable_deb_src()?;
    toolchain::ensure_debian_packages(&["golang-go", "rsync", "make"])?;
    if !std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".orig.tar.gz"))
    {
        run_checked(
            Command::new("apt-get")
                .args(["source", "--download-only", "kubernetes"])
                .current_dir(dir),
        )?;
    }
    let orig = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.gz"))
        .context("the kubernetes source package has no .orig.tar.gz")?;
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    run_checked(
        Command::new("tar")
            .arg("xzf")
            .arg(&orig)
            .arg("-C")
            .arg(&src)
            .arg("--strip-components=1"),
    )?;
    let version_file = dir.join("version.env");
    std::fs::write(
        &version_file,
        format!(
            "KUBE_GIT_VERSION='{VERSION}'\nKUBE_GIT_MAJOR='1'\nKUBE_GIT_MINOR='20'\nKUBE_GIT_TREE_STATE='clean'\n\
             KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'\n"
        ),
    )?;
    run_checked(
        Command::new("make")
            .args(["WHAT=cmd/kube-apiserver"])
            .env("CGO_ENABLED", "0")
            .env("KUBE_GIT_VERSION_FILE", &version_file)
            .current_dir(&src),
    )?;
    let built = src.join("_output/local/bin/linux/amd64/kube-apiserver");
    std::fs::copy(&built, target).with_context(|| format!("cannot copy {}", built.display()))?;
    // The tree and its build output are ~2 GB; the binary is all we need.
    let _ = std::fs::remove_dir_all(&src);
    Ok(())
}

/// Adds `deb-src` to the first `Types:` line of Debian's sources (the
/// usual way to enable source packages); `apt-get update` follows in the install.
fn enable_deb_src() -> Result<()> {
    let text =
        std::fs::read_to_string(SOURCES).with_context(|| format!("cannot read {SOURCES}"))?;
    if text
        .lines()
        .any(|l| l.starts_with("Types:") && l.contains("deb-src"))
    {
        return Ok(());
    }
    let Some(pos) = text.find("Types: deb\n") else {
        bail!("{SOURCES} has no `Types: deb` line to add deb-src to");
    };
    let mut new = text.clone();
    new.replace_range(pos..pos + "Types: deb\n".len(), "Types: deb deb-src\n");
    std::fs::write(SOURCES, new).with_context(|| format!("cannot write {SOURCES}"))?;
    run_checked(Command::new("apt-get").args(["update", "-qq"]))
}
