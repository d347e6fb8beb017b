//! What the agent asks the apiserver, from the apiserver's audit log
//! (JSON lines, level `Metadata`), and the check that it never lists or
//! watches the pods or nodes of the whole cluster: pods only in one
//! namespace or with the field selector of its node, nodes only its own
//! by name.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

/// The audit policy the benchmark's apiserver runs with: every read
/// (`get`, `list`, `watch`) at level `Metadata` (who, what, the URI), once
/// per request stage after it was received; writes are not logged.
pub const POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [\"RequestReceived\"]
rules:
- level: Metadata
  verbs: [\"get\", \"list\", \"watch\"]
- level: None
";

/// The kube-apiserver flags that write the audit log `log` with the
/// policy in file `policy` ([`POLICY`]).
pub fn apiserver_args(policy: &std::path::Path, log: &std::path::Path) -> Vec<String> {
    vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", log.display()),
        "--audit-log-format=json".to_owned(),
        "--audit-log-mode=blocking".to_owned(),
    ]
}

/// One request, as the audit log names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    /// `get`, `list`, `watch`.
    pub verb: String,
    /// The resource (`pods`, `nodes`, ...).
    pub resource: String,
    /// Its namespace; empty for a cluster-wide request.
    pub namespace: String,
    /// The object's name, if the request names one.
    pub name: String,
    /// The request URI as sent (path and query).
    pub uri: String,
}

impl Request {
    /// The value of `key` in the URI's query, decoded.
    fn query(&self, key: &str) -> Option<String> {
        let (_, query) = self.uri.split_once('?')?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether the field selector has the term `field=value`.
    fn selects(&self, field: &str, value: &str) -> bool {
        self.query("fieldSelector").is_some_and(|s| {
            s.split(',')
                .any(|term| term.split_once('=') == Some((field, value)))
        })
    }

    /// The URI without the parts that change from one request to the
    /// next (a `resourceVersion` other than `0`, which asks for the
    /// apiserver's cache; `timeoutSeconds`, `continue`), to group repeated
    /// requests.
    pub fn shape(&self) -> String {
        let Some((path, query)) = self.uri.split_once('?') else {
            return self.uri.clone();
        };
        let kept: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, v)| match &**k {
                "resourceVersion" => v == "0",
                "timeoutSeconds" | "continue" => false,
                _ => true,
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", kept.join("&"))
        }
    }
}

/// The requests in the audit log `log` that came from one of `sources`,
/// each once (a watch is logged when it starts and again when it ends).
/// Panics on a line that is not an audit event.
pub fn requests_from(log: &str, sources: &[IpAddr]) -> Vec<Request> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("an audit log line is not JSON ({e}): {line}"));
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let from_source = event["sourceIPs"].as_array().is_some_and(|ips| {
            ips.iter()
                .filter_map(|ip| ip.as_str()?.parse::<IpAddr>().ok())
                .any(|ip| sources.contains(&ip))
        });
        if !from_source || !seen.insert(text(&event["auditID"])) {
            continue;
        }
        let object = &event["objectRef"];
        out.push(Request {
            verb: text(&event["verb"]),
            resource: text(&object["resource"]),
            namespace: text(&object["namespace"]),
            name: text(&object["name"]),
            uri: text(&event["requestURI"]),
        });
    }
    out
}

/// Checks that `requests` (the agent's, on node `node`) read no more pods
/// and nodes than it needs: every list or watch of pods is in one
/// namespace or selects `spec.nodeName=node`; nodes are only read by name,
/// and only `node`. Every request that breaks this is in the error.
pub fn check(requests: &[Request], node: &str) -> Result<(), String> {
    let wide: Vec<String> = requests
        .iter()
        .filter(|r| match (r.resource.as_str(), r.verb.as_str()) {
            ("pods", "list" | "watch") => {
                r.namespace.is_empty() && !r.selects("spec.nodeName", node)
            }
            ("pods", _) => false,
            ("nodes", "list" | "watch") => !r.selects("metadata.name", node),
            ("nodes", _) => r.name != node,
            _ => false,
        })
        .map(|r| format!("{} {}", r.verb, r.uri))
        .collect();
    if wide.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the agent read pods or nodes of the whole cluster (node {node}):\n{}",
            wide.join("\n")
        ))
    }
}

/// The requests grouped by verb and [`Request::shape`], with their
/// counts, as a Markdown table.
pub fn markdown(requests: &[Request]) -> String {
    let mut groups: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in requests {
        *groups.entry((r.verb.clone(), r.shape())).or_default() += 1;
    }
    let mut out = String::from(
        "| verb | request (resourceVersion but 0, timeoutSeconds, continue left out) | count |\n|---|---|---:|\n",
    );
    for ((verb, shape), n) in groups {
        let _ = writeln!(out, "| {verb} | `{shape}` | {n} |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(verb: &str, uri: &str, resource: &str, namespace: &str, source: &str) -> String {
        serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": format!("{verb}{uri}{source}"), "stage": "ResponseComplete",
            "requestURI": uri, "verb": verb, "sourceIPs": [source],
            "objectRef": {"resource": resource, "namespace": namespace, "apiVersion": "v1"},
        })
        .to_string()
    }

    const AGENT: &str = "198.18.0.2";

    fn agent() -> Vec<IpAddr> {
        vec![AGENT.parse().unwrap()]
    }

    #[test]
    fn scoped_requests_pass() {
        let log = [
            line(
                "list",
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-00000&limit=500",
                "pods",
                "",
                AGENT,
            ),
            line(
                "watch",
                "/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dkonnectivity-agent&watch=true&resourceVersion=7",
                "pods",
                "kube-system",
                AGENT,
            ),
            line(
                "watch",
                "/api/v1/nodes?fieldSelector=metadata.name%3Dnode-00000&watch=true",
                "nodes",
                "",
                AGENT,
            ),
            // Somebody else's (the bench's own client) is not the agent's.
            line("list", "/api/v1/pods", "pods", "", "198.18.0.1"),
        ]
        .join("\n");
        let requests = requests_from(&log, &agent());
        assert_eq!(requests.len(), 3);
        assert_eq!(check(&requests, "node-00000"), Ok(()));
        assert!(markdown(&requests).contains(
            "| watch | `/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app=konnectivity-agent&watch=true` | 1 |"
        ));
    }

    #[test]
    fn a_list_of_all_pods_or_nodes_fails() {
        for (uri, resource) in [
            ("/api/v1/pods?limit=500", "pods"),
            ("/api/v1/pods?watch=true&resourceVersion=1", "pods"),
            // Another node's pods are not this node's.
            (
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-00001",
                "pods",
            ),
            ("/api/v1/nodes?limit=500", "nodes"),
        ] {
            let requests = requests_from(&line("list", uri, resource, "", AGENT), &agent());
            let err = check(&requests, "node-00000").expect_err(uri);
            assert!(err.contains(uri), "{err}");
        }
    }
}
