//! The monitoring files work: the alert rules pass `promtool check rules`,
//! and a real Prometheus scraping the real agent in the lab evaluates every
//! dashboard query and every alert expression without error, each naming
//! only metrics the agent exports; the plaintext alert fires on plaintext.
//! A real kube-apiserver with the Prometheus Operator's CRDs takes the
//! PodMonitor and PrometheusRule (`kubectl apply --dry-run=server`) and
//! refuses broken ones. Needs root and Debian's `prometheus` (`cargo xtask
//! test` installs it, and assembles the CRDs: `CP_OBSERVER_PROMETHEUS_CRDS`).

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
    cluster::kube::ControlPlane,
    cluster::manifests::{find, kustomize, repo},
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

/// `kubectl apply --dry-run=server` of `text`, with kubectl's own
/// validation off: whatever is refused, the apiserver refused.
fn server_dry_run(cp: &ControlPlane, text: &str) -> std::process::Output {
    cp.kubectl_stdin(
        &["apply", "--validate=false", "--dry-run=server", "-f", "-"],
        Some(text),
    )
}

/// The PodMonitor and PrometheusRule as the operator's CRDs define them: a
/// real apiserver with the CRDs installed takes them, and refuses a
/// PodMonitor with a wrongly typed field and a PrometheusRule with a rule
/// missing its `expr`, so the schemas are really checked.
#[test]
fn a_real_apiserver_with_the_operator_crds_accepts_the_monitoring_objects() {
    let crds = std::env::var("CP_OBSERVER_PROMETHEUS_CRDS").expect(
        "CP_OBSERVER_PROMETHEUS_CRDS is not set: run the tests with `cargo xtask test` (it assembles the CRDs)",
    );
    let list: Json = serde_json::from_str(
        &std::fs::read_to_string(&crds).unwrap_or_else(|e| panic!("{crds}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{crds}: {e}"));
    let names: Vec<String> = list["items"]
        .as_array()
        .expect("a List of CRDs")
        .iter()
        .map(|c| format!("crd/{}", c["metadata"]["name"].as_str().expect("a name")))
        .collect();
    assert_eq!(names.len(), 2, "PodMonitor's and PrometheusRule's");

    let lab = Lab::for_real_control_plane("t-crds");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.kubectl_ok(&["apply", "-f", &crds], None);
    let mut wait = vec!["wait", "--for=condition=established", "--timeout=60s"];
    wait.extend(names.iter().map(String::as_str));
    cp.kubectl_ok(&wait, None);
    // Namespaced objects are checked against their namespace: create it.
    cp.create_namespace("cp-observer");

    let (text, docs) = kustomize("deploy/monitoring");
    let out = server_dry_run(&cp, &text);
    assert!(
        out.status.success(),
        "the apiserver refused deploy/monitoring: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut monitor = find(&docs, "PodMonitor").clone();
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = 30.into();
    let mut rule = find(&docs, "PrometheusRule").clone();
    rule["spec"]["groups"][0]["rules"][0]
        .as_mapping_mut()
        .expect("a rule")
        .remove("expr");
    for (broken, refusal) in [
        (
            monitor,
            "spec.podMetricsEndpoints.interval in body must be of type string",
        ),
        (rule, "spec.groups.rules.expr: Required value"),
    ] {
        let out = server_dry_run(&cp, &serde_yaml::to_string(&broken).expect("YAML"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(refusal),
            "a broken {} must be refused with `{refusal}`: {stderr}",
            broken["kind"].as_str().unwrap_or_default()
        );
    }
}
