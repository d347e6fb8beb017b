//! The agent's configuration, defined once: [`RunArgs`] is both the flags of
//! `cp-observer run` and the keys of the TOML file `--config` names (the
//! flag's name with `_` for `-`; a value in the file is parsed like the
//! flag's). The file is merged under the flags, then the defaults fill what
//! neither gave, and the result is validated into [`Settings`] before
//! anything touches the kernel.

use std::{
    fmt, fs,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::Args;
use observer_common::config::Ports;
use serde::{Deserialize, Deserializer, de};

use crate::{
    net::Cidr,
    policy::{Conflict, Policy, Rule},
};

/// Default `--metrics-addr` when the node's address is not known (with
/// `--node-ip`, the default is the first one on [`DEFAULT_METRICS_PORT`]).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";
/// Port of the default `--metrics-addr`.
pub const DEFAULT_METRICS_PORT: u16 = 9090;
/// Default `--flow-table-capacity`.
pub const DEFAULT_FLOW_TABLE_CAPACITY: u32 = 65536;
/// Default `--role-trie-capacity`: the prefixes of a node with a few pod
/// ranges and a few hundred konnectivity agents, with room to spare.
pub const DEFAULT_ROLE_TRIE_CAPACITY: u32 = 4096;
/// Default `--flow-idle-timeout`, seconds.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: u64 = 3600;
/// Largest `--flow-idle-timeout`, seconds: a year (the clock arithmetic
/// of the expiry must never overflow).
pub const MAX_FLOW_IDLE_TIMEOUT: u64 = 365 * 24 * 3600;
/// Default `--konnectivity-selector`.
pub const DEFAULT_KONNECTIVITY_SELECTOR: &str = "k8s-app=konnectivity-agent";
/// Default `--konnectivity-namespace`.
pub const DEFAULT_KONNECTIVITY_NAMESPACE: &str = "kube-system";
/// Default `--kubelet-check-interval`, seconds.
pub const DEFAULT_KUBELET_CHECK_INTERVAL: u64 = 600;

/// The flags of `cp-observer run`, and the keys of its config file.
///
/// Every field is a list, an `Option` or a switch, so that "not given" is
/// visible and a flag can win over the file; the defaults are applied in
/// [`Settings::from_args`]. A `[default: X]` in a flag's help is checked
/// against them by a test.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunArgs {
    /// TOML config file with the same keys as the flags (`control_plane = [...]`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)] // flag only: the file cannot name itself
    pub config: Option<PathBuf>,
    /// Control-plane hosts (apiservers, and konnectivity agents carrying apiserver traffic).
    #[arg(long = "control-plane", value_name = "CIDR")]
    #[serde(deserialize_with = "parsed_list")]
    pub control_plane: Vec<Cidr>,
    /// This node's own addresses.
    #[arg(long = "node-ip", value_name = "IP")]
    #[serde(deserialize_with = "parsed_list")]
    pub node_ip: Vec<IpAddr>,
    /// Pod address ranges of this node.
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    #[serde(deserialize_with = "parsed_list")]
    pub pod_cidr: Vec<Cidr>,
    /// Apiserver endpoints. One that is an address of this node (the
    /// apiserver runs on it) also makes the processes holding its listener
    /// the control plane, whatever address they connect from.
    #[arg(long = "apiserver", value_name = "IP:PORT")]
    #[serde(deserialize_with = "parsed_list")]
    pub apiserver: Vec<SocketAddr>,
    /// The `kubernetes` service VIP (repeatable: one per family on dual-stack
    /// clusters; in the file, one string or a list).
    #[arg(long = "apiserver-vip", value_name = "IP:PORT")]
    #[serde(deserialize_with = "parsed_one_or_list")]
    pub apiserver_vip: Vec<SocketAddr>,
    /// Kubelet API port [default: 10250].
    #[arg(long, value_name = "PORT")]
    pub kubelet_port: Option<u16>,
    /// Kubelet read-only port [default: 10255; 0 disables the path].
    #[arg(long, value_name = "PORT")]
    pub kubelet_read_only_port: Option<u16>,
    /// SSH port of SSH tunnels [default: 22].
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// Konnectivity server port [default: 8132].
    #[arg(long, value_name = "PORT")]
    pub konnectivity_port: Option<u16>,
    /// Policy rule PATH:PROTOCOL=ACTION (repeatable; `*` for any path or protocol).
    #[arg(long = "policy", value_name = "PATH:PROTOCOL=ACTION")]
    #[serde(deserialize_with = "parsed_list")]
    pub policy: Vec<Rule>,
    /// Report what `block` rules would block, without blocking.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to serve /metrics and /healthz [default: 0.0.0.0:9090; with --node-ip, the first one on port 9090].
    #[arg(long, value_name = "IP:PORT")]
    #[serde(deserialize_with = "parsed")]
    pub metrics_addr: Option<SocketAddr>,
    /// cgroup v2 mount to attach to (auto-detected when not given).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Maximum number of connections tracked at once [default: 65536].
    #[arg(long, value_name = "N")]
    pub flow_table_capacity: Option<u32>,
    /// Maximum number of address prefixes (control plane, node, pods) the
    /// role trie holds; its memory grows with the prefixes it holds, not
    /// with this capacity [default: 4096].
    #[arg(long, value_name = "N")]
    pub role_trie_capacity: Option<u32>,
    /// Pin links and state maps here, and adopt them on restart [default: /sys/fs/bpf/cp-observer].
    #[arg(long, value_name = "PATH", conflicts_with = "no_pin")]
    pub pin_dir: Option<PathBuf>,
    /// Pin nothing: programs detach when the agent exits.
    #[arg(long)]
    pub no_pin: bool,
    /// The host's procfs, where the enforcer finds the network namespaces
    /// of the node's processes and the agent finds the processes of an
    /// apiserver running on the node (a read-only hostPath mount in a pod
    /// without hostPID) [default: /proc].
    #[arg(long, value_name = "PATH")]
    pub host_proc: Option<PathBuf>,
    /// kubeconfig for discovery (when not given: the in-cluster config when run in a pod).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not learn the cluster from the apiserver; use the flags only.
    #[arg(long)]
    pub no_discovery: bool,
    /// This node's name, for discovery.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Label selector of the konnectivity agent pods [default: k8s-app=konnectivity-agent].
    #[arg(long, value_name = "SELECTOR")]
    pub konnectivity_selector: Option<String>,
    /// The one namespace whose konnectivity agent pods are trusted as
    /// control plane (a label is something any tenant can set) [default: kube-system].
    #[arg(long, value_name = "NAMESPACE")]
    pub konnectivity_namespace: Option<String>,
    /// Cluster CA to verify the kubelet's serving certificate with (when not
    /// given: the service-account ca.crt, if there is one).
    #[arg(long, value_name = "FILE")]
    pub kubelet_ca: Option<PathBuf>,
    /// Seconds between kubelet certificate checks [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub kubelet_check_interval: Option<u64>,
    /// Forget a tracked connection after this many seconds without a segment [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub flow_idle_timeout: Option<u64>,
    /// Trace the kernel programs' decisions in the log: `debug` says why
    /// each connection got its path, protocol and verdict [default: off].
    #[arg(long, value_name = "LEVEL", value_enum)]
    pub kernel_log: Option<KernelLog>,
}

