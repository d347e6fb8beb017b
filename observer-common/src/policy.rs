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

/// Entries of one policy table: one per (path, protocol).
pub const POLICY_ENTRIES: usize = Path::COUNT * Protocol::COUNT;

/// The `POLICY` array holds two tables; `POLICY_SLOT[0]` says which one is
/// in force. The agent writes the other one and then flips the slot, so a
/// packet sees the old policy or the new one, never a mix.
pub const POLICY_SLOTS: usize = 2;

/// Index of (path, protocol) in table `slot` of the `POLICY` array.
#[inline(always)]
pub const fn policy_index(slot: u32, path: u8, protocol: u8) -> u32 {
    (slot & 1) * POLICY_ENTRIES as u32 + path as u32 * Protocol::COUNT as u32 + protocol as u32
}

/// Bit of a `POLICY` entry: report a `block` instead of enforcing it.
pub const DRY_RUN: u32 = 1 << 8;

/// Bit of a `POLICY` entry: the entry's path has a `block` rule in force
/// (not dry run) for some protocol, so the datapath's hardening applies to
/// every connection on it (`counters::DropReason`).
pub const ENFORCED_PATH: u32 = 1 << 9;

/// Bit of the `POLICY_SLOT` value: some path is enforced (packets whose
/// headers cannot be read are then dropped). Bit 0 is the table in force.
pub const SLOT_ANY_ENFORCED: u32 = 1 << 1;

/// A `POLICY` entry: the action, the dry-run bit, and whether its path is
/// enforced.
pub const fn encode(action: Action, dry_run: bool, path_enforced: bool) -> u32 {
    action as u32
        | if dry_run { DRY_RUN } else { 0 }
        | if path_enforced { ENFORCED_PATH } else { 0 }
}

/// True when a `POLICY` entry's path is enforced ([`ENFORCED_PATH`]).
#[inline(always)]
pub const fn path_enforced(entry: u32) -> bool {
    entry & ENFORCED_PATH != 0
}

/// The action and dry-run bit of a `POLICY` entry.
#[inline(always)]
pub const fn decode(entry: u32) -> (Action, bool) {
    (Action::from_u32(entry & 0xff), entry & DRY_RUN != 0)
}

/// What happens to a connection given its (path, protocol) entry.
#[inline(always)]
pub const fn verdict(action: Action, dry_run: bool) -> Verdict {
    match action {
        Action::Block if !dry_run => Verdict::Blocked,
        Action::Block | Action::Alert => Verdict::Alerted,
        Action::Allow => Verdict::Allowed,
    }
}

/// Entries of `VIOLATIONS`: per (path, protocol), alerts and blocks (as
/// configured: a dry-run block counts as a block that was not enforced).
pub const VIOLATION_ENTRIES: usize = POLICY_ENTRIES * 2;

/// Index in `VIOLATIONS`; `None` for `allow`, which is no violation.
#[inline(always)]
pub const fn violation_index(path: u8, protocol: u8, action: Action) -> Option<u32> {
    let base = (path as u32 * Protocol::COUNT as u32 + protocol as u32) * 2;
    match action {
        Action::Allow => None,
        Action::Alert => Some(base),
        Action::Block => Some(base + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_give_verdicts() {
        for a in [Action::Allow, Action::Alert, Action::Block] {
            for d in [false, true] {
                assert_eq!(decode(encode(a, d, false)), (a, d));
                assert_eq!(decode(encode(a, d, true)), (a, d));
                assert!(path_enforced(encode(a, d, true)));
                assert!(!path_enforced(encode(a, d, false)));
            }
        }
        assert_eq!(verdict(Action::Block, false), Verdict::Blocked);
        assert_eq!(verdict(Action::Block, true), Verdict::Alerted);
        assert_eq!(verdict(Action::Alert, true), Verdict::Alerted);
        assert_eq!(verdict(Action::Allow, true), Verdict::Allowed);
        assert_eq!(policy_index(1, 0, 0), POLICY_ENTRIES as u32);
        assert_eq!(policy_index(0, 7, 5), POLICY_ENTRIES as u32 - 1);
        assert_eq!(
            violation_index(7, 5, Action::Block),
            Some(VIOLATION_ENTRIES as u32 - 1)
        );
        assert_eq!(violation_index(0, 0, Action::Allow), None);
    }

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
