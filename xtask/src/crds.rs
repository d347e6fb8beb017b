//! The Prometheus Operator's PodMonitor and PrometheusRule CRDs, for the
//! server-side check of `deploy/monitoring` (no registry ships the CRD
//! files as such).
//!
//! The npm package `@kubernetes-models/prometheus-operator` [`VERSION`] was
//! generated from the operator's CRD files (its `package.json` names the
//! release) and carries each kind's `openAPIV3Schema` as a JSON literal in
//! `monitoring.coreos.com/v1/<Kind>.js` (later versions carry compiled
//! validators instead). Its generator turned each schema into plain JSON
//! Schema; [`structural`] turns it back into the structural schema an
//! `apiextensions.k8s.io/v1` CRD needs (Kubernetes 1.20). The tarball is
//! fetched once with `npm pack` into `~/.cache/cp-observer/npm/` (a file
//! test afterwards); the CRDs are assembled on every run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value, json};

use crate::{command::run_checked, toolchain};

/// The environment variable through which the tests find the CRDs.
pub const ENV: &str = "CP_OBSERVER_PROMETHEUS_CRDS";
const PACKAGE: &str = "@kubernetes-models/prometheus-operator";
/// The last version that carries the schemas as data.
const VERSION: &str = "4.0.0";
/// `sha256sum` of `npm pack`'s tarball of [`VERSION`].
const SHA256: &str = "ba02343671d84921cc03f67f56f354fe7a791ff809a59e80edda8d51a1196ee5";
const GROUP: &str = "monitoring.coreos.com";

/// A kind and its names, as the operator's CRD declares them.
struct Kind {
    kind: &'static str,
    plural: &'static str,
    short: &'static str,
}

const KINDS: [Kind; 2] = [
    Kind {
        kind: "PodMonitor",
        plural: "podmonitors",
        short: "pmon",
    },
    Kind {
        kind: "PrometheusRule",
        plural: "prometheusrules",
        short: "promrule",
    },
];

