//! What the kernel must offer, probed at start: each feature is tried
//! (aya's probes create a map or load a program of the type), never read
//! off the version string, which distributions' backports make meaningless.
//!
//! Every feature the programs use is required: nothing useful runs without
//! any of them. The oldest kernel that has them all is [`MIN_KERNEL`].

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
    util::KernelVersion,
};

/// The oldest Linux release with every [`REQUIRED`] feature.
pub const MIN_KERNEL: &str = "5.8";

/// A kernel feature the agent cannot run without.
pub struct Feature {
    /// What it is, and what the agent needs it for.
    pub what: &'static str,
    /// The Linux release that brought it.
    pub since: &'static str,
    /// The kernel configuration it also needs.
    pub config: &'static str,
    probe: fn() -> Result<bool, String>,
}

/// Every feature the agent needs, in the order they are probed.
pub const REQUIRED: [Feature; 3] = [
    Feature {
        what: "cgroup_skb programs (seeing every TCP segment of the node)",
        since: "4.10",
        config: "CONFIG_CGROUP_BPF",
        probe: || is_program_supported(ProgramType::CgroupSkb).map_err(|e| e.to_string()),
    },
    Feature {
        what: "cgroup_sock_addr programs (the connect hooks)",
        since: "4.17",
        config: "CONFIG_CGROUP_BPF",
        probe: || is_program_supported(ProgramType::CgroupSockAddr).map_err(|e| e.to_string()),
    },
    Feature {
        what: "BPF ring buffers (violation events)",
        since: "5.8",
        config: "CONFIG_BPF_SYSCALL",
        probe: || is_map_supported(MapType::RingBuf).map_err(|e| e.to_string()),
    },
];

/// A required feature is missing, or could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum MissingFeature {
    /// The kernel does not have it.
    #[error(
        "this kernel has no {what}, which came with Linux {since} and needs {config}: cp-observer needs Linux {MIN_KERNEL} or newer, built with {config}"
    )]
    Missing {
        /// The feature.
        what: &'static str,
        /// The release that brought it.
        since: &'static str,
        /// The configuration it needs.
        config: &'static str,
    },
    /// The kernel reports a release before 5.7. The agent attaches its
    /// cgroup programs as `bpf_link`s (pinned, swapped in place on
    /// upgrade), and aya 0.14 decides by the reported version alone whether
    /// to make links: on an older-numbered kernel with backported BPF (RHEL
    /// 8's 4.18), it would attach without one and the agent could not pin.
    #[error(
        "this kernel reports version {reported}: cp-observer attaches its programs as bpf_links, which its BPF library (aya 0.14) makes only on kernels that report 5.7 or newer"
    )]
    LinkAttach {
        /// The version the kernel reports.
        reported: String,
    },
    /// The probe itself failed (typically: not root, or no CAP_BPF).
    #[error(
        "cannot probe the kernel for {what} (is this root, or CAP_BPF and CAP_NET_ADMIN?): {error}"
    )]
    Probe {
        /// The feature.
        what: &'static str,
        /// Why.
        error: String,
    },
}

/// Probes every [`REQUIRED`] feature; the first one missing is the error.
/// Then one check that is not a probe: see [`MissingFeature::LinkAttach`].
pub fn check() -> Result<(), MissingFeature> {
    for f in &REQUIRED {
        match (f.probe)() {
            Ok(true) => {}
            Ok(false) => {
                return Err(MissingFeature::Missing {
                    what: f.what,
                    since: f.since,
                    config: f.config,
                });
            }
            Err(error) => {
                return Err(MissingFeature::Probe {
                    what: f.what,
                    error,
                });
            }
        }
    }
    // aya's own test (`KernelVersion::at_least`, private), which also
    // makes no link when the version cannot be read.
    let reported = match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(5, 7, 0) => return Ok(()),
        Ok(v) => v.to_string(),
        Err(e) => format!("nothing readable ({e})"),
    };
    Err(MissingFeature::LinkAttach { reported })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_kernel_is_the_newest_feature() {
        let newest = REQUIRED
            .iter()
            .map(|f| {
                let (major, minor) = f.since.split_once('.').expect("MAJOR.MINOR");
                (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap())
            })
            .max()
            .unwrap();
        assert_eq!(format!("{}.{}", newest.0, newest.1), MIN_KERNEL);
    }
}
