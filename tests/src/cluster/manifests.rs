//! The deployment files as `kubectl kustomize` renders them.

use std::{path::PathBuf, process::Command};

use serde::Deserialize as _;
use serde_yaml::Value;

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// `kubectl kustomize` of a directory of the repository (`deploy/...`):
/// the text and its documents. kubectl comes from `CP_OBSERVER_KUBECTL`.
pub fn kustomize(dir: &str) -> (String, Vec<Value>) {
    let kubectl = std::env::var_os("CP_OBSERVER_KUBECTL")
        .expect("CP_OBSERVER_KUBECTL: run through `cargo xtask test`");
    let out = super::checked(Command::new(kubectl).arg("kustomize").arg(repo(dir)));
    let text = String::from_utf8(out).expect("UTF-8");
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .collect();
    (text, docs)
}

/// The first document of `kind`.
pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}
