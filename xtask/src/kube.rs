//! Kubernetes for the end-to-end tests and the real node, built once from
//! Debian's `kubernetes` source package and cached (no registry ships the
//! binaries).
//!
//! Recipe: enable deb-src, install Go, etcd and the build tools, fetch the
//! source package, swap its vendored `reflect2` for Debian's (see
//! [`fix_reflect2`]), build the five components statically and the sandbox
//! (`pause`) binary, keep the binaries in `~/.cache/cp-observer/kube/<BUILD>/`
//! and drop the source tree. About eleven minutes and 1.5 GB of memory the
//! first time; a file test afterwards.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{command::run_checked, toolchain};

/// The version Debian 12 packages (1.20.5+really1.20.2).
const VERSION: &str = "v1.20.2";
/// The cache folder of one build: the version and what was changed in the
/// source. A change to the recipe gets a new name, so an old cache is
/// never taken for a new one.
const BUILD: &str = "v1.20.2-reflect2-1.0.2";
/// The components built, each `cmd/<name>` of the source tree.
pub const COMPONENTS: [&str; 5] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];
/// Debian's reflect2 source (package golang-github-modern-go-reflect2-dev).
const REFLECT2: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
const SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// Paths of the binaries the e2e tests and the real node need.
pub struct Binaries {
    /// The folder of the cached build: `kube-apiserver`, `kubelet`, ...
    /// (see [`COMPONENTS`]) and `pause`.
    pub dir: PathBuf,
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

impl Binaries {
    /// The cached binary `name` (a component or `pause`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Builds Kubernetes if it is not cached, installs etcd and kubectl.
pub fn ensure() -> Result<Binaries> {
    let top = cache_dir()?;
    let dir = top.join(BUILD);
    let apiserver = dir.join("kube-apiserver");
    toolchain::ensure_debian_packages(&["etcd-server"])?;
    if toolchain::which("kubectl").is_none() {
        toolchain::ensure_debian_packages(&["kubernetes-client"])?;
    }
    let kubectl = toolchain::which("kubectl").context("kubectl is still missing")?;
    // The last file written by a build: its presence means a complete one.
    if !dir.join("pause").exists() {
        build(&top, &dir)?;
    }
    Ok(Binaries {
        dir,
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

/// Builds into `out` from the source package kept in `dir`.
fn build(dir: &Path, out: &Path) -> Result<()> {
    eprintln!(
        "xtask: building Kubernetes {VERSION} from Debian's source package (about 11 minutes, once)"
    );
    enable_deb_src()?;
    toolchain::ensure_debian_packages(&[
        "golang-go",
        "rsync",
        "make",
        "gcc",
        "libc6-dev",
        "golang-github-modern-go-reflect2-dev",
    ])?;
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
    fix_reflect2(&src)?;
    let what = COMPONENTS.map(|c| format!("cmd/{c}")).join(" ");
    run_checked(
        Command::new("make")
            .arg(format!("WHAT={what}"))
            .env("CGO_ENABLED", "0")
            .env("KUBE_GIT_VERSION_FILE", &version_file)
            .current_dir(&src),
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for name in COMPONENTS {
        let built = src.join("_output/local/bin/linux/amd64").join(name);
        std::fs::copy(&built, out.join(name))
            .with_context(|| format!("cannot copy {}", built.display()))?;
    }
    // The sandbox container's one process, as the Kubernetes image builds it.
    run_checked(
        Command::new("gcc")
            .args([
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                "-DVERSION=v3.4-cp-observer",
            ])
            .arg("-o")
            .arg(out.join("pause"))
            .arg(src.join("build/pause/linux/pause.c")),
    )?;
    // The tree and its build output are ~2 GB; the binaries are all we need.
    let _ = std::fs::remove_dir_all(&src);
    Ok(())
}

/// The vendored `github.com/modern-go/reflect2` v1.0.1 crashes under Go ≥
/// 1.18 ("fatal error: fault", e.g. when the apiserver serves a custom
/// resource); Debian's 1.0.2 does not. Replaces the vendored copy and its
/// version in `go.mod` and `vendor/modules.txt`.
fn fix_reflect2(src: &Path) -> Result<()> {
    let vendored = src.join("vendor/github.com/modern-go/reflect2");
    std::fs::remove_dir_all(&vendored)
        .with_context(|| format!("cannot remove {}", vendored.display()))?;
    run_checked(Command::new("cp").arg("-rL").arg(REFLECT2).arg(&vendored))?;
    let _ = std::fs::remove_file(vendored.join("go.mod"));
    for file in ["go.mod", "vendor/modules.txt"] {
        let path = src.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let old = "github.com/modern-go/reflect2 v1.0.1";
        if !text.contains(old) {
            bail!(
                "{} does not name `{old}`: the recipe needs a look",
                path.display()
            );
        }
        std::fs::write(
            &path,
            text.replace(old, "github.com/modern-go/reflect2 v1.0.2"),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
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
