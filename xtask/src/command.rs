//! Running the programs xtask drives (cargo, apt-get, make, QEMU, ...).

use std::process::Command;

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
