//! `cargo xtask cluster up|down|status`: what the real node needs on this
//! machine (containerd, runc, the CNI plugins, the Kubernetes build, the
//! images built from `deploy/Dockerfile`), then the `cp-observer-cluster`
//! program of the tests crate, which brings the node up (`lab::node`).

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{cargo, command::run_checked, image, kube, toolchain};

/// Debian packages the node runs on: the container runtime, the CNI
/// plugins (`/usr/lib/cni`), and what kube-proxy calls.
const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "iproute2",
];

/// Everything the node and its tests need, as environment variables for
/// `cp-observer-cluster` and the node tests.
pub fn ensure() -> Result<Vec<(String, String)>> {
    toolchain::ensure_debian_packages(PACKAGES)?;
    let kube = kube::ensure()?;
    let images = image::ensure(&kube.bin("pause"))?;
    Ok(env(&kube, &images))
}

/// The environment `lab::node::{Binaries, Images}::from_env` read.
fn env(kube: &kube::Binaries, images: &image::Images) -> Vec<(String, String)> {
    let path = |p: &Path| p.display().to_string();
    let mut vars: Vec<(String, String)> = kube
        .env()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), path(v)))
        .collect();
    vars.extend([
        ("CP_OBSERVER_KUBE_DIR".to_owned(), path(&kube.dir)),
        ("CP_OBSERVER_NODE_IMAGES".to_owned(), path(&images.dir)),
        ("CP_OBSERVER_IMAGE_AGENT".to_owned(), images.agent.clone()),
        (
            "CP_OBSERVER_IMAGE_AGENT_NEXT".to_owned(),
            images.agent_next.clone(),
        ),
        ("CP_OBSERVER_IMAGE_WEB".to_owned(), images.web.clone()),
        ("CP_OBSERVER_IMAGE_TLS".to_owned(), images.tls.clone()),
        ("CP_OBSERVER_IMAGE_PAUSE".to_owned(), images.pause.clone()),
    ]);
    vars
}

/// Runs `cp-observer-cluster args` with what it needs. `down` and
/// `status` build nothing.
pub fn run(args: &[String]) -> Result<()> {
    let vars = if args.first().is_some_and(|a| a == "up") {
        ensure()?
    } else {
        toolchain::ensure_debian_packages(PACKAGES)?;
        let kube = kube::ensure()?;
        let mut vars: Vec<(String, String)> = kube
            .env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.display().to_string()))
            .collect();
        vars.push((
            "CP_OBSERVER_KUBE_DIR".to_owned(),
            kube.dir.display().to_string(),
        ));
        vars
    };
    let program = cargo::build_bin("cp-observer-tests", "cp-observer-cluster")?;
    run_checked(Command::new(program).envs(vars).args(args))
}
