//! The kernel matrix (`cargo xtask test --kernels`, `cargo xtask kernels`):
//! the kernel tests and the enforcing lab plan, run on the host's kernel and
//! inside VMs booted from Debian's own kernel packages, one per release
//! operators run.
//!
//! The packages are fetched once from Debian's registry through an apt
//! configuration of our own (the machine's sources are not touched),
//! unpacked without their install scripts and cached in
//! `~/.cache/cp-observer/kernels/<suite>/`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo, command,
    toolchain::{self, host_release},
    vm,
};

/// A Debian release and the kernel series its suite ships.
pub struct Debian {
    /// The kernel series, as a user names it (`--kernels 6.1`).
    pub series: &'static str,
    /// The suite whose `linux-image-amd64` is booted.
    pub suite: &'static str,
    /// The release, for the report.
    pub release: &'static str,
}

/// The kernels of the matrix besides the host's, oldest first.
pub const MATRIX: [Debian; 3] = [
    Debian {
        series: "5.10",
        suite: "bullseye",
        release: "Debian 11",
    },
    Debian {
        series: "6.1",
        suite: "bookworm",
        release: "Debian 12",
    },
    Debian {
        series: "6.12",
        suite: "trixie",
        release: "Debian 13",
    },
];

/// How long one kernel's run may take before it counts as hung (TCG boots
/// and runs everything in about a minute and a half here).
const VM_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Debian's registry, as the machine's own sources name it.
const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A kernel unpacked from its package.
pub struct Kernel {
    /// `uname -r` of the kernel.
    pub version: String,
    /// The compressed kernel image.
    pub image: PathBuf,
}

/// What runs in each kernel, in order.
struct Step {
    name: &'static str,
    /// The column of the report.
    title: &'static str,
    /// The command, `NAME=value` words first for its environment.
    argv: Vec<String>,
}

/// A restart test whose premise, an agent restarted within the 2-second
/// idle timeout it sets, does not hold under emulation, where loading the
/// programs alone takes longer. It runs with every other test on the host.
const NOT_IN_VMS: &str = "a_connection_busy_while_no_agent_ran_is_not_expired";

/// The binaries the steps run, built on the host (the guest sees the
/// host's files).
struct Binaries {
    kernel_tests: PathBuf,
    restart_tests: PathBuf,
    lab: PathBuf,
    agent: PathBuf,
}

impl Binaries {
    fn build() -> Result<Self> {
        Ok(Self {
            kernel_tests: cargo::build_test("cp-observer-tests", "kernel")?,
            restart_tests: cargo::build_test("cp-observer-tests", "restart")?,
            lab: cargo::build_bin("cp-observer-tests", "cp-observer-lab")?,
            // The agent as shipped.
            agent: cargo::build_agent(true)?,
        })
    }

    fn steps(&self) -> [Step; 3] {
        let s = |p: &Path| p.display().to_string();
        [
            Step {
                name: "kernel-tests",
                title: "kernel tests",
                argv: vec![s(&self.kernel_tests), "--test-threads=1".into()],
            },
            Step {
                name: "lab-enforce",
                title: "lab --enforce",
                argv: vec![
                    s(&self.lab),
                    "--agent".into(),
                    s(&self.agent),
                    "--enforce".into(),
                ],
            },
            Step {
                name: "restart-tests",
                title: "restart tests",
                argv: vec![
                    format!("CP_OBSERVER_BIN={}", s(&self.agent)),
                    s(&self.restart_tests),
                    "--test-threads=1".into(),
                    "--skip".into(),
                    NOT_IN_VMS.into(),
                ],
            },
        ]
    }
}

/// The outcome of one kernel's run.
struct Row {
    kernel: String,
    release: String,
    how: String,
    /// Per step: passed, and a short summary.
    steps: Vec<(bool, String)>,
    took: Duration,
    log: PathBuf,
}

