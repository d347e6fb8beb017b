//! Running cargo for the workspace.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root, whatever directory `cargo xtask` was run from.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd`, failing with its command line if it fails.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds the agent and returns the path of the `cp-observer` binary.
pub fn build_agent(release: bool) -> Result<PathBuf> {
    build_bin_with("cp-observer", "cp-observer", release)
}

/// Builds one binary of a package and returns its path.
pub fn build_bin(package: &str, bin: &str) -> Result<PathBuf> {
    build_bin_with(package, bin, false)
}

/// Like [`build_bin`], optimised.
pub fn build_release_bin(package: &str, bin: &str) -> Result<PathBuf> {
    build_bin_with(package, bin, true)
}

fn build_bin_with(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    built_executable(&mut cmd, bin)
}

/// Builds one integration test of a package (`tests/NAME.rs`) without
/// running it and returns the path of its executable.
pub fn build_test(package: &str, test: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["test", "--no-run", "--package", package, "--test", test]);
    built_executable(&mut cmd, test)
}

/// Runs a cargo build command and returns the executable it reports for
/// the target `name`.
fn built_executable(cmd: &mut Command, name: &str) -> Result<PathBuf> {
    cmd.arg("--message-format=json-render-diagnostics");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("building {name} failed");
    }
    executable(&String::from_utf8_lossy(&out.stdout), name)
        .with_context(|| format!("cargo did not report the {name} executable"))
}

/// The executable of target `name` in cargo's JSON messages: the last
/// `compiler-artifact` message for that target that has one.
fn executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// Runs every test of the workspace's default members (all but the kernel
/// crate, which only builds for BPF) with `CP_OBSERVER_BIN` pointing at the
/// agent. Privileged tests share the machine's cgroup root and kernel, so
/// they run one at a time.
pub fn test(agent: &std::path::Path, kube: &crate::kube::Binaries, extra: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("test")
        .env("CP_OBSERVER_BIN", agent)
        .env("CP_OBSERVER_KUBE_APISERVER", &kube.apiserver)
        .env("CP_OBSERVER_ETCD", &kube.etcd)
        .env("CP_OBSERVER_KUBECTL", &kube.kubectl);
    // Test-binary arguments go after a single `--`, ours and the caller's.
    match extra.iter().position(|a| a == "--") {
        Some(i) => cmd
            .args(&extra[..=i])
            .arg("--test-threads=1")
            .args(&extra[i + 1..]),
        None => cmd.args(extra).args(["--", "--test-threads=1"]),
    };
    run_checked(&mut cmd)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn executable() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"x"},"executable":"/t/debug/x","fresh":true}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"y"},"executable":"/t/debug/y"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"x"},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            super::executable(&messages, "x").as_deref(),
            Some(Path::new("/t/debug/x"))
        );
        assert_eq!(super::executable(&messages, "z"), None);
    }
}
