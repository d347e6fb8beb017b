//! Running cargo for the workspace.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use cargo_metadata::Message;

use crate::command::run_checked;

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

/// Builds the agent and returns the path of the `cp-observer` binary.
pub fn build_agent(release: bool) -> Result<PathBuf> {
    build_bin_with("cp-observer", "cp-observer", release)
}

/// Builds the agent for the tests, with its fail points (the `failpoints`
/// feature: faults the tests inject through `FAILPOINTS`), and returns the
/// path of the `cp-observer` binary. Release builds never have them.
pub fn build_test_agent() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "cp-observer",
        "--bin",
        "cp-observer",
        "--features",
        "failpoints",
    ]);
    built_executable(&mut cmd, "cp-observer")
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
    executable(&out.stdout, name)
        .with_context(|| format!("cargo did not report the {name} executable"))
}

/// The executable of target `name` in cargo's JSON messages: the last
/// `compiler-artifact` message for that target that has one.
fn executable(messages: &[u8], name: &str) -> Option<PathBuf> {
    Message::parse_stream(messages)
        .filter_map(|m| match m.ok()? {
            Message::CompilerArtifact(a) if a.target.name == name => a.executable,
            _ => None,
        })
        .map(PathBuf::from)
        .last()
}

/// Runs every test of the workspace's default members (all but the kernel
/// crate, which only builds for BPF) with `CP_OBSERVER_BIN` pointing at the
/// agent and `env` set (where the tests find their tools). Privileged tests
/// share the machine's cgroup root and kernel, so they run one at a time.
pub fn test<K, V>(
    agent: &std::path::Path,
    env: impl IntoIterator<Item = (K, V)>,
    extra: &[String],
) -> Result<()>
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut cmd = cargo();
    cmd.arg("test").env("CP_OBSERVER_BIN", agent).envs(env);
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

    /// A `compiler-artifact` message as cargo prints it.
    fn artifact(name: &str, executable: Option<&str>) -> String {
        let executable = executable.map_or("null".to_owned(), |e| format!("\"{e}\""));
        format!(
            r#"{{"reason":"compiler-artifact","package_id":"path+file:///w/x#0.1.0","manifest_path":"/w/x/Cargo.toml","target":{{"kind":["bin"],"crate_types":["bin"],"name":"{name}","src_path":"/w/x/src/main.rs","edition":"2024","doc":true,"doctest":false,"test":true}},"profile":{{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":false}},"features":[],"filenames":[],"executable":{executable},"fresh":true}}"#
        )
    }

    #[test]
    fn executable() {
        let messages = [
            artifact("x", Some("/t/debug/x")),
            artifact("y", Some("/t/debug/y")),
            artifact("x", None),
            r#"{"reason":"build-finished","success":true}"#.to_owned(),
        ]
        .join("\n");
        assert_eq!(
            super::executable(messages.as_bytes(), "x").as_deref(),
            Some(Path::new("/t/debug/x"))
        );
        assert_eq!(super::executable(messages.as_bytes(), "z"), None);
    }
}
