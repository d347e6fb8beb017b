//! `cp-observer-cluster up|down|status`: one real node on this machine with
//! the shipped DaemonSet on it (see `lab::node`). Run through
//! `cargo xtask cluster ...`, which builds the binaries and images first.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lab::node::{Binaries, Images, Mode, Node};

#[derive(Parser)]
#[command(
    name = "cp-observer-cluster",
    about = "A real Kubernetes node with cp-observer on it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the node up (or check it is) and deploy cp-observer.
    Up {
        /// Where the control plane runs: in a namespace of its own
        /// (`remote`), or on the node itself (`local`).
        #[arg(long, value_enum, default_value = "remote")]
        mode: Mode,
        /// The overlay of `deploy/overlays` to apply (`none`: deploy nothing).
        #[arg(long, default_value = "observe")]
        overlay: String,
    },
    /// Take everything down.
    Down,
    /// What runs, and how to reach it.
    Status,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    let binaries = Binaries::from_env()?;
    match command {
        Command::Up { mode, overlay } => {
            let images = Images::from_env()?;
            let node = Node::up(mode, binaries, &images)?;
            if overlay != "none" {
                node.deploy(&repo(), &format!("overlays/{overlay}"), &images.agent)?;
                eprintln!("cluster: deploy/overlays/{overlay} is running on the node");
            }
            print!("{}", node.status());
        }
        Command::Down => match Node::existing(binaries)? {
            Some(node) => node.down()?,
            None => eprintln!("cluster: no node is up"),
        },
        Command::Status => match Node::existing(binaries)? {
            Some(node) => print!("{}", node.status()),
            None => println!("no node is up"),
        },
    }
    Ok(())
}

/// The repository (its `deploy/`).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