/// Fetches the package if it is not cached, assembles the CRDs and writes
/// them (a `List`) to a file; returns its path.
pub fn ensure() -> Result<PathBuf> {
    let tarball = fetch()?;
    let operator = operator_version(&member(&tarball, "package/package.json")?)
        .with_context(|| format!("{}: package/package.json", tarball.display()))?;
    let mut items = Vec::new();
    for kind in &KINDS {
        let path = format!("package/{GROUP}/v1/{}.js", kind.kind);
        let schema = schema_literal(&member(&tarball, &path)?)
            .and_then(|s| openapi_schema(&s))
            .with_context(|| format!("{}: {path}", tarball.display()))?;
        items.push(crd(kind, &operator, schema));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let dir = toolchain::cache_dir("prometheus-operator-crds")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join(format!("crds-{VERSION}.json"));
    // Written whole, then renamed: another run may be reading it.
    let tmp = dir.join(format!(".crds-{}.json", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(&list)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}

/// The package's tarball, fetched with `npm pack` and checked against
/// [`SHA256`] if it is not cached.
fn fetch() -> Result<PathBuf> {
    let dir = toolchain::cache_dir("npm")?;
    let tarball = dir.join(format!(
        "kubernetes-models-prometheus-operator-{VERSION}.tgz"
    ));
    if tarball.exists() {
        return Ok(tarball);
    }
    if toolchain::which("npm").is_none() {
        toolchain::ensure_debian_packages(&["npm"])?;
    }
    let tmp = dir.join(format!("tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    run_checked(
        Command::new("npm")
            .args(["pack", "--silent", &format!("{PACKAGE}@{VERSION}")])
            .arg("--pack-destination")
            .arg(&tmp)
            .stdout(Stdio::null()),
    )?;
    let packed = tmp.join(tarball.file_name().expect("a file name"));
    let sum = sha256(&packed)?;
    if sum != SHA256 {
        bail!(
            "{}: sha256 {sum}, not the pinned {SHA256}",
            packed.display()
        );
    }
    std::fs::rename(&packed, &tarball)
        .with_context(|| format!("cannot move {} into place", packed.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(tarball)
}

fn sha256(file: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("cannot run sha256sum")?;
    anyhow::ensure!(out.status.success(), "sha256sum {} failed", file.display());
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// One file of the tarball.
fn member(tarball: &Path, path: &str) -> Result<String> {
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(tarball)
        .arg(path)
        .output()
        .context("cannot run tar")?;
    anyhow::ensure!(
        out.status.success(),
        "{} has no {path}: {}",
        tarball.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).with_context(|| format!("{path} is not UTF-8"))
}

/// The operator release the package was generated from: the one every
/// CRD file in its `crd-generate` input names (`.../prometheus-operator/vX.Y.Z/...`).
fn operator_version(package_json: &str) -> Result<String> {
    let package: Value = serde_json::from_str(package_json).context("not JSON")?;
    anyhow::ensure!(
        package["version"] == VERSION,
        "version {}, not {VERSION}",
        package["version"]
    );
    let inputs = package["crd-generate"]["input"]
        .as_array()
        .context("no crd-generate input")?;
    let mut versions = inputs.iter().map(|url| {
        let url = url.as_str().unwrap_or_default();
        url.split_once("/prometheus-operator/prometheus-operator/")
            .and_then(|(_, rest)| rest.split('/').next())
            .filter(|v| v.starts_with('v'))
            .map(str::to_owned)
            .with_context(|| format!("crd-generate input {url} names no operator release"))
    });
    let first = versions.next().context("no crd-generate input")??;
    for v in versions {
        let v = v?;
        anyhow::ensure!(
            v == first,
            "crd-generate inputs of two releases: {first}, {v}"
        );
    }
    Ok(first)
}

/// The JSON object after `const schema = ` in a generated `.js` file.
fn schema_literal(js: &str) -> Result<Value> {
    let start =
        js.find("const schema = ").context("no `const schema = `")? + "const schema = ".len();
    let len = js[start..]
        .find("\n};")
        .context("no end of the schema literal")?
        + "\n}".len();
    serde_json::from_str(&js[start..start + len]).context("the schema literal is not JSON")
}

/// The CRD's `openAPIV3Schema` from the generated schema of a whole object:
/// `apiVersion` and `kind` back to plain strings (the generator added an
/// enum and made them required), `metadata` to `type: object` (a CRD may
/// not describe it; the generator put a `$ref` to `ObjectMeta` there), and
/// the rest made [`structural`].
fn openapi_schema(generated: &Value) -> Result<Value> {
    let mut root = generated.clone();
    let top = root
        .as_object_mut()
        .context("the schema is not an object")?;
    let props = top
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .context("the schema has no properties")?;
    for field in ["apiVersion", "kind"] {
        anyhow::ensure!(
            props.get(field).is_some_and(|p| p["type"] == "string"),
            "`{field}` is not a string"
        );
        props.insert(field.to_owned(), json!({"type": "string"}));
    }
    props.remove("metadata").context("no `metadata`")?;
    if let Some(Value::Array(required)) = top.get_mut("required") {
        required.retain(|r| r != "apiVersion" && r != "kind");
    }
    top.entry("type").or_insert(json!("object"));
    let mut schema = structural(&root, "")?;
    schema["properties"]["metadata"] = json!({"type": "object"});
    Ok(schema)
}

/// Undoes what the package's generator did to a schema, so that
/// Kubernetes 1.20 takes it as structural:
/// - `nullable: true` on every optional field goes (the operator's CRDs
///   have none), and so does the `oneOf: [X, {type: null}]` it wraps
///   around fields without a type: X is the schema;
/// - `anyOf: [{type: integer}, {type: string}]` is an IntOrString: it gets
///   back the `x-kubernetes-int-or-string: true` the generator dropped;
/// - an empty `properties` (the generator adds one to every object, maps
///   included) goes.
///
/// Anything else is kept only if it is a validation keyword a 1.20 CRD
/// takes as structural; any other keyword, a `$ref`, or an object with
/// neither properties nor additionalProperties (whose
/// `x-kubernetes-preserve-unknown-fields` the generator may have dropped)
/// is an error naming where it is.
fn structural(schema: &Value, path: &str) -> Result<Value> {
    let at = || if path.is_empty() { "." } else { path };
    let node = schema
        .as_object()
        .with_context(|| format!("{}: a schema that is not an object", at()))?;
    if let (1, Some(Value::Array(alts))) = (node.len(), node.get("oneOf")) {
        if let [x, null] = alts.as_slice() {
            if *null == json!({"type": "null"}) {
                return structural(x, path);
            }
        }
    }
    let mut out = Map::new();
    for (key, value) in node {
        match key.as_str() {
            "nullable" => {}
            "type" | "format" | "enum" | "pattern" | "default" | "description" | "required"
            | "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf"
            | "minLength" | "maxLength" | "minItems" | "maxItems" | "uniqueItems"
            | "minProperties" | "maxProperties" => {
                out.insert(key.clone(), value.clone());
            }
            "properties" => {
                let props = value
                    .as_object()
                    .with_context(|| format!("{}: properties is not an object", at()))?;
                let mut new = Map::new();
                for (name, prop) in props {
                    new.insert(name.clone(), structural(prop, &format!("{path}.{name}"))?);
                }
                if !new.is_empty() {
                    out.insert(key.clone(), Value::Object(new));
                }
            }
            "items" => {
                out.insert(key.clone(), structural(value, &format!("{path}[]"))?);
            }
            "additionalProperties" => {
                let value = match value {
                    Value::Bool(_) => value.clone(),
                    _ => structural(value, &format!("{path}.*"))?,
                };
                out.insert(key.clone(), value);
            }
            "anyOf" if *value == json!([{"type": "integer"}, {"type": "string"}]) => {
                out.insert(key.clone(), value.clone());
                out.insert("x-kubernetes-int-or-string".to_owned(), Value::Bool(true));
            }
            "$ref" => bail!("{}: an unresolved $ref to {value}", at()),
            _ => bail!("{}: `{key}` is not a structural schema keyword", at()),
        }
    }
    if out.get("type") == Some(&json!("object"))
        && !out.contains_key("properties")
        && !out.contains_key("additionalProperties")
    {
        bail!(
            "{}: an object without properties (did the operator keep its unknown fields?)",
            at()
        );
    }
    Ok(Value::Object(out))
}

/// The `apiextensions.k8s.io/v1` CRD of `kind` with `schema`.
fn crd(kind: &Kind, operator: &str, schema: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{GROUP}", kind.plural),
            "annotations": {
                "operator.prometheus.io/version": operator.trim_start_matches('v'),
                "cp-observer/assembled-from": format!("{PACKAGE}@{VERSION}"),
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "categories": ["prometheus-operator"],
                "kind": kind.kind,
                "listKind": format!("{}List", kind.kind),
                "plural": kind.plural,
                "shortNames": [kind.short],
                "singular": kind.kind.to_lowercase(),
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{openapi_schema, operator_version, schema_literal, structural};

    #[test]
    fn literal() {
        let js =
            "const schemaId = \"x\";\nconst schema = {\n    \"type\": \"object\"\n};\nclass X {}\n";
        assert_eq!(schema_literal(js).unwrap(), json!({"type": "object"}));
        assert!(schema_literal("export const validate = validate1;").is_err());
    }

    #[test]
    fn operator_release() {
        let url = |f: &str| {
            format!(
                "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/v0.57.0/example/prometheus-operator-crd-full/{f}"
            )
        };
        let package =
            |inputs: &[String]| json!({"version": "4.0.0", "crd-generate": {"input": inputs}});
        let ok = package(&[url("a.yaml"), url("b.yaml")]).to_string();
        assert_eq!(operator_version(&ok).unwrap(), "v0.57.0");
        let mixed = package(&[url("a.yaml"), url("b.yaml").replace("v0.57.0", "v0.58.0")]);
        assert!(operator_version(&mixed.to_string()).is_err());
        let other = json!({"version": "5.0.1", "crd-generate": {"input": [url("a.yaml")]}});
        assert!(operator_version(&other.to_string()).is_err());
    }

    #[test]
    fn undoes_the_generator() {
        let generated = json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string", "enum": ["monitoring.coreos.com/v1"]},
                "kind": {"type": "string", "enum": ["PodMonitor"]},
                "metadata": {"oneOf": [{"$ref": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"}, {"type": "null"}]},
                "spec": {
                    "type": "object",
                    "properties": {
                        "port": {"oneOf": [{"anyOf": [{"type": "integer"}, {"type": "string"}]}, {"type": "null"}]},
                        "labels": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}, "nullable": true},
                        "action": {"type": "string", "enum": ["replace", "keep"], "default": "replace", "nullable": true},
                    },
                },
            },
            "required": ["spec", "apiVersion", "kind"],
        });
        assert_eq!(
            openapi_schema(&generated).unwrap(),
            json!({
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": {
                        "type": "object",
                        "properties": {
                            "port": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "action": {"type": "string", "enum": ["replace", "keep"], "default": "replace"},
                        },
                    },
                },
                "required": ["spec"],
            })
        );
    }

    #[test]
    fn refuses_what_it_cannot_vouch_for() {
        let err = |s| format!("{:#}", structural(&s, "").unwrap_err());
        let e = err(json!({"type": "object", "properties": {"a": {"$ref": "#/x"}}}));
        assert!(e.contains(".a: an unresolved $ref"), "{e}");
        let e =
            err(json!({"type": "object", "properties": {"a": {"type": "string", "$schema": "x"}}}));
        assert!(e.contains(".a: `$schema`"), "{e}");
        let e = err(
            json!({"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}),
        );
        assert!(e.contains(".a: an object without properties"), "{e}");
        let e = err(
            json!({"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "boolean"}]}}),
        );
        assert!(e.contains("[]: `anyOf`"), "{e}");
    }
}
