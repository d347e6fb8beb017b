//! Pinning under bpffs, so that counting and enforcement outlive the agent.
//!
//! What is pinned under `--pin-dir` (default `/sys/fs/bpf/cp-observer`):
//! - the four cgroup links (`link-ingress`, `link-egress`, `link-connect4`,
//!   `link-connect6`): the attachment itself, which keeps the programs
//!   running while no agent does;
//! - the state maps ([`STATE_MAPS`]): the flow table, the counters and the
//!   event ring buffer, so counters continue and events raised while the
//!   agent was down are read by the next one.
//!
//! Each start loads fresh programs with fresh configuration maps (roles,
//! endpoints, ports, policy) and the pinned state maps, then swaps the new
//! programs into the pinned links with `BPF_LINK_UPDATE`: one atomic switch
//! per hook, never a second attachment, and a changed policy takes effect
//! with the new programs. `cp-observer cleanup` removes it all.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use aya_obj::generated::bpf_cmd;

use crate::sys;
use observer_common::{
    counters::{BYTE_ENTRIES, CONNECTION_ENTRIES, STAT_ENTRIES},
    event::EVENTS_BYTES,
    flow::{FILTER_SLOTS, Filter, Flow, FlowKey, flow_count},
    policy::VIOLATION_ENTRIES,
};

/// Default `--pin-dir`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/cp-observer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A pinned state map and the shape this build expects of it.
pub struct StateMap {
    /// Map name, also its pin file name.
    pub name: &'static str,
    key_size: u32,
    value_size: u32,
    /// `None`: the flow table, whose capacity comes from the settings.
    max_entries: Option<u32>,
}

/// The maps whose contents must survive a restart. The first four go
/// together: `FLOW_FILTER` and `FLOW_COUNT` count the entries of `FLOWS`,
/// and `FLOW_FILTER` marks those of `HALF_OPEN`.
pub const STATE_MAPS: [StateMap; 9] = [
    StateMap {
        name: "FLOWS",
        key_size: size_of::<FlowKey>() as u32,
        value_size: size_of::<Flow>() as u32,
        max_entries: None,
    },
    StateMap {
        name: "HALF_OPEN",
        key_size: size_of::<FlowKey>() as u32,
        value_size: size_of::<Flow>() as u32,
        max_entries: None,
    },
    StateMap {
        name: "FLOW_FILTER",
        key_size: 4,
        value_size: size_of::<Filter>() as u32,
        max_entries: Some(FILTER_SLOTS),
    },
    StateMap {
        name: "FLOW_COUNT",
        key_size: 4,
        value_size: 8,
        max_entries: Some(flow_count::WORDS),
    },
    StateMap {
        name: "CONNECTIONS",
        key_size: 4,
        value_size: 8,
        max_entries: Some(CONNECTION_ENTRIES as u32),
    },
    StateMap {
        name: "BYTES",
        key_size: 4,
        value_size: 8,
        max_entries: Some(BYTE_ENTRIES as u32),
    },
    StateMap {
        name: "STATS",
        key_size: 4,
        value_size: 8,
        max_entries: Some(STAT_ENTRIES as u32),
    },
    StateMap {
        name: "VIOLATIONS",
        key_size: 4,
        value_size: 8,
        max_entries: Some(VIOLATION_ENTRIES as u32),
    },
    StateMap {
        name: "EVENTS",
        key_size: 0,
        value_size: 0,
        max_entries: Some(EVENTS_BYTES),
    },
];

/// How many of [`STATE_MAPS`], from the first, are the flow state.
const FLOW_STATE: usize = 4;

/// The pin of a link.
pub fn link_path(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link-{program}"))
}

/// The usual bpffs mount point.
const BPFFS: &str = "/sys/fs/bpf";

/// Creates `dir` if needed and checks it is on a bpf filesystem. A `dir`
/// under /sys/fs/bpf gets bpffs mounted there first if nothing is (as
/// systemd does at boot on most distributions, and as other agents do).
pub fn prepare(dir: &Path) -> io::Result<()> {
    if dir.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS))? {
        let (src, target) = (c"bpf", c"/sys/fs/bpf");
        // SAFETY: NUL-terminated constant strings, no mount data.
        if unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        } != 0
        {
            let e = io::Error::last_os_error();
            return Err(io::Error::other(format!(
                "no bpf filesystem at {BPFFS}, and mounting one failed: {e}"
            )));
        }
        tracing::info!("mounted a bpf filesystem at {BPFFS}");
    }
    std::fs::create_dir_all(dir)?;
    if !is_bpffs(dir)? {
        return Err(io::Error::other(
            "not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)",
        ));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(sys::fs_type(path)? == BPF_FS_MAGIC)
}

/// Removes pinned state maps whose shape differs from what this build and
/// `flow_capacity` need (an upgrade that changed a map, a new capacity):
/// they are recreated empty. Returns the names removed.
///
/// The flow tables, their filter and their count are one piece of state
/// (the first [`FLOW_STATE`] maps): if one is missing or dropped, so are
/// the others (a filter that undercounts its table would hide tracked
/// connections).
pub fn drop_incompatible(dir: &Path, flow_capacity: u32) -> io::Result<Vec<&'static str>> {
    let mut dropped = Vec::new();
    let mut flows_whole = true;
    for (i, m) in STATE_MAPS.iter().enumerate() {
        let path = dir.join(m.name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            flows_whole &= i >= FLOW_STATE;
            continue;
        };
        let max = m.max_entries.unwrap_or(flow_capacity);
        if (info.key_size(), info.value_size(), info.max_entries())
            != (m.key_size, m.value_size, max)
        {
            std::fs::remove_file(&path)?;
            dropped.push(m.name);
            flows_whole &= i >= FLOW_STATE;
        }
    }
    if !flows_whole {
        for m in &STATE_MAPS[..FLOW_STATE] {
            if std::fs::remove_file(dir.join(m.name)).is_ok() && !dropped.contains(&m.name) {
                dropped.push(m.name);
            }
        }
    }
    Ok(dropped)
}

/// Opens a pinned object (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let fd = sys::bpf(bpf_cmd::BPF_OBJ_GET, |attr| {
        attr.__bindgen_anon_4.pathname = c.as_ptr() as u64;
    })?;
    // SAFETY: the kernel returned a new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Atomically replaces the program of a link (`BPF_LINK_UPDATE`).
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    sys::bpf(bpf_cmd::BPF_LINK_UPDATE, |attr| {
        attr.link_update.link_fd = link.as_raw_fd() as u32;
        attr.link_update.__bindgen_anon_1.new_prog_fd = program.as_raw_fd() as u32;
    })
    .map(|_| ())
}

/// Detaches the pinned links and removes every pin under `dir`.
pub fn cleanup(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in entries {
        // Removing a link's last pin (no process holds it) detaches it.
        std::fs::remove_file(entry?.path())?;
        removed += 1;
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}