/// How much the kernel programs trace (`--kernel-log`). The level is fixed
/// when the programs are loaded: with `off` the verifier removes the
/// records from them, leaving only the checks of the level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    /// Nothing; the records are not even in the loaded programs.
    #[default]
    Off,
    /// Every decision: a connection's path, then its protocol and verdict.
    Debug,
}

impl KernelLog {
    /// The value of aya-log's level global in the programs.
    pub fn level(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Debug => aya_log_common::Level::Debug as u8,
        }
    }
}

/// Everything `cp-observer run` needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `--control-plane`.
    pub control_plane: Vec<Cidr>,
    /// `--node-ip`.
    pub node_ips: Vec<IpAddr>,
    /// `--pod-cidr`.
    pub pod_cidrs: Vec<Cidr>,
    /// `--apiserver`.
    pub apiservers: Vec<SocketAddr>,
    /// `--apiserver-vip`.
    pub apiserver_vips: Vec<SocketAddr>,
    /// The four port flags.
    pub ports: Ports,
    /// `--metrics-addr`.
    pub metrics_addr: SocketAddr,
    /// `--cgroup`, `None` to auto-detect.
    pub cgroup: Option<PathBuf>,
    /// `--flow-table-capacity`.
    pub flow_table_capacity: u32,
    /// `--role-trie-capacity`.
    pub role_trie_capacity: u32,
    /// `--flow-idle-timeout`.
    pub flow_idle_timeout: Duration,
    /// `--policy` and `--dry-run`, resolved.
    pub policy: Policy,
    /// `--pin-dir`, `None` with `--no-pin`.
    pub pin_dir: Option<PathBuf>,
    /// `--host-proc`.
    pub host_proc: PathBuf,
    /// `None` with `--no-discovery`.
    pub discovery: Option<Discovery>,
    /// `--kubelet-ca`, `None` for the service-account CA if there is one.
    pub kubelet_ca: Option<PathBuf>,
    /// `--kubelet-check-interval`.
    pub kubelet_check_interval: Duration,
    /// `--kernel-log`.
    pub kernel_log: KernelLog,
}

