//! Container images for the real node: the agent's, built from
//! `deploy/Dockerfile` without a daemon (buildah), and three small test
//! images, each exported as a docker-archive tarball that
//! `ctr -n k8s.io images import` takes.
//!
//! No base image can be pulled here, so the Dockerfile's two bases are made
//! from Debian's registry by mmdebstrap, with the host's apt sources:
//! - the build base stands for `rust:1-bookworm`: Debian 12, gcc, the host's
//!   rustup toolchain (copied, as none can be downloaded) under the official
//!   image's `RUSTUP_HOME` and `CARGO_HOME`, and what route 2 of
//!   [`toolchain::ensure`] needs (its Debian packages, and the host's
//!   `bpf-linker`), so the Dockerfile's unchanged `cargo xtask build-ebpf`
//!   finds everything but the linked toolchain already there;
//! - the runtime base stands for `distroless/cc-debian12`: glibc, libgcc,
//!   time zones, `/etc/passwd`; no shell.
//!
//! Each is keyed by a hash of its recipe (the options below, the sources,
//! the versions of what it copies from the host), written as a
//! docker-archive under `~/.cache/cp-observer/images/bases/` and imported
//! into buildah's storage as `localhost/cp-observer-{build,runtime}-base:<key>`,
//! which is its cache from then on (the archive is removed).
//!
//! The agent is built every time by `buildah bud --layers`: unchanged
//! sources hit its layer cache (seconds); changed ones recompile with the
//! Dockerfile's cache mounts (cargo registry, target directory) warm. Its
//! export is skipped when the image ID is the one exported last. The test
//! images are directories written straight as docker-archives, no buildah.

use std::{
    fmt, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    cargo,
    command::{run_checked, stdout_checked, succeeds},
    toolchain,
};

/// Part of every key: bump it when a recipe changes in a way its options
/// and inputs do not show (the code that writes the files, say).
const RECIPE: &str = "1";
const SUITE: &str = "bookworm";
const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The trust store the Dockerfile's RUN steps see: the host's, so that
/// crates.io is reached inside the build as on the host (through a
/// TLS-inspecting proxy whose CA only the host trusts, for one).
const HOST_CERTS: &str = "/etc/ssl/certs";
const BUILD_BASE: &str = "localhost/cp-observer-build-base";
const RUNTIME_BASE: &str = "localhost/cp-observer-runtime-base";
const AGENT: &str = "docker.io/library/cp-observer";
const WEB: &str = "docker.io/library/cp-observer-test-web:1";
const TLS: &str = "docker.io/library/cp-observer-test-tls:1";
const PAUSE: &str = "registry.k8s.io/pause:3.4-cp-observer";
/// Where the official rust image keeps rustup's and cargo's homes.
const RUSTUP_HOME: &str = "/usr/local/rustup";
const CARGO_HOME: &str = "/usr/local/cargo";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The one difference between `agent` and `agent_next`.
const NEXT_LABEL: &str = "io.cp-observer.test.variant=next";
/// What this module runs (buildah runs RUN steps with runc).
const PACKAGES: &[&str] = &["buildah", "runc", "mmdebstrap", "busybox-static", "openssl"];
const BUSYBOX: &str = "/bin/busybox";
/// The creation time in the configs written here: fixed, so the same
/// inputs give the same image ID.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// The users distroless images have.
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";
/// Removed from the images made with `--variant=extract` (whose hooks are
/// extract hooks: mmdebstrap runs no customize hook for it): documentation,
/// and the host's files the runtime mounts over (mmdebstrap's own cleanup
/// needs `/etc/apt`).
const EXTRACT_CLEANUP: &str = r#"rm -rf "$1/usr/share/doc" "$1/usr/share/man" "$1/usr/share/lintian" "$1/usr/share/locale" "$1/etc/resolv.conf" "$1/etc/hostname" && mkdir -p -m 1777 "$1/tmp""#;

