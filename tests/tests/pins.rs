//! Pins are checked before they are trusted: a pin directory others can
//! write, a pinned map of a shape no build of the agent makes, a pinned link
//! on another cgroup are refused (the agent exits non-zero with one sentence
//! and attaches nothing); `cp-observer cleanup` does not follow a symbolic
//! link; the flow table gauge is the table's own count, also after a
//! restart. Needs root; run through `cargo xtask test`.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData, MapInfo};
use lab::{
    cluster::agent::{self, Agent},
    cluster::scenario::Lab,
    cluster::topology::{Topology, addrs},
    eventually,
};
use observer_common::flow::{Flow, FlowKey};

/// A pin directory of this test file's own (`tag` keeps tests apart).
fn pin_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/sys/fs/bpf/cp-observer-test-pins-{tag}"));
    agent::cleanup_pins(&dir); // a killed earlier run
    dir
}

fn args(dir: &Path) -> Vec<String> {
    let mut args = Topology::agent_args();
    args.extend(["--pin-dir".to_owned(), dir.display().to_string()]);
    args
}

/// Starts the agent with `args`, which must make it refuse to start: it
/// exits non-zero, its last line names each of `wanted` and says what to
/// do, and no program stays loaded. Returns that line.
fn refused(args: &[String], wanted: &[&str]) -> String {
    let before = agent::loaded_observer_programs();
    let exited = match Agent::try_start(args) {
        Ok(running) => {
            let stderr = running.stderr();
            drop(running);
            panic!("the agent started where it should have refused; stderr:\n{stderr}");
        }
        Err(exited) => exited,
    };
    assert!(!exited.status.success(), "{exited}");
    let last = exited.stderr.trim().lines().last().unwrap_or("").to_owned();
    assert!(last.starts_with("cp-observer: "), "{exited}");
    for w in wanted.iter().chain(&["cp-observer cleanup"]) {
        assert!(last.contains(w), "the refusal should name {w:?}: {last}");
    }
    agent::programs_settle_at(before);
    last
}

fn link_pins(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("link-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Pins this build's state maps in `dir` (no program attached).
fn pin_state_maps(dir: &Path) {
    use observer::{cli::RunArgs, config::Settings, ebpf::Datapath};
    let args = RunArgs {
        control_plane: vec![addrs::CP4.to_string().parse().expect("cidr")],
        pin_dir: Some(dir.to_owned()),
        ..RunArgs::default()
    };
    drop(Datapath::load(&Settings::from_args(&args).expect("settings")).expect("load"));
}

#[test]
fn a_pin_directory_others_can_write_is_refused() {
    let dir = pin_dir("mode");
    std::fs::create_dir(&dir).expect("create the planted directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = dir.display().to_string();
    refused(&args(&dir), &[&path, "writable by others"]);
    assert_eq!(link_pins(&dir), Vec::<String>::new(), "nothing attached");

    // Owned by someone else, even with a strict mode.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
    refused(&args(&dir), &[&path, "owned by uid 65534"]);
    assert_eq!(std::fs::read_dir(&dir).expect("readable").count(), 0);
    std::fs::remove_dir(&dir).expect("remove the planted directory");
}

#[test]
fn a_pinned_map_of_another_shape_is_refused_or_recreated() {
    let dir = pin_dir("maps");
    pin_state_maps(&dir);
    let flows = dir.join("FLOWS");
    let expected_value = size_of::<Flow>() as u32;

    // FLOWS planted as an array (another map type) with the right sizes:
    // the programs would see an empty table, and let everything pass.
    std::fs::remove_file(&flows).expect("FLOWS pinned");
    let planted: Array<MapData, Flow> = Array::create(65536, 0).expect("create an array");
    planted.pin(&flows).expect("plant FLOWS");
    refused(&args(&dir), &["FLOWS", "type"]);
    assert_eq!(link_pins(&dir), Vec::<String>::new(), "nothing attached");

    // A pin others may open for writing.
    std::fs::remove_file(&flows).expect("planted FLOWS");
    pin_state_maps(&dir);
    let filter = dir.join("FLOW_FILTER");
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let path = filter.display().to_string();
    refused(&args(&dir), &[&path, "writable by others"]);
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // FLOWS of another value size (what an upgrade that changed the entry
    // leaves) is never adopted: it is recreated empty, with the table's
    // filter and count.
    std::fs::remove_file(&flows).expect("FLOWS pinned");
    let old: HashMap<MapData, FlowKey, [u8; 72]> =
        HashMap::create(65536, 0).expect("create a hash map");
    old.pin(&flows).expect("plant FLOWS");
    let old_id = MapInfo::from_pin(&flows).expect("planted").id();
    let running = Agent::start(&args(&dir));
    let now = MapInfo::from_pin(&flows).expect("FLOWS pinned");
    assert_ne!(now.id(), old_id, "the planted FLOWS is not adopted");
    assert_eq!(now.value_size(), expected_value);
    assert!(running.stop().success());
    assert!(agent::cleanup_pins(&dir).status.success());
}

#[test]
fn a_pinned_link_on_another_cgroup_is_refused() {
    let dir = pin_dir("links");
    let root = observer::cgroup::resolve(None).expect("a cgroup v2 mount");
    let other = root.join("cp-observer-test-pins");
    if other.exists() {
        std::fs::remove_dir(&other).expect("remove a killed run's cgroup");
    }
    std::fs::create_dir(&other).expect("create a cgroup");
    let before = agent::loaded_observer_programs();

    // An agent told to use another cgroup pins links there.
    let mut elsewhere = args(&dir);
    elsewhere.extend(["--cgroup".to_owned(), other.display().to_string()]);
    assert!(Agent::start(&elsewhere).stop().success());
    assert_eq!(link_pins(&dir).len(), 4);

    // This agent attaches to the root: those links would enforce nothing
    // here, and must not be reported as adopted.
    let other_id = format!(
        "cgroup of id {}",
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&other).expect("the cgroup"))
    );
    refused(
        &args(&dir),
        &["link-", &other_id, &root.display().to_string()],
    );
    assert_eq!(
        agent::loaded_observer_programs(),
        before + agent::PROGRAMS_PER_AGENT,
        "the refused agent changed nothing: the pinned links keep the first agent's programs"
    );

    // A map pinned where a link belongs.
    assert!(agent::cleanup_pins(&dir).status.success());
    pin_state_maps(&dir);
    let planted: Array<MapData, u64> = Array::create(1, 0).expect("create an array");
    planted
        .pin(dir.join("link-ingress"))
        .expect("plant link-ingress");
    refused(&args(&dir), &["link-ingress", "not a link"]);

    assert!(agent::cleanup_pins(&dir).status.success());
    agent::programs_settle_at(before);
    std::fs::remove_dir(&other).expect("remove the test cgroup");
}

#[test]
fn cleanup_does_not_follow_a_symbolic_link() {
    let target = pin_dir("target");
    let link = PathBuf::from("/sys/fs/bpf/cp-observer-test-pins-symlink");
    let _ = std::fs::remove_file(&link);
    pin_state_maps(&target);
    std::os::unix::fs::symlink(&target, &link).expect("plant a symbolic link");

    let out = agent::cleanup_pins(&link);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        target.join("FLOWS").exists(),
        "cleanup followed the link and removed what it points to: {stderr}"
    );
    assert!(!out.status.success(), "cleanup through a link must fail");
    assert!(
        stderr.contains(&link.display().to_string()) && stderr.contains("symbolic link"),
        "{stderr}"
    );
    std::fs::remove_file(&link).expect("remove the link");
    assert!(agent::cleanup_pins(&target).status.success());
}