/// How to learn the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// `--kubeconfig`, `None` for the in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// `--node-name`.
    pub node_name: Option<String>,
    /// `--konnectivity-selector`.
    pub konnectivity_selector: String,
    /// `--konnectivity-namespace`.
    pub konnectivity_namespace: String,
}

/// A setting that cannot be used, with the flag or key it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key, or a value
    /// that does not parse.
    #[error("config file {path} is invalid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where (line, and key when the line does not show it) and why.
        message: String,
    },
    /// Policy rules contradict each other.
    #[error(transparent)]
    Policy(#[from] Conflict),
    /// A value is well-formed but unusable.
    #[error("{setting} {value} is invalid: {message}")]
    Invalid {
        /// The flag (or key) concerned.
        setting: &'static str,
        /// The offending value.
        value: String,
        /// Why.
        message: &'static str,
    },
}

impl RunArgs {
    /// The config file at `path`.
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: locate(&text, &e),
        })
    }

    /// These flags over `file`: a flag given wins (a list replaces the
    /// file's list), and switches add up, except that `--pin-dir` and
    /// `--kubeconfig` overrule `no_pin` and `no_discovery` in the file.
    fn over(mut self, mut file: Self) -> Self {
        if self.pin_dir.is_some() {
            file.no_pin = false;
        }
        if self.kubeconfig.is_some() {
            file.no_discovery = false;
        }
        /// Lists each field once; without `..`, a field added to `RunArgs`
        /// and not listed here does not compile.
        macro_rules! flags_over_file {
            ($($field:ident),+ $(,)?) => {
                let Self { config: _, $($field),+ } = file;
                $( Layer::fill_from(&mut self.$field, $field); )+
            };
        }
        flags_over_file!(
            control_plane,
            node_ip,
            pod_cidr,
            apiserver,
            apiserver_vip,
            kubelet_port,
            kubelet_read_only_port,
            ssh_port,
            konnectivity_port,
            policy,
            dry_run,
            metrics_addr,
            cgroup,
            flow_table_capacity,
            role_trie_capacity,
            pin_dir,
            no_pin,
            host_proc,
            kubeconfig,
            no_discovery,
            node_name,
            konnectivity_selector,
            konnectivity_namespace,
            kubelet_ca,
            kubelet_check_interval,
            flow_idle_timeout,
            kernel_log,
        );
        self
    }
}

/// A flag's value over the file's.
trait Layer {
    /// Takes the file's value where the flag left `self` unset.
    fn fill_from(&mut self, file: Self);
}

impl<T> Layer for Option<T> {
    fn fill_from(&mut self, file: Self) {
        if self.is_none() {
            *self = file;
        }
    }
}

impl<T> Layer for Vec<T> {
    fn fill_from(&mut self, file: Self) {
        if self.is_empty() {
            *self = file;
        }
    }
}

/// A switch cannot be turned off on the command line: either layer turns it on.
impl Layer for bool {
    fn fill_from(&mut self, file: Self) {
        *self |= file;
    }
}

