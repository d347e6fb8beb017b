//! The kernel programs' opt-in trace (`--kernel-log`, see
//! [`crate::config::KernelLog`]): their aya-log records (why a connection
//! got its path, which protocol and verdict it got), with the shared enums'
//! numbers named, logged by the agent.

use std::{fmt::Write as _, os::fd::AsRawFd as _};

use aya_log::EbpfLogger;
use observer_common::{config::Roles, path::Path, policy::Verdict, protocol::Protocol};
use tokio::io::unix::AsyncFd;

/// Starts logging the programs' records (from [`crate::ebpf::Datapath::trace`]
/// with [`Forward`]): a task that reads aya-log's ring buffer whenever it
/// has records; it ends only when the ring buffer's fd fails.
pub fn spawn(
    logger: EbpfLogger<Forward>,
) -> std::io::Result<tokio::task::JoinHandle<Result<(), String>>> {
    tracing::info!(
        fd = logger.as_raw_fd(),
        "tracing the kernel programs' decisions"
    );
    // SAFETY: the logger owns the ring buffer's map fd for its lifetime.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                // Supervision logs and counts it.
                Err(e) => return Err(format!("the kernel programs' trace stopped: {e}")),
            }
        }
    }))
}

/// Hands each record to `tracing`, at `info`: whoever turned the trace on
/// wants to see it.
pub struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "kernel", "{}", name_numbers(&record.args().to_string()));
    }

    fn flush(&self) {}
}

/// Replaces the numbers of `path=`, `protocol=`, `verdict=` and `*roles=`
/// with their names (the programs know only the numbers).
pub fn name_numbers(record: &str) -> String {
    let mut out = String::with_capacity(record.len() + 32);
    for (i, word) in record.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let named = word.split_once('=').and_then(|(key, value)| {
            let n: u32 = value.parse().ok()?;
            let byte = u8::try_from(n).ok();
            let name = match key {
                "path" => Path::from_u8(byte?)?.name().to_owned(),
                "protocol" => Protocol::from_u8(byte?)?.name().to_owned(),
                "verdict" => Verdict::from_u8(byte?)?.name().to_owned(),
                k if k.ends_with("roles") => roles(Roles(n)),
                _ => return None,
            };
            Some((key, name))
        });
        match named {
            Some((key, name)) => {
                let _ = write!(out, "{key}={name}");
            }
            None => out.push_str(word),
        }
    }
    out
}

/// `control-plane+node`, or `none`.
fn roles(roles: Roles) -> String {
    let names: Vec<&str> = [
        (Roles::CONTROL_PLANE, "control-plane"),
        (Roles::NODE, "node"),
        (Roles::POD, "pod"),
    ]
    .into_iter()
    .filter(|(r, _)| roles.has(*r))
    .map(|(_, name)| name)
    .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_their_names() {
        let record = "decided path=3 protocol=1 verdict=2 client=::ffff:10.0.0.1 client_roles=5 server_roles=0 port=3";
        let named = name_numbers(record);
        assert_eq!(
            named,
            format!(
                "decided path={} protocol={} verdict={} client=::ffff:10.0.0.1 \
                 client_roles=control-plane+pod server_roles=none port=3",
                Path::ALL[3],
                Protocol::ALL[1],
                Verdict::ALL[2],
            )
        );
        // Out of range stays a number.
        assert_eq!(name_numbers("path=200"), "path=200");
    }
}
