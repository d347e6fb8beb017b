//! Actions and verdicts (SPEC §3).

use crate::{path::Path, protocol::Protocol};

/// What a policy rule asks for a (path, protocol) pair. Stored as `u32` in
/// the `POLICY` array, indexed by [`policy_index`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Count only.
    Allow = 0,
    /// Count and report a violation.
    Alert = 1,
    /// Report and stop the connection.
    Block = 2,
}

impl Action {
    /// The `action` label / config value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Alert => "alert",
            Self::Block => "block",
        }
    }

    /// Converts a stored value back; unknown values read as `Allow`
    /// (fail open).
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Alert,
            2 => Self::Block,
            _ => Self::Allow,
        }
    }

    /// The default policy of SPEC §3: alert on plaintext on every path and on
    /// any use of the read-only kubelet port or SSH tunnels.
    pub const fn default_for(path: Path, protocol: Protocol) -> Self {
        if protocol.is_plaintext() || matches!(path, Path::KubeletReadOnly | Path::SshTunnel) {
            Self::Alert
        } else {
            Self::Allow
        }
    }
}

/// The `verdict` label: what happened to a connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Allowed without report.
    Allowed = 0,
    /// Allowed and reported.
    Alerted = 1,
    /// Stopped.
    Blocked = 2,
}

impl Verdict {
    /// Number of verdicts.
    pub const COUNT: usize = 3;
    /// All verdicts, in table order.
    pub const ALL: [Self; Self::COUNT] = [Self::Allowed, Self::Alerted, Self::Blocked];

    /// The `verdict` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Alerted => "alerted",
            Self::Blocked => "blocked",
        }
    }

    /// The verdict an action gives.
    #[inline(always)]
    pub const fn of(action: Action) -> Self {
        match action {
            Action::Allow => Self::Allowed,
            Action::Alert => Self::Alerted,
            Action::Block => Self::Blocked,
        }
    }
}

/// Number of entries of the `POLICY` array.
pub const POLICY_ENTRIES: usize = Path::COUNT * Protocol::COUNT;

/// Index of (path, protocol) in the `POLICY` array.
#[inline(always)]
pub const fn policy_index(path: u8, protocol: u8) -> u32 {
    path as u32 * Protocol::COUNT as u32 + protocol as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        use Protocol::*;
        assert_eq!(
            Action::default_for(Path::ApiserverProxyToPod, Http),
            Action::Alert
        );
        assert_eq!(
            Action::default_for(Path::ApiserverProxyToPod, Tls),
            Action::Allow
        );
        assert_eq!(
            Action::default_for(Path::ApiserverToKubelet, Other),
            Action::Alert
        );
        assert_eq!(
            Action::default_for(Path::NodeToApiserver, Http2),
            Action::Alert
        );
        assert_eq!(
            Action::default_for(Path::NodeToApiserver, None),
            Action::Allow
        );
        assert_eq!(
            Action::default_for(Path::KubeletReadOnly, Tls),
            Action::Alert
        );
        assert_eq!(Action::default_for(Path::SshTunnel, Ssh), Action::Alert);
        assert_eq!(Action::default_for(Path::Konnectivity, Tls), Action::Allow);
    }
}
