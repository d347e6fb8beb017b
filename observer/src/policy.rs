//! The policy (README, "Policy and enforcement"): rules
//! `PATH:PROTOCOL=ACTION` over the documented defaults, resolved into one
//! table of (path, protocol) → action.
//!
//! A protocol selector is a protocol, `plaintext` (every protocol that
//! [`Protocol::is_plaintext`]: `http`, `http2` and `other`, which is
//! anything not recognised as TLS, SSH or HTTP, so "no plaintext" is one
//! rule), or `*`.
//!
//! Precedence, most specific first: `path:protocol`, `path:plaintext`,
//! `path:*`, `*:protocol`, `*:plaintext`, `*:*`, then the defaults. Two
//! rules with the same selector and different actions contradict each
//! other and are refused.

use std::{fmt, str::FromStr};

use observer_common::{
    enums::UnknownName,
    path::Path,
    policy::{Action, POLICY_ENTRIES, encode},
    protocol::Protocol,
};

/// One `--policy` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None` for `*`.
    pub path: Option<Path>,
    /// Which protocols.
    pub protocols: Protocols,
    /// What to do.
    pub action: Action,
}

/// The protocol part of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// One protocol.
    One(Protocol),
    /// `plaintext`: every protocol that [`Protocol::is_plaintext`].
    Plaintext,
    /// `*`.
    Any,
}

/// The selector for every path or every protocol.
const ANY: &str = "*";

impl Protocols {
    const PLAINTEXT: &str = "plaintext";

    fn name(self) -> &'static str {
        match self {
            Self::One(p) => p.name(),
            Self::Plaintext => Self::PLAINTEXT,
            Self::Any => ANY,
        }
    }

    fn contains(self, protocol: Protocol) -> bool {
        match self {
            Self::One(p) => p == protocol,
            Self::Plaintext => protocol.is_plaintext(),
            Self::Any => true,
        }
    }

    /// Higher is more specific.
    fn specificity(self) -> u8 {
        match self {
            Self::One(_) => 2,
            Self::Plaintext => 1,
            Self::Any => 0,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}={}",
            self.path.map_or(ANY, Path::name),
            self.protocols.name(),
            self.action.name()
        )
    }
}

/// Parses `word` of `rule` as a `T`, or says what it could have been:
/// the names of `T`, then `others` (the selectors besides them).
fn parse<T: FromStr<Err = UnknownName>>(
    word: &str,
    rule: &str,
    others: &[&str],
) -> Result<T, String> {
    word.parse().map_err(|e: UnknownName| {
        let mut choices = e.names.join(", ");
        if let Some((last, rest)) = others.split_last() {
            for o in rest {
                choices += &format!(", {o}");
            }
            choices += &format!(", or {last}");
        }
        let article = if e.key.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!(
            "'{word}' in '{rule}' is not {article} {} (one of: {choices})",
            e.key
        )
    })
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = || {
            format!(
                "'{s}' is not a rule of the form PATH:PROTOCOL=ACTION (e.g. apiserver-proxy-to-pod:http=block)"
            )
        };
        let (selector, action) = s.split_once('=').ok_or_else(shape)?;
        let (path, protocol) = selector.split_once(':').ok_or_else(shape)?;
        let path = match path.trim() {
            ANY => None,
            p => Some(parse(p, s, &[ANY])?),
        };
        let protocols = match protocol.trim() {
            ANY => Protocols::Any,
            Protocols::PLAINTEXT => Protocols::Plaintext,
            p => Protocols::One(parse(p, s, &[Protocols::PLAINTEXT, ANY])?),
        };
        let action = parse(action.trim(), s, &[])?;
        Ok(Self {
            path,
            protocols,
            action,
        })
    }
}

/// Two rules that say different things about the same selector.
#[derive(Debug, thiserror::Error)]
#[error("--policy rules '{0}' and '{1}' contradict each other")]
pub struct Conflict(pub Rule, pub Rule);

