//! The monitoring files work: the alert rules pass `promtool check rules`,
//! and a real Prometheus scraping the real agent in the lab evaluates every
//! dashboard query and every alert expression without error, each naming
//! only metrics the agent exports; the plaintext alert fires on plaintext.
//! Needs root and Debian's `prometheus` (`cargo xtask test` installs it).
//!
//! Not checked here: a server-side dry run of the PodMonitor and
//! PrometheusRule. The only apiserver these machines can build (v1.20.2 from
//! Debian's source, compiled with Go 1.19) dies with "fatal error: fault"
//! when it serves custom resources, so their CRDs cannot be exercised.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use lab::{
    cluster::agent::{Agent, free_port},
    cluster::manifests::{kustomize, repo},
    cluster::scenario::{Lab, Where},
    cluster::topology::{Topology, addrs},
    eventually, later, traffic,
};
use serde_json::Value as Json;

/// The alert rules as a plain Prometheus rules file (the PrometheusRule's spec).
fn rules_file() -> (PathBuf, Vec<(String, String)>) {
    let (_, docs) = kustomize("deploy/monitoring");
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let spec = &rule["spec"];
    let path = std::env::temp_dir().join(format!("cp-observer-rules-{}.yaml", std::process::id()));
    std::fs::write(&path, serde_yaml::to_string(spec).expect("YAML")).expect("write rules");
    let alerts = spec["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .map(|r| {
            (
                r["alert"].as_str().expect("alert").to_owned(),
                r["expr"].as_str().expect("expr").to_owned(),
            )
        })
        .collect();
    (path, alerts)
}

/// Every query of the dashboard, with Grafana's variables given values.
fn dashboard_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo("deploy/grafana/cp-observer.json")).expect("the dashboard");
    let d: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            out.push((title, t["expr"].as_str().expect("expr").to_owned()));
        }
    }
    assert!(out.len() >= 15, "the dashboard has its panels");
    for v in d["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = v["query"]
            .as_str()
            .filter(|q| q.starts_with("label_values("))
        {
            // label_values(METRIC{...}, label): check the metric like a query.
            let inner = q
                .trim_start_matches("label_values(")
                .rsplit_once(',')
                .expect("label_values(m, l)")
                .0;
            out.push((format!("variable {}", v["name"]), inner.to_owned()));
        }
    }
    out.into_iter()
        .map(|(t, e)| {
            (
                t,
                e.replace("$cluster", ".*")
                    .replace("$node", ".*")
                    .replace("$__rate_interval", "1m"),
            )
        })
        .collect()
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("cp_observer_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let (path, alerts) = rules_file();
    assert!(alerts.len() >= 8);
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(path);
}

/// A Prometheus server on loopback, stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr, rules: &std::path::Path) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cp-observer-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules}]\nscrape_configs:\n\
             - job_name: cp-observer\n  static_configs:\n  - targets: ['{target}']\n    labels: {{node: lab-node, cluster: lab}}\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .spawn()
            .expect("prometheus starts");
        let p = Self { child, addr, dir };
        let what = later(|| {
            format!(
                "prometheus is ready: {}",
                std::fs::read_to_string(p.dir.join("log")).unwrap_or_default()
            )
        });
        eventually(Duration::from_secs(30), what, || {
            p.get("/-/ready").is_some_and(|(code, _)| code == 200)
        });
        p
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            resp.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default(),
        ))
    }

    /// An instant query; the parsed answer.
    fn query(&self, expr: &str) -> Json {
        let encoded: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (_, body) = self
            .get(&format!("/api/v1/query?query={encoded}"))
            .expect("prometheus answers");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_evaluates_every_dashboard_query_and_alert_on_the_real_agent() {
    let lab = Lab::new("t-prom");
    let agent = Agent::start(&Topology::agent_args());
    let exported: BTreeSet<String> = agent
        .scrape()
        .samples
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let (rules, alerts) = rules_file();
    let prom = Prometheus::start(agent.metrics_addr, &rules);
    let scraped = |p: &Prometheus| {
        p.query("count(cp_observer_build_info)")["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    };
    eventually(
        Duration::from_secs(30),
        "prometheus scrapes the agent",
        || scraped(&prom),
    );
    std::thread::sleep(Duration::from_secs(2)); // a few samples of zeros first
    let pod = SocketAddr::new(addrs::POD4.into(), 8080);
    for _ in 0..3 {
        traffic::http_get(lab.ns(Where::ControlPlane), pod).expect("plaintext proxy request");
    }
    traffic::https_get(
        lab.ns(Where::ControlPlane),
        SocketAddr::new(addrs::POD4.into(), 8443),
        &lab.tls,
    )
    .expect("TLS");
    std::thread::sleep(Duration::from_secs(3)); // scraped and evaluated

    let queries = dashboard_queries().into_iter().chain(
        alerts
            .iter()
            .map(|(a, e)| (format!("alert {a}"), e.clone())),
    );
    for (what, expr) in queries {
        let answer = prom.query(&expr);
        assert_eq!(answer["status"], "success", "{what}: {expr}\n{answer}");
        for name in metric_names(&expr) {
            assert!(
                exported.contains(&name),
                "{what}: {name} is not a metric the agent exports"
            );
        }
    }

    // The rules loaded, evaluate cleanly, and the plaintext alert fires.
    let (_, body) = prom.get("/api/v1/rules").expect("rules");
    let rules_json: Json = serde_json::from_str(&body).expect("JSON");
    for g in rules_json["data"]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            assert_eq!(r["health"], "ok", "{r}");
        }
    }
    let alerts = || prom.get("/api/v1/alerts").expect("alerts").1;
    let what = later(|| format!("the plaintext alert fires: {}", alerts()));
    eventually(Duration::from_secs(15), what, || {
        alerts().contains("CpObserverPlaintextApiserverProxy")
    });
    let _ = std::fs::remove_file(rules);
}
