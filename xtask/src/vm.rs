//! Booting a kernel in a VM that sees the host's files (virtme-ng), and
//! running one script inside it.
//!
//! virtme-ng boots the kernel with the host's root file system over 9p
//! (read-only, `/tmp` and a few others as overlays), so the guest runs the
//! binaries just built; the script's directory is shared writable and is
//! where it leaves its log and exit statuses. The guest's modules come from
//! the unpacked package (virtme-ng links them in).
//!
//! KVM is used when it boots a guest; on machines where nested KVM does not
//! (here: qemu aborts with `-cpu host`, other CPU models hang early), QEMU's
//! software emulation (TCG) is used: slower, but a minute or two a kernel.
//! The answer is cached per host kernel, CPU model, QEMU and virtme-ng.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{command::run_checked, toolchain};

/// virtme-ng release known to work here.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// Debian packages the VMs need: QEMU; depmod, which virtme-ng runs on the
/// unpacked modules; busybox, for its initramfs.
const PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];
/// Guest size: the machine's two cores, and room for the lab.
const CPUS: &str = "2";
const MEMORY: &str = "2G";
/// How long a KVM guest may take to run a trivial script before KVM is
/// judged not to work (a TCG guest needs about 15 s, a KVM one 2-3 s).
const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// How the guest's CPU is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// As the report says it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Kvm => "KVM",
            Self::Tcg => "TCG",
        }
    }
}

fn venv() -> Result<PathBuf> {
    toolchain::cache_dir("virtme-ng")
}

fn vng() -> Result<PathBuf> {
    Ok(venv()?.join("bin/vng"))
}

/// Installs QEMU and the rest from Debian, and virtme-ng from PyPI into a
/// virtual environment of its own in the cache.
pub fn ensure_tools() -> Result<()> {
    toolchain::ensure_debian_packages(PACKAGES)?;
    if vng()?.is_file() {
        return Ok(());
    }
    let venv = venv()?;
    eprintln!("xtask: installing {VIRTME_NG} into {}", venv.display());
    if Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_or(true, |s| !s.success())
    {
        // Debian's python3 keeps venv in a package of its own.
        toolchain::ensure_debian_packages(&["python3-venv"])?;
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_checked(Command::new(venv.join("bin/pip")).args(["install", "--quiet", VIRTME_NG]))?;
    if !vng()?.is_file() {
        bail!("{VIRTME_NG} installed no {}", vng()?.display());
    }
    Ok(())
}

/// Boots the kernel `image`, runs `script` inside (it must write its results under
/// `dir`, which the guest can write to) and waits for the guest to power
/// off, at most `deadline`. virtme-ng's console goes to `dir/vng.log`.
pub fn boot(
    image: &Path,
    accel: Accel,
    dir: &Path,
    script: &Path,
    deadline: Duration,
) -> Result<()> {
    let console = dir.join("vng.log");
    let log = std::fs::File::create(&console)
        .with_context(|| format!("cannot create {}", console.display()))?;
    let mut cmd = Command::new(vng()?);
    // vng starts `virtme-run`, of the same package, by name.
    let path = format!(
        "{}:{}",
        venv()?.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .arg("--verbose")
        .arg("--run")
        .arg(image)
        .args(["--cpus", CPUS, "--memory", MEMORY])
        .arg("--rwdir")
        .arg(dir)
        .arg("--exec")
        .arg(format!("sh '{}'", script.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if accel == Accel::Tcg {
        cmd.arg("--disable-kvm");
    }
    // vng runs QEMU through a shell and virtme-run: a group of their own,
    // so a guest past its deadline is stopped whole, QEMU included.
    cmd.process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            // The exit status says little: the script's results are files.
            return Ok(());
        }
        if start.elapsed() > deadline {
            let group = format!("-{}", child.id());
            run_checked(Command::new("kill").args(["-KILL", "--", &group]))?;
            let _ = child.wait();
            eprintln!(
                "xtask: {} did not power off within {} s: stopped (console: {})",
                image.display(),
                deadline.as_secs(),
                console.display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether KVM boots the kernel `image` here: the cached answer for this host kernel
/// (and CPU, QEMU and virtme-ng), or a trial boot of a script that only
/// leaves a file.
pub fn accel(image: &Path, dir: &Path) -> Result<Accel> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(Accel::Tcg);
    }
    let key = format!(
        "{} / {} / {} / {VIRTME_NG}",
        toolchain::host_release(),
        cpu_model(),
        qemu_version()
    );
    let cache = toolchain::cache_dir("kvm")?;
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((k, answer)) = text.trim().rsplit_once(" = ")
        && k == key
    {
        return Ok(if answer == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    eprintln!(
        "xtask: does KVM boot a guest here? (at most {} s)",
        KVM_PROBE_DEADLINE.as_secs()
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let script = dir.join("probe.sh");
    let done = dir.join("booted");
    std::fs::write(&script, format!("#!/bin/sh\ntouch '{}'\n", done.display()))?;
    boot(image, Accel::Kvm, dir, &script, KVM_PROBE_DEADLINE)?;
    let answer = if done.exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    eprintln!(
        "xtask: KVM {}: the VMs use {}",
        if answer == Accel::Kvm {
            "works"
        } else {
            "did not boot a guest"
        },
        answer.name()
    );
    let word = if answer == Accel::Kvm { "kvm" } else { "tcg" };
    std::fs::write(&cache, format!("{key} = {word}\n"))?;
    Ok(answer)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or_else(String::new, |v| {
            v.trim_start_matches([' ', '\t', ':']).to_owned()
        })
}

fn qemu_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}