/// Runs the matrix: the host's kernel, then each Debian kernel whose
/// series is in `only` (all when `only` is empty). Fails if any step fails
/// in any kernel, after all have run.
pub fn run(only: &[String]) -> Result<()> {
    for name in only {
        if !MATRIX.iter().any(|d| d.series == name) {
            let known: Vec<_> = MATRIX.iter().map(|d| d.series).collect();
            bail!(
                "--kernels {name}: not in the matrix (known: {})",
                known.join(", ")
            );
        }
    }
    let chosen: Vec<&Debian> = MATRIX
        .iter()
        .filter(|d| only.is_empty() || only.iter().any(|n| n == d.series))
        .collect();
    vm::ensure_tools()?;
    let kernels = ensure_all(&chosen)?;
    let binaries = Binaries::build()?;
    let steps = binaries.steps();
    let out = cargo::workspace_root().join("target/kernels");

    let mut rows = Vec::new();
    say(&format!(
        "host kernel {}: running the steps directly",
        host_release()
    ));
    rows.push(run_host(&steps, &out.join("host"))?);
    let accel = match kernels.first() {
        Some((_, k)) => vm::accel(&k.image, &out.join("probe"))?,
        None => vm::Accel::Tcg,
    };
    for (debian, kernel) in &kernels {
        say(&format!(
            "{} ({}): booting it ({}) and running the steps inside",
            kernel.version,
            debian.release,
            accel.name()
        ));
        rows.push(run_vm(
            debian,
            kernel,
            accel,
            &steps,
            &out.join(&kernel.version),
        )?);
    }
    report(&rows, &steps)
}

fn say(what: &str) {
    eprintln!("xtask: {what}");
}

/// The shell script that runs the steps in one kernel, writing their
/// output to `dir/log` and each step's exit status to `dir/NAME.status`.
/// A file the host reads afterwards, since a guest's exit status does not
/// reliably reach the host.
fn script(steps: &[Step], dir: &Path) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Written by `cargo xtask test --kernels`: the steps run in one kernel.\n",
    );
    let dir = dir.display();
    let _ = writeln!(s, "exec >'{dir}/log' 2>&1");
    s.push_str("echo \"kernel $(uname -r)\"\n");
    for step in steps {
        let argv: Vec<String> = std::iter::once("env".to_owned())
            .chain(step.argv.iter().map(|a| format!("'{a}'")))
            .collect();
        let _ = writeln!(
            s,
            "echo '== {name}'\n{argv}\necho $? >'{dir}/{name}.status'",
            name = step.name,
            argv = argv.join(" ")
        );
    }
    s
}

