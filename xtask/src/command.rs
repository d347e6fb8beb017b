//! Running the programs xtask drives (cargo, apt-get, make, QEMU, ...).

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

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

/// Runs `cmd` and returns what it printed on standard output, failing with
/// its command line if it fails. Its standard error is shown.
pub fn stdout_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed something not UTF-8"))
}

/// Whether `cmd` runs and succeeds, its output discarded: a question
/// (is this image there?), not a step that must work.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
