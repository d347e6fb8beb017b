//! The command line: `cp-observer run` and `cp-observer cleanup`. The flags
//! of `run` are also the config file's keys, so they are defined once, with
//! the file, in [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::config::RunArgs;

/// The cp-observer node agent.
#[derive(Debug, Parser)]
#[command(name = "cp-observer", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start-up")]
pub enum Command {
    /// Load and attach the kernel programs, serve metrics, until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Detach pinned programs and remove every pin (uninstall).
    Cleanup(CleanupArgs),
}

/// Flags of `cp-observer cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The directory `run` pinned to.
    #[arg(long, value_name = "PATH", default_value = crate::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Once cleaned, wait for SIGTERM instead of exiting (for the
    /// `deploy/cleanup` DaemonSet: a Running pod has cleaned its node).
    #[arg(long)]
    pub then_wait: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flag_names_flag_and_value() {
        let err = Cli::try_parse_from(["cp-observer", "run", "--pod-cidr", "banana"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("--pod-cidr") && msg.contains("banana"),
            "{msg}"
        );
    }
}
