//! Actions and verdicts.

use crate::{path::Path, protocol::Protocol};

indexed_enum! {
    /// What a policy rule asks for a (path, protocol) pair. Stored as `u32`
    /// in the `POLICY` array, indexed by [`policy_index`].
    pub enum Action: u32, label "action" {
        /// Count only.
        Allow = 0 => "allow",
        /// Count and report a violation.
        Alert = 1 => "alert",
        /// Report and stop the connection.
        Block = 2 => "block",
    }
}

impl Action {
    /// The default policy (README, "Policy and enforcement"): alert on
    /// plaintext on every path and on any use of the read-only kubelet port
    /// or SSH tunnels.
    pub const fn default_for(path: Path, protocol: Protocol) -> Self {
        if protocol.is_plaintext() || matches!(path, Path::KubeletReadOnly | Path::SshTunnel) {
            Self::Alert
        } else {
            Self::Allow
        }
    }
}

indexed_enum! {
    /// The `verdict` label: what happened to a connection.
    pub enum Verdict: u8, label "verdict" {
        /// Allowed without report.
        Allowed = 0 => "allowed",
        /// Allowed and reported.
        Alerted = 1 => "alerted",
        /// Stopped.
        Blocked = 2 => "blocked",
    }
}

impl Verdict {
    /// The verdict an action gives (not under `--dry-run`).
    #[inline(always)]
    pub const fn of(action: Action) -> Self {
        verdict(action, false)
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
    // Unknown values read as `Allow` (fail open).
    let action = match Action::from_u32(entry & 0xff) {
        Some(a) => a,
        None => Action::Allow,
    };
    (action, entry & DRY_RUN != 0)
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
        for a in Action::ALL {
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
        let (last_path, last_protocol) = (Path::COUNT as u8 - 1, Protocol::COUNT as u8 - 1);
        assert_eq!(
            policy_index(0, last_path, last_protocol),
            POLICY_ENTRIES as u32 - 1
        );
        assert_eq!(
            violation_index(last_path, last_protocol, Action::Block),
            Some(VIOLATION_ENTRIES as u32 - 1)
        );
        assert_eq!(violation_index(0, 0, Action::Allow), None);
    }

    #[test]
    fn default_policy() {
        use Protocol::*;
        for (path, protocol, action) in [
            (Path::ApiserverProxyToPod, Http, Action::Alert),
            (Path::ApiserverProxyToPod, Tls, Action::Allow),
            (Path::ApiserverToKubelet, Other, Action::Alert),
            (Path::NodeToApiserver, Http2, Action::Alert),
            (Path::NodeToApiserver, None, Action::Allow),
            (Path::KubeletReadOnly, Tls, Action::Alert),
            (Path::SshTunnel, Ssh, Action::Alert),
            (Path::Konnectivity, Tls, Action::Allow),
        ] {
            assert_eq!(
                Action::default_for(path, protocol),
                action,
                "{path} {protocol}"
            );
        }
    }
}