/// The resolved policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    actions: [[Action; Protocol::COUNT]; Path::COUNT],
    /// `--dry-run`: blocks are reported, not enforced.
    pub dry_run: bool,
}

impl Policy {
    /// The defaults, overridden by `rules` by precedence.
    pub fn new(rules: &[Rule], dry_run: bool) -> Result<Self, Conflict> {
        for (i, a) in rules.iter().enumerate() {
            if let Some(b) = rules[..i]
                .iter()
                .find(|b| (b.path, b.protocols) == (a.path, a.protocols) && b.action != a.action)
            {
                return Err(Conflict(b.clone(), a.clone()));
            }
        }
        let mut actions = [[Action::Allow; Protocol::COUNT]; Path::COUNT];
        for path in Path::ALL {
            for protocol in Protocol::ALL {
                // A path beats any protocol selector.
                let specificity =
                    |r: &Rule| (u8::from(r.path.is_some()), r.protocols.specificity());
                let matching = rules
                    .iter()
                    .filter(|r| r.path.is_none_or(|p| p == path) && r.protocols.contains(protocol));
                actions[path as usize][protocol as usize] = matching
                    .max_by_key(|r| specificity(r))
                    .map_or_else(|| Action::default_for(path, protocol), |r| r.action);
            }
        }
        Ok(Self { actions, dry_run })
    }

    /// The action for (path, protocol).
    pub fn action(&self, path: Path, protocol: Protocol) -> Action {
        self.actions[path as usize][protocol as usize]
    }

    /// One kernel policy table, indexed like `policy_index(0, ..)`.
    pub fn table(&self) -> [u32; POLICY_ENTRIES] {
        let mut t = [0; POLICY_ENTRIES];
        for path in Path::ALL {
            let enforced = self.enforces(path);
            for protocol in Protocol::ALL {
                t[path as usize * Protocol::COUNT + protocol as usize] =
                    encode(self.action(path, protocol), self.dry_run, enforced);
            }
        }
        t
    }

    /// True when some (path, protocol) is blocked (dry-run or not).
    pub fn blocks_anything(&self) -> bool {
        self.actions.iter().flatten().any(|a| *a == Action::Block)
    }

    /// True when `path` has a `block` rule in force (not a dry run): the
    /// datapath's hardening applies to it (README, "Threat model").
    pub fn enforces(&self, path: Path) -> bool {
        !self.dry_run && self.actions[path as usize].contains(&Action::Block)
    }

