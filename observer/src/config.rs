//! The agent's settings: the TOML config file merged under the flags, with
//! defaults, validated before anything touches the kernel.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use observer_common::config::Ports;
use serde::Deserialize;

use crate::{
    cli::RunArgs,
    net::Cidr,
    policy::{Conflict, Policy, Rule},
};

/// Default `--metrics-addr`.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";
/// Default `--flow-table-capacity`.
pub const DEFAULT_FLOW_TABLE_CAPACITY: u32 = 65536;
/// Default `--flow-idle-timeout`, seconds.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: u64 = 3600;

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
    /// `--flow-idle-timeout`.
    pub flow_idle_timeout: std::time::Duration,
    /// `--policy` and `--dry-run`, resolved.
    pub policy: Policy,
    /// `--pin-dir`, `None` with `--no-pin`.
    pub pin_dir: Option<PathBuf>,
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
    /// The config file is not valid TOML or has unknown keys.
    #[error("config file {path} is invalid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A value in the config file does not parse.
    #[error("config file {path}: {key} = \"{value}\" is invalid: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// The offending value.
        value: String,
        /// Why.
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

/// The config file: the flags' names with `_` for `-`, values as strings
/// parsed like the flags' values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    control_plane: Vec<String>,
    #[serde(default)]
    node_ip: Vec<String>,
    #[serde(default)]
    pod_cidr: Vec<String>,
    #[serde(default)]
    apiserver: Vec<String>,
    apiserver_vip: Option<OneOrMany>,
    kubelet_port: Option<u16>,
    kubelet_read_only_port: Option<u16>,
    ssh_port: Option<u16>,
    konnectivity_port: Option<u16>,
    metrics_addr: Option<String>,
    cgroup: Option<PathBuf>,
    flow_table_capacity: Option<u32>,
    flow_idle_timeout: Option<u64>,
    #[serde(default)]
    policy: Vec<String>,
    #[serde(default)]
    dry_run: bool,
    pin_dir: Option<PathBuf>,
    #[serde(default)]
    no_pin: bool,
}

/// A key that takes one value or a list (`apiserver_vip`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(v) => vec![v],
            Self::Many(v) => v,
        }
    }
}