/// Entries of the pinned `FLOWS` now.
fn table_entries(dir: &Path) -> usize {
    let map = MapData::from_pin(dir.join("FLOWS")).expect("FLOWS pinned");
    let flows: HashMap<MapData, FlowKey, Flow> =
        HashMap::try_from(aya::maps::Map::HashMap(map)).expect("a hash map");
    flows.keys().filter_map(Result::ok).count()
}

/// `cp_observer_flow_table_entries` counts what the table holds, across
/// restarts: connections the previous agent expired are not counted again.
#[test]
fn the_flow_table_gauge_is_the_table_after_a_restart() {
    let dir = pin_dir("gauge");
    let lab = Lab::new("t-pins-gauge");
    let pod = SocketAddr::new(addrs::POD4.into(), 8080);
    let connect = || {
        lab.topo
            .cp
            .run(move || std::net::TcpStream::connect(pod).expect("connect"))
    };
    let gauge = |a: &Agent| a.scrape().sum("cp_observer_flow_table_entries", &[]);

    // Three connections the first agent forgets after a second idle.
    let mut first_args = args(&dir);
    first_args.extend(["--flow-idle-timeout".to_owned(), "1".to_owned()]);
    let first = Agent::start(&first_args);
    let idle: Vec<_> = (0..3).map(|_| connect()).collect();
    eventually(
        Duration::from_secs(10),
        "the idle connections expire",
        || first.scrape().sum("cp_observer_flows_expired_total", &[]) == 3.0,
    );
    assert_eq!(gauge(&first), 0.0);
    assert_eq!(first.kill().code(), None, "SIGKILL");

    // Two live ones, made while no agent runs.
    let live: Vec<_> = (0..2).map(|_| connect()).collect();
    let second = Agent::start(&args(&dir));
    assert_eq!(table_entries(&dir), 2);
    assert_eq!(
        gauge(&second),
        table_entries(&dir) as f64,
        "the gauge after a restart is what the table holds"
    );
    assert!(second.stop().success());
    let third = Agent::start(&args(&dir));
    assert_eq!(gauge(&third), 2.0, "and after another");
    drop((idle, live));
    assert!(third.stop().success());
    assert!(agent::cleanup_pins(&dir).status.success());
}
