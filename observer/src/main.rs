//! `cp-observer`: see the crate documentation of the `observer` library.

use std::process::ExitCode;

use clap::Parser as _;
use observer::cli::{Cli, Command};

fn main() -> ExitCode {
    // Diagnostics go to stderr; stdout is reserved for JSON events.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // The tests' fault injection: FAILPOINTS=name=action;... (only in
    // builds with the `failpoints` feature).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => observer::agent::run(args),
        Command::Cleanup(args) => observer::agent::cleanup(&args.pin_dir, args.then_wait),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cp-observer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