impl Settings {
    /// Reads `--config` if given, merges the flags over it, fills in the
    /// defaults and validates.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let args = match &args.config {
            Some(path) => args.clone().over(RunArgs::from_file(path)?),
            None => args.clone(),
        };
        let defaults = Ports::default();
        // The node's address where it is known: not every interface of a
        // host-network pod.
        let metrics_addr = args
            .metrics_addr
            .unwrap_or_else(|| match args.node_ip.first() {
                Some(ip) => SocketAddr::new(*ip, DEFAULT_METRICS_PORT),
                None => DEFAULT_METRICS_ADDR
                    .parse()
                    .expect("the default address parses"),
            });
        let settings = Self {
            control_plane: args.control_plane,
            node_ips: args.node_ip,
            pod_cidrs: args.pod_cidr,
            apiservers: args.apiserver,
            apiserver_vips: args.apiserver_vip,
            ports: Ports {
                kubelet: args.kubelet_port.unwrap_or(defaults.kubelet),
                kubelet_read_only: args
                    .kubelet_read_only_port
                    .unwrap_or(defaults.kubelet_read_only),
                ssh: args.ssh_port.unwrap_or(defaults.ssh),
                konnectivity: args.konnectivity_port.unwrap_or(defaults.konnectivity),
                _pad: 0,
            },
            metrics_addr,
            cgroup: args.cgroup,
            flow_table_capacity: args
                .flow_table_capacity
                .unwrap_or(DEFAULT_FLOW_TABLE_CAPACITY),
            role_trie_capacity: args
                .role_trie_capacity
                .unwrap_or(DEFAULT_ROLE_TRIE_CAPACITY),
            flow_idle_timeout: Duration::from_secs(
                args.flow_idle_timeout.unwrap_or(DEFAULT_FLOW_IDLE_TIMEOUT),
            ),
            policy: Policy::new(&args.policy, args.dry_run)?,
            pin_dir: (!args.no_pin).then(|| {
                args.pin_dir
                    .unwrap_or_else(|| crate::pin::DEFAULT_PIN_DIR.into())
            }),
            host_proc: args.host_proc.unwrap_or_else(|| "/proc".into()),
            discovery: (!args.no_discovery).then(|| Discovery {
                kubeconfig: args.kubeconfig,
                node_name: args.node_name,
                konnectivity_selector: args
                    .konnectivity_selector
                    .unwrap_or_else(|| DEFAULT_KONNECTIVITY_SELECTOR.to_owned()),
                konnectivity_namespace: args
                    .konnectivity_namespace
                    .unwrap_or_else(|| DEFAULT_KONNECTIVITY_NAMESPACE.to_owned()),
            }),
            kubelet_ca: args.kubelet_ca,
            // At least a second apart: 0 would make the checker spin.
            kubelet_check_interval: Duration::from_secs(
                args.kubelet_check_interval
                    .unwrap_or(DEFAULT_KUBELET_CHECK_INTERVAL)
                    .max(1),
            ),
            kernel_log: args.kernel_log.unwrap_or_default(),
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.flow_idle_timeout > Duration::from_secs(MAX_FLOW_IDLE_TIMEOUT) {
            return Err(ConfigError::Invalid {
                setting: "--flow-idle-timeout",
                value: self.flow_idle_timeout.as_secs().to_string(),
                message: "more than a year (31536000 seconds): an entry idle that long is a connection that is gone",
            });
        }
        if self.flow_idle_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "--flow-idle-timeout",
                value: "0".into(),
                message: "connections need at least a second of idleness before they are forgotten",
            });
        }
        if self.flow_table_capacity == 0 {
            return Err(ConfigError::Invalid {
                setting: "--flow-table-capacity",
                value: "0".into(),
                message: "the flow table needs room for at least one connection",
            });
        }
        if self.role_trie_capacity == 0 {
            return Err(ConfigError::Invalid {
                setting: "--role-trie-capacity",
                value: "0".into(),
                message: "the role trie needs room for at least this node's addresses",
            });
        }
        let mapped: ipnet::IpNet = "::ffff:0:0/96".parse().expect("constant parses");
        for (setting, cidr) in self
            .control_plane
            .iter()
            .map(|c| ("--control-plane", c))
            .chain(self.pod_cidrs.iter().map(|c| ("--pod-cidr", c)))
        {
            if cidr.0.contains(&mapped) {
                return Err(ConfigError::Invalid {
                    setting,
                    value: cidr.to_string(),
                    message: "it covers the IPv4-mapped range ::ffff:0:0/96, so it would \
                              claim every IPv4 address; give IPv4 ranges as IPv4",
                });
            }
        }
        for (setting, port) in [
            ("--kubelet-port", self.ports.kubelet),
            ("--ssh-port", self.ports.ssh),
            ("--konnectivity-port", self.ports.konnectivity),
        ] {
            if port == 0 {
                return Err(ConfigError::Invalid {
                    setting,
                    value: "0".into(),
                    message: "port 0 is not a port a server listens on",
                });
            }
        }
        for (setting, ep) in self
            .apiservers
            .iter()
            .map(|ep| ("--apiserver", ep))
            .chain(self.apiserver_vips.iter().map(|ep| ("--apiserver-vip", ep)))
        {
            if ep.port() == 0 || ep.ip().is_unspecified() {
                return Err(ConfigError::Invalid {
                    setting,
                    value: ep.to_string(),
                    message: "an endpoint needs a concrete address and a non-zero port",
                });
            }
        }
        if let Some(d) = &self.discovery {
            let ns = &d.konnectivity_namespace;
            let label_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            if ns.is_empty()
                || ns.len() > 63
                || !ns.chars().all(label_char)
                || ns.starts_with('-')
                || ns.ends_with('-')
            {
                return Err(ConfigError::Invalid {
                    setting: "--konnectivity-namespace",
                    value: format!("'{ns}'"),
                    message: "a namespace name is 1 to 63 lower-case letters, digits and '-' \
                              (one namespace: the konnectivity agents are trusted in no other)",
                });
            }
        }
        // What discovery adds later and does not fit is counted
        // (`cp_observer_discovery_overflow`); what the flags give must fit.
        let prefixes = crate::roles::role_entries(self).len();
        if prefixes > self.role_trie_capacity as usize {
            return Err(ConfigError::Invalid {
                setting: "--role-trie-capacity",
                value: format!(
                    "{} (--control-plane, --node-ip and --pod-cidr give {prefixes} prefixes)",
                    self.role_trie_capacity
                ),
                message: "the role trie cannot hold every address the flags give",
            });
        }
        Ok(())
    }
}