/// A fresh directory for one kernel's run, with the script in it.
fn prepare(steps: &[Step], dir: &Path) -> Result<PathBuf> {
    // The script quotes words with '...', and virtme-ng pastes paths into
    // a shell command line unquoted: only plain paths go through both.
    for path in steps
        .iter()
        .flat_map(|s| s.argv.iter().map(String::as_str))
        .chain([dir.to_str().unwrap_or("\u{fffd}")])
    {
        if let Some(c) = path
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_./+-=,".contains(*c)))
        {
            bail!(
                "the kernel matrix cannot pass {path:?} to a VM: {c:?} is not a plain path character \
                 (move the checkout or HOME to a plain path)"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("run.sh");
    std::fs::write(&path, script(steps, dir))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn run_host(steps: &[Step], dir: &Path) -> Result<Row> {
    let script = prepare(steps, dir)?;
    let start = Instant::now();
    command::run_checked(Command::new("sh").arg(&script))?;
    Ok(row(
        host_release(),
        "this machine".into(),
        "host".into(),
        steps,
        dir,
        start,
    ))
}

fn run_vm(
    debian: &Debian,
    kernel: &Kernel,
    accel: vm::Accel,
    steps: &[Step],
    dir: &Path,
) -> Result<Row> {
    let script = prepare(steps, dir)?;
    let start = Instant::now();
    vm::boot(&kernel.image, accel, dir, &script, VM_DEADLINE)?;
    Ok(row(
        kernel.version.clone(),
        debian.release.into(),
        format!("VM, {}", accel.name()),
        steps,
        dir,
        start,
    ))
}

fn row(
    kernel: String,
    release: String,
    how: String,
    steps: &[Step],
    dir: &Path,
    start: Instant,
) -> Row {
    let log = dir.join("log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let steps = steps
        .iter()
        .map(|step| {
            let status = std::fs::read_to_string(dir.join(format!("{}.status", step.name)));
            match status.as_deref().map(str::trim) {
                Ok("0") => (true, summary(&text, step.name)),
                Ok(code) => (false, format!("failed (exit {code})")),
                Err(_) => (false, "did not finish".into()),
            }
        })
        .collect();
    Row {
        kernel,
        release,
        how,
        steps,
        took: start.elapsed(),
        log,
    }
}

/// A passed step in a few words: the test count of a test binary.
fn summary(log: &str, step: &str) -> String {
    let section = log
        .split(&format!("== {step}\n"))
        .nth(1)
        .map_or("", |s| s.split("\n== ").next().unwrap_or(""));
    let Some(result) = section
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
    else {
        return "ok".into();
    };
    // "17 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out; finished in 2s"
    let parts: Vec<&str> = result.split("; ").collect();
    let mut out = parts[0].to_owned();
    if let Some(n) = parts.iter().find_map(|p| p.strip_suffix(" filtered out"))
        && n != "0"
    {
        out.push_str(&format!(", {n} skipped"));
    }
    out
}

/// Prints the matrix as a table, every failed kernel's log, and a closing
/// `kernel-matrix: N passed, N failed` line (steps); fails if any step failed.
fn report(rows: &[Row], steps: &[Step]) -> Result<()> {
    let mut failed = 0;
    let mut passed = 0;
    for r in rows.iter().filter(|r| r.steps.iter().any(|(ok, _)| !ok)) {
        eprintln!("\n---- {} ({}): {}", r.kernel, r.how, r.log.display());
        eprintln!("{}", std::fs::read_to_string(&r.log).unwrap_or_default());
        // A guest that never ran the script: its console says why.
        let console = r.log.with_file_name("vng.log");
        if let Ok(text) = std::fs::read_to_string(&console) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- the last lines of {}", console.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
    let titles: Vec<&str> = steps.iter().map(|s| s.title).collect();
    println!(
        "\n| kernel | release | run | {} | time |",
        titles.join(" | ")
    );
    println!("|---|---|---|{}---|", "---|".repeat(steps.len()));
    for r in rows {
        let cells: Vec<String> = r
            .steps
            .iter()
            .map(|(ok, what)| {
                if *ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
                what.clone()
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {} s |",
            r.kernel,
            r.release,
            r.how,
            cells.join(" | "),
            r.took.as_secs()
        );
    }
    // The closing line counts steps (a kernel's run is several).
    println!("kernel-matrix: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} step(s) failed in the kernel matrix (logs above)");
    }
    Ok(())
}

/// The kernels of `chosen`, each fetched and unpacked once: apt is set
/// up only when some suite is not in the cache, and only for those.
fn ensure_all<'a>(chosen: &[&'a Debian]) -> Result<Vec<(&'a Debian, Kernel)>> {
    let cache = toolchain::cache_dir("kernels")?;
    let found: Vec<(&Debian, Option<Kernel>)> = chosen
        .iter()
        .map(|d| (*d, cached(&cache.join(d.suite))))
        .collect();
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, k)| k.is_none())
        .map(|(d, _)| d.suite)
        .collect();
    let apt = if missing.is_empty() {
        None
    } else {
        Some(Apt::new(&cache.join("apt"), &missing)?)
    };
    found
        .into_iter()
        .map(|(d, kernel)| match (kernel, &apt) {
            (Some(k), _) => Ok((d, k)),
            (None, Some(apt)) => Ok((d, fetch(d, apt, &cache.join(d.suite))?)),
            (None, None) => unreachable!("apt is set up whenever a kernel is missing"),
        })
        .collect()
}

/// The kernel unpacked in `dir`, if complete: its `version` file is
/// written last.
fn cached(dir: &Path) -> Option<Kernel> {
    let version = std::fs::read_to_string(dir.join("version")).ok()?;
    let version = version.trim().to_owned();
    let image = dir.join(format!("boot/vmlinuz-{version}"));
    image.is_file().then_some(Kernel { version, image })
}

/// Fetches the kernel `linux-image-amd64` of `debian`'s suite points at
/// and unpacks it into `dir`.
fn fetch(debian: &Debian, apt: &Apt, dir: &Path) -> Result<Kernel> {
    say(&format!(
        "fetching the {} kernel ({}) from Debian's registry (once)",
        debian.series, debian.suite
    ));
    let package = apt.kernel_package(debian.suite)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let deb = apt.download(&package, dir)?;
    command::run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir))?;
    std::fs::remove_file(&deb)?;
    let version = package
        .name
        .strip_prefix("linux-image-")
        .context("unexpected kernel package name")?
        .to_owned();
    let image = dir.join(format!("boot/vmlinuz-{version}"));
    if !image.is_file() {
        bail!("{} has no {}", package.name, image.display());
    }
    std::fs::write(dir.join("version"), &version)?;
    Ok(Kernel { version, image })
}