/// The images of the real node, each an image reference as kubelet sees it
/// (after `ctr -n k8s.io images import`) and the docker-archive holding it.
pub struct Images {
    /// The folder of the tarballs (`~/.cache/cp-observer/images`).
    pub dir: PathBuf,
    /// The agent built from `deploy/Dockerfile`, tagged with the workspace
    /// version as `deploy/base/daemonset.yaml` names it:
    /// `docker.io/library/cp-observer:0.1.0`.
    pub agent: String,
    pub agent_tar: PathBuf,
    /// The same agent with one more label: another image ID, for a rolling
    /// update (`docker.io/library/cp-observer:0.1.0-next`).
    pub agent_next: String,
    pub agent_next_tar: PathBuf,
    /// busybox `httpd -f -p 8080 -h /www` serving an index page; busybox's
    /// applets (`sh`, `nc`, `wget`, ...) in `/bin`.
    pub web: String,
    pub web_tar: PathBuf,
    /// `openssl s_server -www` on 8443 with a self-signed certificate
    /// (`/tls/cert.pem`, CN and SAN `cp-observer-test-tls`, made when the
    /// image was), plus the busybox applets.
    pub tls: String,
    pub tls_tar: PathBuf,
    /// The sandbox image: the given `pause` binary as `/pause`, its entry point.
    pub pause: String,
    pub pause_tar: PathBuf,
}

impl fmt::Display for Images {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "images in {}:", self.dir.display())?;
        for (name, tar) in [
            (&self.agent, &self.agent_tar),
            (&self.agent_next, &self.agent_next_tar),
            (&self.web, &self.web_tar),
            (&self.tls, &self.tls_tar),
            (&self.pause, &self.pause_tar),
        ] {
            writeln!(f, "{name}\t{}", tar.display())?;
        }
        Ok(())
    }
}

/// Makes every image that is missing or out of date: the bases once per
/// recipe, the agent from the current sources (buildah's layer cache makes
/// an unchanged tree cost seconds), the test images once per recipe and
/// `pause_binary`. Needs root (buildah, mmdebstrap) and the package
/// registries (Debian's, crates.io) the first time.
pub fn ensure(pause_binary: &Path) -> Result<Images> {
    toolchain::ensure_debian_packages(PACKAGES)?;
    // The build base copies the host's bpf-linker, which route 2 makes.
    toolchain::ensure()?;
    let dir = toolchain::cache_dir("images")?;
    let bases = dir.join("bases");
    fs::create_dir_all(&bases).with_context(|| format!("cannot create {}", bases.display()))?;
    let sources = Sources::of_host(&dir)?;
    let build_base = ensure_base(&dir, &sources, &build_base()?)?;
    let runtime_base = ensure_base(&dir, &sources, &runtime_base(&dir)?)?;
    let [(agent, agent_tar), (agent_next, agent_next_tar)] =
        ensure_agent(&dir, &build_base, &runtime_base)?;
    Ok(Images {
        agent,
        agent_tar,
        agent_next,
        agent_next_tar,
        web: WEB.to_owned(),
        web_tar: ensure_web(&dir)?,
        tls: TLS.to_owned(),
        tls_tar: ensure_tls(&dir, &sources)?,
        pause: PAUSE.to_owned(),
        pause_tar: ensure_pause(&dir, pause_binary)?,
        dir,
    })
}

fn say(what: &str) {
    eprintln!("xtask: {what}");
}

/// The host's Debian sources as mmdebstrap gets them: binary packages
/// only (kube.rs enables deb-src on the host, which would make every
/// bootstrap fetch the source indices as well).
struct Sources {
    path: PathBuf,
    text: String,
}