/// Where a file error is, for its message: the line, and the key when the
/// line does not show it (an element of a list written over several lines).
fn locate(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_owned();
    };
    let line_no = text[..span.start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
    let key = toml::de::DeTable::parse(text).ok().and_then(|table| {
        table.get_ref().iter().find_map(|(k, v)| {
            (k.span().start <= span.start && span.end <= v.span().end)
                .then(|| k.get_ref().to_string())
        })
    });
    match key {
        Some(key) if !line.contains(key.as_str()) => {
            format!("line {line_no} `{line}` (in `{key}`): {}", e.message())
        }
        _ => format!("line {line_no} `{line}`: {}", e.message()),
    }
}

/// A value in the file, parsed with the [`FromStr`] its flag uses. Parsing
/// inside the deserializer lets an error carry the value's own position.
struct Parsed<T>(T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(PhantomData<T>);
        impl<T> de::Visitor<'_> for Visitor<T>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            type Value = Parsed<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map(Parsed).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor(PhantomData))
    }
}

/// `key = "value"` for an `Option` field.
fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    Ok(Some(Parsed::deserialize(d)?.0))
}

/// `key = ["value", ...]` for a repeatable flag.
fn parsed_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let values = Vec::<Parsed<T>>::deserialize(d)?;
    Ok(values.into_iter().map(|p| p.0).collect())
}

