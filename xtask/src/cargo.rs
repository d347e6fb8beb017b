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
    cmd.args([
        "build",
        "--package",
        package,
        "--bin",
        bin,
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("building {bin} failed");
    }
    // The last compiler-artifact line naming an executable is our binary.
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter(|l| {
            l.contains("\"compiler-artifact\"") && l.contains(&format!("\"name\":\"{bin}\""))
        })
        .filter_map(|l| json_string(l, "executable"))
        .next_back()
        .map(PathBuf::from)
        .with_context(|| format!("cargo did not report the {bin} executable"))
}

/// Extracts a string field from one line of cargo's JSON (no escapes in paths).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
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
    #[test]
    fn json_string() {
        let l = r#"{"reason":"compiler-artifact","target":{"name":"x"},"executable":"/t/debug/x","fresh":true}"#;
        assert_eq!(
            super::json_string(l, "executable").as_deref(),
            Some("/t/debug/x")
        );
        assert_eq!(super::json_string(l, "missing"), None);
    }
}