impl Settings {
    /// Reads `--config` if given and merges the flags over it.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => Parsed::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &RunArgs, file: Parsed) -> Result<Self, ConfigError> {
        fn pick<T: Clone>(flag: &[T], file: Vec<T>) -> Vec<T> {
            if flag.is_empty() { file } else { flag.to_vec() }
        }
        let defaults = Ports::default();
        let ports = Ports {
            kubelet: args
                .kubelet_port
                .or(file.kubelet_port)
                .unwrap_or(defaults.kubelet),
            kubelet_read_only: args
                .kubelet_read_only_port
                .or(file.kubelet_read_only_port)
                .unwrap_or(defaults.kubelet_read_only),
            ssh: args.ssh_port.or(file.ssh_port).unwrap_or(defaults.ssh),
            konnectivity: args
                .konnectivity_port
                .or(file.konnectivity_port)
                .unwrap_or(defaults.konnectivity),
            _pad: 0,
        };
        let settings = Self {
            control_plane: pick(&args.control_plane, file.control_plane),
            node_ips: pick(&args.node_ip, file.node_ip),
            pod_cidrs: pick(&args.pod_cidr, file.pod_cidr),
            apiservers: pick(&args.apiserver, file.apiserver),
            apiserver_vips: pick(&args.apiserver_vip, file.apiserver_vip),
            ports,
            metrics_addr: args.metrics_addr.or(file.metrics_addr).unwrap_or_else(|| {
                DEFAULT_METRICS_ADDR
                    .parse()
                    .expect("the default address parses")
            }),
            cgroup: args.cgroup.clone().or(file.cgroup),
            flow_table_capacity: args
                .flow_table_capacity
                .or(file.flow_table_capacity)
                .unwrap_or(DEFAULT_FLOW_TABLE_CAPACITY),
            flow_idle_timeout: std::time::Duration::from_secs(
                args.flow_idle_timeout
                    .or(file.flow_idle_timeout)
                    .unwrap_or(DEFAULT_FLOW_IDLE_TIMEOUT),
            ),
            policy: Policy::new(
                &pick(&args.policy, file.policy),
                args.dry_run || file.dry_run,
            )?,
            pin_dir: if args.no_pin || (file.no_pin && args.pin_dir.is_none()) {
                None
            } else {
                Some(
                    args.pin_dir
                        .clone()
                        .or(file.pin_dir)
                        .unwrap_or_else(|| crate::pin::DEFAULT_PIN_DIR.into()),
                )
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }
}

/// The file's values, parsed.
#[derive(Default)]
struct Parsed {
    control_plane: Vec<Cidr>,
    node_ip: Vec<IpAddr>,
    pod_cidr: Vec<Cidr>,
    apiserver: Vec<SocketAddr>,
    apiserver_vip: Vec<SocketAddr>,
    kubelet_port: Option<u16>,
    kubelet_read_only_port: Option<u16>,
    ssh_port: Option<u16>,
    konnectivity_port: Option<u16>,
    metrics_addr: Option<SocketAddr>,
    cgroup: Option<PathBuf>,
    flow_table_capacity: Option<u32>,
    flow_idle_timeout: Option<u64>,
    policy: Vec<Rule>,
    dry_run: bool,
    pin_dir: Option<PathBuf>,
    no_pin: bool,
}

fn load_file(path: &Path) -> Result<Parsed, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let raw: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: match e.span() {
            // Name the offending line: the message alone omits the key.
            Some(span) => {
                let line_no = text[..span.start].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
                format!("line {line_no} `{line}`: {}", e.message())
            }
            None => e.message().to_owned(),
        },
    })?;
    let one = |key: &'static str, v: &str| parse_value(path, key, v);
    Ok(Parsed {
        control_plane: parse_values(path, "control_plane", &raw.control_plane)?,
        node_ip: parse_values(path, "node_ip", &raw.node_ip)?,
        pod_cidr: parse_values(path, "pod_cidr", &raw.pod_cidr)?,
        apiserver: parse_values(path, "apiserver", &raw.apiserver)?,
        apiserver_vip: parse_values(
            path,
            "apiserver_vip",
            &raw.apiserver_vip
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        )?,
        kubelet_port: raw.kubelet_port,
        kubelet_read_only_port: raw.kubelet_read_only_port,
        ssh_port: raw.ssh_port,
        konnectivity_port: raw.konnectivity_port,
        metrics_addr: raw
            .metrics_addr
            .as_deref()
            .map(|v| one("metrics_addr", v))
            .transpose()?,
        cgroup: raw.cgroup,
        flow_table_capacity: raw.flow_table_capacity,
        flow_idle_timeout: raw.flow_idle_timeout,
        policy: parse_values(path, "policy", &raw.policy)?,
        dry_run: raw.dry_run,
        pin_dir: raw.pin_dir,
        no_pin: raw.no_pin,
    })
}

fn parse_values<T>(path: &Path, key: &'static str, values: &[String]) -> Result<Vec<T>, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    values.iter().map(|v| parse_value(path, key, v)).collect()
}

fn parse_value<T>(path: &Path, key: &'static str, value: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Value {
        path: path.to_owned(),
        key,
        value: value.to_owned(),
        message: e.to_string(),
    })
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

    #[test]
    fn errors_name_the_culprit() {
        let (_tmp, args) = file("pod_cidr = [\"banana\"]\n");
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("pod_cidr") && msg.contains("banana"), "{msg}");

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
            config: Some("/nonexistent/cp.toml".into()),
            ..RunArgs::default()
        };
        let msg = Settings::from_args(&args).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/cp.toml"), "{msg}");
    }
}