/// `key = "value"` or `key = ["value", ...]`.
fn parsed_one_or_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    struct Visitor<T>(PhantomData<T>);
    impl<'de, T> de::Visitor<'de> for Visitor<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.parse().map_err(E::custom)?])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Parsed(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Visitor(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile_path::TempPath, RunArgs) {
        let tmp = tempfile_path::TempPath::with(text);
        let args = RunArgs {
            config: Some(tmp.0.clone()),
            ..RunArgs::default()
        };
        (tmp, args)
    }

    /// A throwaway file; no dependency needed for one test helper.
    mod tempfile_path {
        use std::path::PathBuf;

        pub struct TempPath(pub PathBuf);

        impl TempPath {
            pub fn with(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "cp-observer-config-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
        }

        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::from_args(&RunArgs::default()).unwrap();
        assert_eq!(s.ports, Ports::default());
        assert_eq!(s.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert_eq!(s.flow_table_capacity, DEFAULT_FLOW_TABLE_CAPACITY);
        assert_eq!(s.role_trie_capacity, DEFAULT_ROLE_TRIE_CAPACITY);
        let on_node = Settings::from_args(&RunArgs {
            node_ip: vec!["192.0.2.9".parse().unwrap(), "2001:db8::9".parse().unwrap()],
            ..RunArgs::default()
        })
        .unwrap();
        assert_eq!(
            on_node.metrics_addr.to_string(),
            "192.0.2.9:9090",
            "the node's address, not every interface, where it is known"
        );
    }

    #[test]
    fn the_role_trie_must_hold_what_the_flags_give() {
        let with = |capacity: u32, cidrs: u32| {
            Settings::from_args(&RunArgs {
                node_ip: vec!["10.0.1.5".parse().unwrap()],
                pod_cidr: (0..cidrs)
                    .map(|i| {
                        format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
                            .parse()
                            .unwrap()
                    })
                    .collect(),
                role_trie_capacity: Some(capacity),
                ..RunArgs::default()
            })
        };
        // The node's address and its pod ranges: one prefix each.
        assert_eq!(with(4, 3).unwrap().role_trie_capacity, 4);
        let e = with(3, 3).unwrap_err().to_string();
        assert!(
            e.contains("--role-trie-capacity 3") && e.contains("give 4 prefixes"),
            "{e}"
        );
        let e = with(0, 0).unwrap_err().to_string();
        assert!(e.contains("--role-trie-capacity 0"), "{e}");
        // Many more than the default fit once asked for.
        assert_eq!(with(100_000, 20_000).unwrap().role_trie_capacity, 100_000);
    }

    #[test]
    fn an_absurd_idle_timeout_is_refused_naming_the_flag() {
        for secs in [u64::MAX, MAX_FLOW_IDLE_TIMEOUT + 1] {
            let e = Settings::from_args(&RunArgs {
                flow_idle_timeout: Some(secs),
                ..RunArgs::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("--flow-idle-timeout") && e.contains(&secs.to_string()),
                "{e}"
            );
        }
        let longest = Settings::from_args(&RunArgs {
            flow_idle_timeout: Some(MAX_FLOW_IDLE_TIMEOUT),
            ..RunArgs::default()
        })
        .unwrap();
        // The expiry's arithmetic on the longest timeout does not overflow.
        let _ = crate::flows::sweep_interval(longest.flow_idle_timeout);
        assert!(
            std::time::Instant::now()
                .checked_add(longest.flow_idle_timeout * 2)
                .is_some()
        );
    }

    #[test]
    fn the_konnectivity_namespace_is_one_namespace_name() {
        let s = Settings::from_args(&RunArgs::default()).unwrap();
        assert_eq!(
            s.discovery.map(|d| d.konnectivity_namespace),
            Some(DEFAULT_KONNECTIVITY_NAMESPACE.to_owned())
        );
        for bad in ["", "Kube-System", "kube-system,tenant", "-x", "a/b"] {
            let e = Settings::from_args(&RunArgs {
                konnectivity_namespace: Some(bad.to_owned()),
                ..RunArgs::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with(&format!("--konnectivity-namespace '{bad}' is invalid")),
                "{e}"
            );
        }
    }

    #[test]
    fn file_values_and_flags_win() {
        let (_tmp, mut args) = file(
            r#"
            control_plane = ["10.0.0.0/24"]
            pod_cidr = ["10.244.0.0/24", "fd00:10:244::/64"]
            node_ip = ["10.0.1.5"]
            kubelet_port = 11250
            apiserver_vip = "10.96.0.1:443"
            "#,
        );
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.control_plane, vec!["10.0.0.0/24".parse().unwrap()]);
        assert_eq!(s.pod_cidrs.len(), 2);
        assert_eq!(s.ports.kubelet, 11250);
        assert_eq!(s.apiserver_vips, vec!["10.96.0.1:443".parse().unwrap()]);
        args.control_plane = vec!["192.0.2.0/24".parse().unwrap()];
        args.kubelet_port = Some(10250);
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.control_plane, vec!["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(s.ports.kubelet, 10250);
    }

    #[test]
    fn switches_and_their_opposites() {
        let (_tmp, mut args) = file("no_pin = true\npin_dir = \"/sys/fs/bpf/x\"\ndry_run = true\n");
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.pin_dir, None, "no_pin wins over pin_dir in one layer");
        assert!(s.policy.dry_run);
        args.pin_dir = Some("/sys/fs/bpf/y".into());
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(
            s.pin_dir,
            Some("/sys/fs/bpf/y".into()),
            "--pin-dir beats the file's no_pin"
        );

        let (_tmp, mut args) = file("pin_dir = \"/sys/fs/bpf/x\"\nno_discovery = true\n");
        args.no_pin = true;
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.pin_dir, None, "--no-pin beats the file's pin_dir");
        assert_eq!(s.discovery, None);
        args.kubeconfig = Some("/etc/kube.conf".into());
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(
            s.discovery.and_then(|d| d.kubeconfig),
            Some("/etc/kube.conf".into()),
            "--kubeconfig beats the file's no_discovery"
        );
    }

    /// `[default: X]` in a flag's help says what the agent does without the
    /// flag: giving `--flag X` changes nothing.
    #[test]
    fn the_help_states_the_defaults() {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let cli = crate::cli::Cli::command()
            .mut_subcommand("run", |run| run.mut_arg("node_name", |a| a.env(None)));
        let defaults = Settings::from_args(&RunArgs::default()).unwrap();
        let mut stated = 0;
        for arg in run_flags() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some((_, rest)) = help.split_once("[default: ") else {
                continue;
            };
            let value = rest.split([';', ']']).next().expect("a value");
            let long = arg.get_long().expect("long flags only");
            let argv = ["cp-observer", "run", &format!("--{long}"), value];
            let matches = cli.clone().try_get_matches_from(argv).unwrap();
            let crate::cli::Command::Run(flags) =
                crate::cli::Cli::from_arg_matches(&matches).unwrap().command
            else {
                panic!("not run")
            };
            let s = Settings::from_args(&flags).unwrap();
            assert_eq!(s, defaults, "--{long} {value}");
            stated += 1;
        }
        assert!(stated >= 8, "the defaults are in the help");
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/cp-observer.toml");
        let args = RunArgs {
            config: Some(path.into()),
            ..RunArgs::default()
        };
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.control_plane.len(), 2);
        assert_eq!(s.apiservers.len(), 2);
        assert_eq!(s.apiserver_vips.len(), 2);
        assert_eq!(s.ports, Ports::default());
    }

    /// The example file in `deploy/`.
    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/cp-observer.toml");

    /// The long flags of `cp-observer run`, as clap knows them, but `--config`
    /// (the file cannot name itself).
    fn run_flags() -> Vec<clap::Arg> {
        use clap::CommandFactory as _;
        let cli = crate::cli::Cli::command();
        let run = cli.find_subcommand("run").expect("a run subcommand");
        run.get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "config"))
            .cloned()
            .collect()
    }

    /// A value for `arg` on the command line (`None` for a switch) and the
    /// same in TOML. A new kind of value needs a sample here.
    fn sample(arg: &clap::Arg) -> (Option<&'static str>, String) {
        if !arg.get_action().takes_values() {
            return (None, "true".to_owned());
        }
        let kind = arg
            .get_value_names()
            .and_then(|n| n.first())
            .map(|n| n.as_str())
            .unwrap_or_default();
        let (value, quoted) = match kind {
            "CIDR" => ("10.9.0.0/16", true),
            "IP" => ("10.9.0.1", true),
            "IP:PORT" => ("10.9.0.1:443", true),
            "PORT" | "N" | "SECONDS" => ("7", false),
            "PATH" | "FILE" => ("/nonexistent/cp-observer", true),
            "NAME" => ("node-x", true),
            "SELECTOR" => ("app=x", true),
            "NAMESPACE" => ("agents", true),
            "PATH:PROTOCOL=ACTION" => ("apiserver-proxy-to-pod:plaintext=block", true),
            "LEVEL" => ("debug", true),
            other => panic!("no sample value for {other} (--{:?})", arg.get_long()),
        };
        let toml = if quoted {
            format!("\"{value}\"")
        } else {
            value.to_owned()
        };
        let toml = if matches!(arg.get_action(), clap::ArgAction::Append) {
            format!("[{toml}]")
        } else {
            toml
        };
        (Some(value), toml)
    }

    #[test]
    fn every_flag_has_a_twin_key() {
        use clap::{CommandFactory as _, FromArgMatches as _};
        // NODE_NAME in the test's environment would fill --node-name.
        let cli = crate::cli::Cli::command()
            .mut_subcommand("run", |run| run.mut_arg("node_name", |a| a.env(None)));
        let defaults = Settings::from_args(&RunArgs::default()).unwrap();
        let mut wrong = Vec::new();
        for arg in run_flags() {
            let long = arg.get_long().expect("long flags only");
            let (value, toml) = sample(&arg);
            let mut argv = vec![
                "cp-observer".to_owned(),
                "run".to_owned(),
                format!("--{long}"),
            ];
            argv.extend(value.map(str::to_owned));
            let matches = cli.clone().try_get_matches_from(&argv).unwrap();
            let crate::cli::Command::Run(flags) =
                crate::cli::Cli::from_arg_matches(&matches).unwrap().command
            else {
                panic!("not run")
            };
            let from_flag = Settings::from_args(&flags).unwrap();
            let key = long.replace('-', "_");
            let (_tmp, args) = file(&format!("{key} = {toml}\n"));
            match Settings::from_args(&args) {
                Ok(s) if s == from_flag && s != defaults => {}
                Ok(_) => wrong.push(format!("{key} = {toml} does not do what --{long} does")),
                Err(e) => wrong.push(format!("{key} = {toml}: {e}")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn the_shipped_example_sets_every_key() {
        let text = fs::read_to_string(SHIPPED).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let missing: Vec<String> = run_flags()
            .iter()
            .map(|a| a.get_long().expect("long flags only").replace('-', "_"))
            .filter(|key| !table.contains_key(key))
            .collect();
        assert!(
            missing.is_empty(),
            "deploy/cp-observer.toml lacks {missing:?}"
        );
    }

    #[test]
    fn errors_name_the_culprit() {
        let (_tmp, args) = file("pod_cidr = [\"banana\"]\n");
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("pod_cidr") && msg.contains("banana"), "{msg}");

        // An element of a list over several lines: the line shows the value,
        // the message adds the key.
        let (_tmp, args) = file("policy = [\n  \"*:*=alert\",\n  \"nowhere:*=block\",\n]\n");
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(
            msg.contains("line 3 `\"nowhere:*=block\",` (in `policy`)"),
            "{msg}"
        );

        let (_tmp, args) = file("apiserver_vip = \"10.96.0.1\"\nmetrics_addr = \"::1:80\"\n");
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("apiserver_vip = \"10.96.0.1\""), "{msg}");

        let (_tmp, args) = file("config = \"/etc/other.toml\"\n");
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("unknown field `config`"), "flag only: {msg}");

        let (_tmp, args) = file("pod_cidrs = [\"10.0.0.0/8\"]\n");
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("pod_cidrs"), "{msg}");

        let (_tmp, args) = file("\ncontrol_plane = \"10.0.0.1\"\n");
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(
            msg.contains("line 2 `control_plane = \"10.0.0.1\"`"),
            "{msg}"
        );

        let args = RunArgs {
            pod_cidr: vec!["::/0".parse().unwrap()],
            ..RunArgs::default()
        };
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("--pod-cidr ::/0"), "{msg}");

        let args = RunArgs {
            flow_table_capacity: Some(0),
            ..RunArgs::default()
        };
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("--flow-table-capacity"), "{msg}");

        let args = RunArgs {
            role_trie_capacity: Some(0),
            ..RunArgs::default()
        };
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("--role-trie-capacity 0"), "{msg}");

        let args = RunArgs {
            config: Some("/nonexistent/cp.toml".into()),
            ..RunArgs::default()
        };
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/cp.toml"), "{msg}");
    }
}