impl Sources {
    fn of_host(dir: &Path) -> Result<Self> {
        let host = fs::read_to_string(HOST_SOURCES).with_context(|| {
            format!("cannot read {HOST_SOURCES} (the images need Debian's apt sources)")
        })?;
        let text: String = host
            .lines()
            .map(|l| {
                if l.starts_with("Types:") {
                    "Types: deb"
                } else {
                    l
                }
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        let path = dir.join("debian.sources");
        fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { path, text })
    }
}

/// A root file system made by mmdebstrap.
struct Bootstrap {
    /// mmdebstrap's options: variant, packages, hooks.
    options: Vec<String>,
    /// What else the result depends on (versions of what the hooks copy
    /// from the host), for the key.
    inputs: String,
}

impl Bootstrap {
    fn key(&self, sources: &Sources, config: &Value) -> String {
        key(&[
            &self.options.join("\n"),
            &self.inputs,
            &sources.text,
            &config.to_string(),
        ])
    }

    /// Writes the root file system as a tar file.
    fn run(&self, sources: &Sources, out: &Path) -> Result<()> {
        run_checked(
            Command::new("mmdebstrap")
                .arg("--aptopt=Acquire::Languages \"none\"")
                // The runtime provides /dev.
                .arg("--skip=output/dev")
                .args(&self.options)
                .arg(SUITE)
                .arg(out)
                .arg(&sources.path),
        )
        .with_context(|| format!("cannot bootstrap {}", out.display()))
    }
}

/// A base image for the Dockerfile.
struct Base {
    /// Its name in buildah's storage; the tag is the key.
    name: &'static str,
    bootstrap: Bootstrap,
    /// The image configuration (`Env`, `Cmd`, ...).
    config: Value,
}

/// Makes `base` unless buildah has it, and returns its reference.
fn ensure_base(dir: &Path, sources: &Sources, base: &Base) -> Result<String> {
    let key = base.bootstrap.key(sources, &base.config);
    let reference = format!("{}:{key}", base.name);
    if has_image(&reference) {
        return Ok(reference);
    }
    let short = base.name.rsplit('/').next().unwrap_or(base.name);
    let bases = dir.join("bases");
    let archive = bases.join(format!("{short}-{key}.tar"));
    if !archive.is_file() {
        remove_stale(&bases, &format!("{short}-"), &archive)?;
        say(&format!(
            "making the base image {reference} (mmdebstrap, once per recipe)"
        ));
        let layer = bases.join(format!("{short}-{key}.layer.tar"));
        base.bootstrap.run(sources, &layer)?;
        docker_archive(&layer, &base.config, &reference, &archive)?;
    }
    run_checked(
        Command::new("buildah")
            .args(["pull", "--quiet"])
            .arg(format!("docker-archive:{}", archive.display())),
    )
    .with_context(|| format!("cannot import {} into buildah", archive.display()))?;
    if !has_image(&reference) {
        bail!(
            "{} imported, but buildah has no {reference}",
            archive.display()
        );
    }
    // buildah's storage is the cache from now on; the archive of the build
    // base would be 2.6 GB more on disks that run short.
    remove_if_there(&archive)?;
    remove_old_tags(base.name, &key);
    Ok(reference)
}

fn has_image(reference: &str) -> bool {
    succeeds(Command::new("buildah").args(["inspect", "--type", "image", reference]))
}

/// Removes the files of `dir` named `prefix*` but `keep`: an old recipe's.
fn remove_stale(dir: &Path, prefix: &str, keep: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let stale = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(prefix));
        if stale && path != keep {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Untags the other recipes' images of `name` in buildah's storage, where
/// they take gigabytes. Best effort: one still in use stays.
fn remove_old_tags(name: &str, key: &str) {
    let Ok(list) = stdout_checked(Command::new("buildah").args([
        "images",
        "--noheading",
        "--format",
        "{{.Name}}:{{.Tag}}",
    ])) else {
        return;
    };
    for old in list
        .lines()
        .filter(|r| r.starts_with(&format!("{name}:")) && !r.ends_with(&format!(":{key}")))
    {
        succeeds(Command::new("buildah").args(["rmi", old]));
    }
}

/// The stand-in for `rust:1-bookworm`.
fn build_base() -> Result<Base> {
    let sysroot = stdout_checked(Command::new("rustc").args(["--print", "sysroot"]))?;
    // Canonical: a toolchain reached through a link (`1.95.0-...` ->
    // `stable-...`) is copied as the folder, not the link.
    let sysroot = fs::canonicalize(sysroot.trim())
        .with_context(|| format!("cannot resolve the sysroot {}", sysroot.trim()))?;
    let (Some(toolchains), Some(name)) = (
        sysroot.parent().filter(|p| p.ends_with("toolchains")),
        sysroot.file_name().and_then(|n| n.to_str()),
    ) else {
        bail!(
            "the build base copies the host's rustup toolchain, and {} is not one (install Rust with rustup)",
            sysroot.display()
        );
    };
    let rustup = toolchain::which("rustup").context("the build base needs rustup on PATH")?;
    let linker = toolchain::which("bpf-linker").context("bpf-linker is still missing")?;
    // The binaries copied in are named by their contents.
    let inputs = [
        stdout_checked(Command::new("rustc").arg("-vV"))?,
        sha256(&rustup)?,
        sha256(&linker)?,
    ]
    .concat();
    let packages = ["ca-certificates", "gcc", "libc6-dev"]
        .iter()
        .chain(toolchain::DEBIAN_PACKAGES)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    let env =
        format!("RUSTUP_HOME={RUSTUP_HOME} CARGO_HOME={CARGO_HOME} PATH={CARGO_HOME}/bin:{PATH}");
    let tools = [
        "cargo",
        "rustc",
        "rustdoc",
        "rustfmt",
        "cargo-fmt",
        "cargo-clippy",
        "clippy-driver",
    ];
    let hooks = [
        // The toolchain without its HTML documentation (800 MB).
        format!(
            r#"mkdir -p "$1{RUSTUP_HOME}/toolchains" "$1{CARGO_HOME}/bin" && cp -a {} "$1{RUSTUP_HOME}/toolchains/" && rm -rf "$1{RUSTUP_HOME}/toolchains/{name}/share/doc""#,
            quote(&toolchains.join(name))?,
        ),
        // rustup and its proxies, as rustup-init lays them out.
        format!(
            r#"cp {} "$1{CARGO_HOME}/bin/rustup" && for p in {}; do ln -s rustup "$1{CARGO_HOME}/bin/$p"; done"#,
            quote(&rustup)?,
            tools.join(" "),
        ),
        format!(r#"chroot "$1" env {env} rustup default {name}"#),
        // Checked by running it: it needs the base's libLLVM (route 2) or none.
        format!(
            r#"cp {} "$1{CARGO_HOME}/bin/bpf-linker" && chroot "$1" env {env} bpf-linker --version"#,
            quote(&linker)?,
        ),
    ];
    let mut options = vec![
        "--variant=apt".to_owned(),
        format!("--include={packages}"),
        "--dpkgopt=path-exclude=/usr/share/doc/*".to_owned(),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/man/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".to_owned(),
    ];
    options.extend(hooks.iter().map(|h| format!("--customize-hook={h}")));
    Ok(Base {
        name: BUILD_BASE,
        bootstrap: Bootstrap { options, inputs },
        config: json!({
            "Env": [
                format!("PATH={CARGO_HOME}/bin:{PATH}"),
                format!("RUSTUP_HOME={RUSTUP_HOME}"),
                format!("CARGO_HOME={CARGO_HOME}"),
            ],
            "Cmd": ["bash"],
        }),
    })
}

/// The stand-in for `gcr.io/distroless/cc-debian12`.
fn runtime_base(dir: &Path) -> Result<Base> {
    let files = staging(dir, "runtime-base")?;
    write(&files.join("etc/passwd"), PASSWD)?;
    write(&files.join("etc/group"), GROUP)?;
    let options = vec![
        "--variant=extract".to_owned(),
        "--include=base-files,netbase,tzdata,libc6,libgcc-s1".to_owned(),
        format!("--extract-hook=sync-in {} /", files.display()),
        format!("--extract-hook={EXTRACT_CLEANUP}"),
    ];
    Ok(Base {
        name: RUNTIME_BASE,
        bootstrap: Bootstrap {
            options,
            inputs: [PASSWD, GROUP].concat(),
        },
        config: json!({ "Env": [format!("PATH={PATH}")] }),
    })
}

/// Builds the agent image and its `-next` twin, exports what changed, and
/// returns both references with their tarballs.
fn ensure_agent(
    dir: &Path,
    build_base: &str,
    runtime_base: &str,
) -> Result<[(String, PathBuf); 2]> {
    let version = env!("CARGO_PKG_VERSION");
    let agent = format!("{AGENT}:{version}");
    let next = format!("{AGENT}:{version}-next");
    let root = cargo::workspace_root();
    let dockerfile = root.join("deploy/Dockerfile");
    let iid = dir.join("agent.iid");
    say(&format!(
        "building {agent} from {} (buildah)",
        dockerfile.display()
    ));
    run_checked(
        Command::new("buildah")
            .args(["bud", "--layers", "--pull=never", "--network=host"])
            .arg(format!("--volume={HOST_CERTS}:{HOST_CERTS}:ro"))
            .arg(format!("--build-arg=BUILD_IMAGE={build_base}"))
            .arg(format!("--build-arg=RUNTIME_IMAGE={runtime_base}"))
            .arg("--file")
            .arg(&dockerfile)
            .arg("--tag")
            .arg(&agent)
            .arg("--iidfile")
            .arg(&iid)
            .arg(&root),
    )
    .with_context(|| format!("cannot build {agent} from {}", dockerfile.display()))?;
    let id = fs::read_to_string(&iid).with_context(|| format!("cannot read {}", iid.display()))?;
    let id = id.trim();
    let agent_tar = dir.join("agent.tar");
    if !fresh(&agent_tar, id) {
        export(&agent, &agent_tar, id)?;
    }
    let next_tar = dir.join("agent-next.tar");
    if !fresh(&next_tar, id) {
        commit_next(&agent, &next)?;
        export(&next, &next_tar, id)?;
    }
    Ok([(agent, agent_tar), (next, next_tar)])
}

/// Commits `agent` plus [`NEXT_LABEL`] as `next`.
fn commit_next(agent: &str, next: &str) -> Result<()> {
    let container =
        stdout_checked(Command::new("buildah").args(["from", "--pull=never", "--quiet", agent]))?;
    let container = container.trim();
    let committed =
        run_checked(Command::new("buildah").args(["config", "--label", NEXT_LABEL, container]))
            .and_then(|()| {
                run_checked(Command::new("buildah").args(["commit", "--quiet", container, next]))
            });
    run_checked(Command::new("buildah").args(["rm", container]))?;
    committed.with_context(|| format!("cannot commit {next} from {agent}"))
}

/// Writes the image `reference` of buildah's storage to `tar` as a
/// docker-archive named `reference`, and `key` beside it.
fn export(reference: &str, tar: &Path, key: &str) -> Result<()> {
    let part = tar.with_extension("tar.part");
    remove_if_there(&part)?;
    remove_if_there(&stamp_path(tar))?;
    run_checked(
        Command::new("buildah")
            .args(["push", "--quiet", reference])
            .arg(format!("docker-archive:{}:{reference}", part.display())),
    )
    .with_context(|| format!("cannot export {reference} to {}", part.display()))?;
    rename(&part, tar)?;
    stamp(tar, key)
}

/// busybox's httpd on 8080.
fn ensure_web(dir: &Path) -> Result<PathBuf> {
    let busybox = deb_version("busybox-static")?;
    let index =
        "<!doctype html>\n<title>cp-observer test web</title>\n<p>cp-observer test web</p>\n";
    let config = json!({
        "Env": [format!("PATH={PATH}")],
        "Entrypoint": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
        "ExposedPorts": { "8080/tcp": {} },
    });
    let key = key(&["web", &busybox, index, &config.to_string()]);
    let tar = dir.join("web.tar");
    if fresh(&tar, &key) {
        return Ok(tar);
    }
    say(&format!("making the image {WEB}"));
    let files = staging(dir, "web")?;
    add_busybox(&files)?;
    write(&files.join("www/index.html"), index)?;
    fs::create_dir_all(files.join("tmp"))?;
    set_mode(&files.join("tmp"), 0o1777)?;
    let layer = dir.join("web.layer.tar");
    tar_dir(&files, &layer)?;
    remove_if_there(&stamp_path(&tar))?;
    docker_archive(&layer, &config, WEB, &tar)?;
    stamp(&tar, &key)?;
    remove_dir_if_there(&files)?;
    Ok(tar)
}

/// openssl's test server on 8443, on a small Debian.
fn ensure_tls(dir: &Path, sources: &Sources) -> Result<PathBuf> {
    let files = dir.join("staging/tls");
    let bootstrap = Bootstrap {
        options: vec![
            "--variant=extract".to_owned(),
            "--include=openssl".to_owned(),
            format!("--extract-hook=sync-in {} /", files.display()),
            format!("--extract-hook={EXTRACT_CLEANUP}"),
        ],
        inputs: deb_version("busybox-static")?,
    };
    let config = json!({
        "Env": [format!("PATH={PATH}")],
        "Entrypoint": [
            "/usr/bin/openssl", "s_server", "-accept", "8443",
            "-cert", "/tls/cert.pem", "-key", "/tls/key.pem", "-www",
        ],
        "ExposedPorts": { "8443/tcp": {} },
    });
    let key = bootstrap.key(sources, &config);
    let tar = dir.join("tls.tar");
    if fresh(&tar, &key) {
        return Ok(tar);
    }
    say(&format!("making the image {TLS}"));
    let files = staging(dir, "tls")?;
    add_busybox(&files)?;
    fs::create_dir_all(files.join("tls"))?;
    let name = "cp-observer-test-tls";
    run_checked(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "3650", "-subj", &format!("/CN={name}")])
            .arg(format!(
                "-addext=subjectAltName=DNS:{name},DNS:localhost,IP:127.0.0.1"
            ))
            .arg("-keyout")
            .arg(files.join("tls/key.pem"))
            .arg("-out")
            .arg(files.join("tls/cert.pem")),
    )
    .context("cannot make the test TLS certificate")?;
    let layer = dir.join("tls.layer.tar");
    bootstrap.run(sources, &layer)?;
    remove_if_there(&stamp_path(&tar))?;
    docker_archive(&layer, &config, TLS, &tar)?;
    stamp(&tar, &key)?;
    remove_dir_if_there(&files)?;
    Ok(tar)
}

/// The sandbox image from `binary`.
fn ensure_pause(dir: &Path, binary: &Path) -> Result<PathBuf> {
    let config = json!({ "Entrypoint": ["/pause"] });
    let key = key(&["pause", &sha256(binary)?, &config.to_string()]);
    let tar = dir.join("pause.tar");
    if fresh(&tar, &key) {
        return Ok(tar);
    }
    say(&format!(
        "making the image {PAUSE} from {}",
        binary.display()
    ));
    let files = staging(dir, "pause")?;
    let inside = files.join("pause");
    fs::copy(binary, &inside).with_context(|| format!("cannot copy {}", binary.display()))?;
    set_mode(&inside, 0o755)?;
    let layer = dir.join("pause.layer.tar");
    tar_dir(&files, &layer)?;
    remove_if_there(&stamp_path(&tar))?;
    docker_archive(&layer, &config, PAUSE, &tar)?;
    stamp(&tar, &key)?;
    remove_dir_if_there(&files)?;
    Ok(tar)
}

/// The host's static busybox as `/bin/busybox`, each applet a link to it.
fn add_busybox(root: &Path) -> Result<()> {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| format!("cannot copy {BUSYBOX}"))?;
    let applets = stdout_checked(Command::new(BUSYBOX).arg("--list"))?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let link = bin.join(applet);
        std::os::unix::fs::symlink("busybox", &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(())
}

/// A fresh, empty `staging/NAME` under `dir` for an image's files.
fn staging(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join("staging").join(name);
    remove_dir_if_there(&path)?;
    fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path)
}