    /// True when some path is enforced.
    pub fn enforces_anything(&self) -> bool {
        Path::ALL.into_iter().any(|p| self.enforces(p))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(&[], false).expect("no rules, no conflict")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(rs: &[&str]) -> Vec<Rule> {
        rs.iter().map(|r| r.parse().unwrap()).collect()
    }

    #[test]
    fn defaults() {
        let p = Policy::default();
        assert_eq!(
            p.action(Path::ApiserverProxyToPod, Protocol::Http),
            Action::Alert
        );
        assert_eq!(
            p.action(Path::ApiserverProxyToPod, Protocol::Tls),
            Action::Allow
        );
        assert_eq!(p.action(Path::SshTunnel, Protocol::Ssh), Action::Alert);
        assert!(!p.blocks_anything());
    }

    #[test]
    fn precedence_most_specific_wins() {
        let p = Policy::new(
            &rules(&[
                "*:*=allow",
                "*:http=block",
                "apiserver-proxy-to-pod:*=alert",
                "apiserver-proxy-to-pod:tls=block",
            ]),
            false,
        )
        .unwrap();
        for (path, protocol, action, why) in [
            (Path::ApiserverProxyToPod, Protocol::Tls, Action::Block, ""),
            (
                Path::ApiserverProxyToPod,
                Protocol::Http,
                Action::Alert,
                "path:* beats *:protocol",
            ),
            (Path::NodeToApiserver, Protocol::Http, Action::Block, ""),
            (
                Path::NodeToApiserver,
                Protocol::Other,
                Action::Allow,
                "*:* beats the defaults",
            ),
        ] {
            assert_eq!(p.action(path, protocol), action, "{path}:{protocol} {why}");
        }
    }

    #[test]
    fn the_usual_hardening_rule() {
        let p = Policy::new(&rules(&["apiserver-proxy-to-pod:http=block"]), true).unwrap();
        assert_eq!(
            p.action(Path::ApiserverProxyToPod, Protocol::Http),
            Action::Block
        );
        assert_eq!(
            p.action(Path::ApiserverProxyToPod, Protocol::Other),
            Action::Alert,
            "other defaults stay"
        );
        assert!(p.blocks_anything());
        let t = p.table();
        assert_eq!(
            t[Path::ApiserverProxyToPod as usize * Protocol::COUNT + Protocol::Http as usize],
            encode(Action::Block, true, false)
        );
    }

    /// "No plaintext to pods" is one rule; TLS and SSH stay allowed, a
    /// more specific rule still wins.
    #[test]
    fn plaintext_is_one_selector() {
        let p = Policy::new(
            &rules(&[
                "apiserver-proxy-to-pod:plaintext=block",
                "apiserver-proxy-to-pod:http2=alert",
                "*:plaintext=allow",
            ]),
            false,
        )
        .unwrap();
        use Protocol::*;
        for (protocol, action) in [
            (Http, Action::Block),
            (Other, Action::Block),
            (Http2, Action::Alert),
            (Tls, Action::Allow),
            (Ssh, Action::Allow),
            (None, Action::Allow),
        ] {
            assert_eq!(
                p.action(Path::ApiserverProxyToPod, protocol),
                action,
                "{protocol:?}"
            );
        }
        assert_eq!(p.action(Path::NodeToApiserver, Other), Action::Allow);
        assert!(p.enforces(Path::ApiserverProxyToPod));
        assert!(
            !p.enforces(Path::NodeToApiserver),
            "fail open where nothing is blocked"
        );
        let dry = Policy::new(&rules(&["apiserver-proxy-to-pod:plaintext=block"]), true).unwrap();
        assert!(
            !dry.enforces(Path::ApiserverProxyToPod),
            "a dry run enforces nothing"
        );
        let r: Rule = "apiserver-proxy-to-pod:plaintext=block".parse().unwrap();
        assert_eq!(r.to_string(), "apiserver-proxy-to-pod:plaintext=block");
    }

    #[test]
    fn contradictions_and_bad_rules_are_named() {
        let err = Policy::new(
            &rules(&["ssh-tunnel:*=block", "*:http=allow", "ssh-tunnel:*=allow"]),
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--policy rules 'ssh-tunnel:*=block' and 'ssh-tunnel:*=allow' contradict each other"
        );
        assert!(
            Policy::new(&rules(&["ssh-tunnel:*=block", "ssh-tunnel:*=block"]), false).is_ok(),
            "repeats are fine"
        );
        for (bad, names) in [
            ("proxy:http=block", "'proxy'"),
            ("apiserver-proxy-to-pod:ftp=block", "'ftp'"),
            ("apiserver-proxy-to-pod:http=deny", "'deny'"),
            ("apiserver-proxy-to-pod=block", "PATH:PROTOCOL=ACTION"),
        ] {
            let err = bad.parse::<Rule>().unwrap_err();
            assert!(err.contains(names), "{bad}: {err}");
        }
        assert_eq!(
            "ssh-tunnel:ftp=deny".parse::<Rule>().unwrap_err(),
            "'ftp' in 'ssh-tunnel:ftp=deny' is not a protocol \
             (one of: tls, http, http2, ssh, other, none, plaintext, or *)"
        );
        assert_eq!(
            "*:*=deny".parse::<Rule>().unwrap_err(),
            "'deny' in '*:*=deny' is not an action (one of: allow, alert, block)"
        );
        let r: Rule = " * : tls = allow".parse().unwrap();
        assert_eq!(r.to_string(), "*:tls=allow");
    }
}