/// A package name and version.
struct Package {
    name: String,
    version: String,
}

/// apt with a configuration of its own: the suites asked for, with lists
/// and downloads kept in the cache, never in the machine's apt state.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path, suites: &[&str]) -> Result<Self> {
        for sub in ["lists/partial", "archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("debian.sources");
        std::fs::write(
            &sources,
            format!(
                "Types: deb\nURIs: {MIRROR}\nSuites: {}\nComponents: main\nSigned-By: {KEYRING}\n",
                suites.join(" ")
            ),
        )?;
        let d = dir.display();
        let apt = Self {
            options: [
                format!("Dir::Etc::SourceList={}", sources.display()),
                "Dir::Etc::SourceParts=/dev/null".into(),
                format!("Dir::State::Lists={d}/lists"),
                format!("Dir::Cache={d}"),
                format!("Dir::Cache::Archives={d}/archives"),
                // Our own state: the machine's apt locks are not ours to take.
                "Debug::NoLocking=1".into(),
                // The cache belongs to root, who runs this; apt's download
                // user could not write there.
                "APT::Sandbox::User=root".into(),
            ]
            .into_iter()
            .flat_map(|o| ["-o".to_owned(), o])
            .collect(),
        };
        command::run_checked(
            Command::new("apt-get")
                .args(&apt.options)
                .args(["update", "-qq"]),
        )?;
        Ok(apt)
    }

    /// The versioned image package `linux-image-amd64` of `suite` points at.
    fn kernel_package(&self, suite: &str) -> Result<Package> {
        let out = Command::new("apt-cache")
            .args(&self.options)
            .args(["show", &format!("linux-image-amd64/{suite}")])
            .output()
            .context("cannot run apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "apt-cache show linux-image-amd64/{suite} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        depends_on_image(&text)
            .with_context(|| format!("linux-image-amd64/{suite} names no linux-image package"))
    }

    fn download(&self, package: &Package, dir: &Path) -> Result<PathBuf> {
        command::run_checked(
            Command::new("apt-get")
                .args(&self.options)
                .args([
                    "download",
                    "-qq",
                    &format!("{}={}", package.name, package.version),
                ])
                .current_dir(dir),
        )?;
        std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no {} package", package.name))
    }
}

/// `linux-image-X (= V)` from the `Depends:` line of `apt-cache show`.
fn depends_on_image(show: &str) -> Option<Package> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends: "))?;
    depends.split(',').find_map(|d| {
        let (name, rest) = d.trim().split_once(" (= ")?;
        name.starts_with("linux-image-").then(|| Package {
            name: name.to_owned(),
            version: rest.trim_end_matches(')').to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_image() {
        let show = "Package: linux-image-amd64\nVersion: 5.10.223-1\n\
                    Depends: linux-image-5.10.0-32-amd64 (= 5.10.223-1)\nDescription: x\n";
        let p = super::depends_on_image(show).expect("found");
        assert_eq!(p.name, "linux-image-5.10.0-32-amd64");
        assert_eq!(p.version, "5.10.223-1");
        assert!(super::depends_on_image("Depends: libc6 (>= 2)\n").is_none());
    }

    #[test]
    fn summary_names_the_test_count_of_its_step() {
        let log = "kernel 6.1\n== kernel-tests\nrunning 17 tests\n\
                   test result: ok. 17 passed; 0 failed; 0 ignored\n== lab-enforce\nlab output\n";
        assert_eq!(summary(log, "kernel-tests"), "17 passed");
        assert_eq!(summary(log, "lab-enforce"), "ok");
        let skipped = "== restart-tests\ntest result: ok. 2 passed; 0 failed; 0 ignored; \
                       0 measured; 1 filtered out; finished in 70s\n";
        assert_eq!(summary(skipped, "restart-tests"), "2 passed, 1 skipped");
    }
}