/// `root` as a layer: sorted, owned by root, dated 1970, so the same files
/// give the same layer.
fn tar_dir(root: &Path, out: &Path) -> Result<()> {
    run_checked(
        Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
            ])
            .arg("-C")
            .arg(root)
            .arg("-cf")
            .arg(out)
            .arg("."),
    )
    .with_context(|| format!("cannot pack {}", root.display()))
}

/// Writes a docker-archive (`manifest.json`, the image configuration,
/// one layer) of the image `reference` to `out`, from the layer tar `layer`
/// (moved into it) and the configuration `config` (`Env`, `Entrypoint`, ...).
fn docker_archive(layer: &Path, config: &Value, reference: &str, out: &Path) -> Result<()> {
    let work = out.with_extension("d");
    remove_dir_if_there(&work)?;
    let digest = sha256(layer)?;
    let layer_name = format!("{digest}/layer.tar");
    fs::create_dir_all(work.join(&digest))
        .with_context(|| format!("cannot create {}", work.display()))?;
    rename(layer, &work.join(&layer_name))?;
    let image = json!({
        "architecture": docker_arch(),
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{digest}")] },
        // buildah wants one history entry per layer.
        "history": [{ "created": EPOCH, "created_by": "cargo xtask (xtask/src/image.rs)" }],
    });
    write(&work.join("config.json"), &image.to_string())?;
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [reference],
        "Layers": [layer_name],
    }]);
    write(&work.join("manifest.json"), &manifest.to_string())?;
    let part = out.with_extension("tar.part");
    run_checked(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner"])
            .arg("-C")
            .arg(&work)
            .arg("-cf")
            .arg(&part)
            .args(["manifest.json", "config.json", &layer_name]),
    )
    .with_context(|| format!("cannot write {}", part.display()))?;
    rename(&part, out)?;
    remove_dir_if_there(&work)
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Hex SHA-256 of a file.
fn sha256(path: &Path) -> Result<String> {
    let out = stdout_checked(Command::new("sha256sum").arg(path))
        .with_context(|| format!("cannot hash {}", path.display()))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed nothing for {}", path.display()))
}

/// The version of an installed Debian package.
fn deb_version(package: &str) -> Result<String> {
    stdout_checked(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
        .with_context(|| format!("cannot read the version of {package}"))
}

/// A short name for a recipe: FNV-1a (64 bits) of [`RECIPE`] and `parts`,
/// in hex. Stable across Rust releases, unlike `DefaultHasher`.
fn key(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in std::iter::once(RECIPE).chain(parts.iter().copied()) {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// `tar` exists and was written from `key`.
fn fresh(tar: &Path, key: &str) -> bool {
    tar.is_file() && fs::read_to_string(stamp_path(tar)).is_ok_and(|k| k == key)
}

fn stamp_path(tar: &Path) -> PathBuf {
    tar.with_extension("key")
}

fn stamp(tar: &Path, key: &str) -> Result<()> {
    write(&stamp_path(tar), key)
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_dir_if_there(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `path` quoted for the shell that runs mmdebstrap's hooks.
fn quote(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}
