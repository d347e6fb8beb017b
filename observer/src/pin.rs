//! Pinning under bpffs, so that counting and enforcement outlive the agent.
//!
//! What is pinned under `--pin-dir` (default `/sys/fs/bpf/cp-observer`):
//! - the four cgroup links (`link-ingress`, `link-egress`, `link-connect4`,
//!   `link-connect6`): the attachment itself, which keeps the programs
//!   running while no agent does;
//! - the state maps ([`STATE_MAPS`]): the flow table, the counters and the
//!   event and request-head ring buffers, so counters continue and events
//!   raised while the agent was down are read by the next one.
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
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
        },
    },
    path::{Path, PathBuf},
};

use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_link_type, bpf_map_type};

use crate::sys;

/// Default `--pin-dir`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/cp-observer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The maps whose contents must survive a restart, by name (also their pin
/// file names). The first four go together: `FLOW_FILTER` and
/// `FLOW_COUNT` count the entries of `FLOWS`, and `FLOW_FILTER` marks those
/// of `HALF_OPEN`. What shape each must have comes from the kernel object
/// (`ebpf::state_map_shapes`).
pub const STATE_MAPS: [&str; 10] = [
    "FLOWS",
    "HALF_OPEN",
    "FLOW_FILTER",
    "FLOW_COUNT",
    "CONNECTIONS",
    "BYTES",
    "STATS",
    "VIOLATIONS",
    "EVENTS",
    "HEADS",
];

/// What a map is, as `BPF_OBJ_GET_INFO_BY_FD` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity (bytes for a ring buffer).
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
}

/// Why the pins cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Something under (or above) `--pin-dir` is not what this agent would
    /// have made, or others could have changed it: it is not used.
    #[error(
        "{what}: refused, nothing was attached; fix it, or remove the pins with `cp-observer cleanup --pin-dir {}`",
        dir.display()
    )]
    Untrusted {
        /// The pin directory.
        dir: PathBuf,
        /// What is wrong, naming the path.
        what: String,
    },
    /// A system call failed.
    #[error("--pin-dir {}: {source}", dir.display())]
    Io {
        /// The pin directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn untrusted(dir: &Path, what: String) -> PinError {
    PinError::Untrusted {
        dir: dir.to_owned(),
        what,
    }
}

fn io_err(dir: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        dir: dir.to_owned(),
        source,
    }
}

/// How many of [`STATE_MAPS`], from the first, are the flow state.
const FLOW_STATE: usize = 4;

/// The pin of a link.
pub fn link_path(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link-{program}"))
}

/// The usual bpffs mount point.
const BPFFS: &str = "/sys/fs/bpf";

/// Creates `dir` if needed (mode 0700), checks it is on a bpf filesystem
/// and that it can be trusted ([`check_dir`]). A `dir` under /sys/fs/bpf
/// gets bpffs mounted there first if nothing is (as systemd does at boot on
/// most distributions, and as other agents do), with mode 0700.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    if dir.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)).map_err(io_err(dir))? {
        let (src, target, data) = (c"bpf", c"/sys/fs/bpf", c"mode=0700");
        // SAFETY: NUL-terminated constant strings.
        if unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        } != 0
        {
            let e = io::Error::last_os_error();
            return Err(io_err(dir)(io::Error::other(format!(
                "no bpf filesystem at {BPFFS}, and mounting one failed: {e}"
            ))));
        }
        tracing::info!("mounted a bpf filesystem at {BPFFS} (mode 0700)");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    check_dir(dir)?;
    if !is_bpffs(dir).map_err(io_err(dir))? {
        return Err(io_err(dir)(io::Error::other(
            "not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)",
        )));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(sys::fs_type(path)? == BPF_FS_MAGIC)
}

/// Root, or whoever this agent runs as.
fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// What is wrong with the owner and mode of `what` (a directory or a pin
/// file), if anything.
fn owner_and_mode(what: &str, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if !trusted_owner(meta.uid()) {
        return Some(format!(
            "{what} {} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    let writable = if mode & 0o002 != 0 {
        "others"
    } else if mode & 0o020 != 0 {
        "its group"
    } else {
        return None;
    };
    Some(format!(
        "{what} {} is writable by {writable} (mode {mode:04o})",
        path.display()
    ))
}

/// Opens directory `dir` without following a symbolic link: `ELOOP`
/// when it is one (with `O_DIRECTORY`, Linux says `ENOTDIR`).
fn open_dir_nofollow(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| {
            let symlink = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
            if symlink {
                io::Error::from_raw_os_error(libc::ELOOP)
            } else {
                e
            }
        })
}

/// Checks that `dir` is a directory (not a symbolic link) owned by root
/// (or this agent's user) that no one else can write, and that no one else
/// can replace it: each directory above it is root's and writable by no
/// one else unless sticky (`/sys/fs/bpf` is often mode 1777).
pub fn check_dir(dir: &Path) -> Result<(), PinError> {
    let file = open_dir_nofollow(dir).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => untrusted(
            dir,
            format!("pin directory {} is a symbolic link", dir.display()),
        ),
        Some(libc::ENOTDIR) => untrusted(
            dir,
            format!("pin directory {} is not a directory", dir.display()),
        ),
        _ => io_err(dir)(e),
    })?;
    let meta = file.metadata().map_err(io_err(dir))?;
    if let Some(what) = owner_and_mode("pin directory", dir, &meta) {
        return Err(untrusted(dir, what));
    }
    for above in dir
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
    {
        let meta = std::fs::metadata(above).map_err(io_err(dir))?;
        let sticky = meta.mode() & libc::S_ISVTX != 0;
        let open = meta.mode() & 0o022 != 0 && !sticky;
        if !trusted_owner(meta.uid()) || open {
            let what = owner_and_mode("directory", above, &meta).unwrap_or_default();
            return Err(untrusted(
                dir,
                format!("{what}, above pin directory {}", dir.display()),
            ));
        }
    }
    Ok(())
}

/// Checks that the pin at `path` is a file (not a symbolic link to a pin
/// elsewhere) owned by root that no one else can open for writing, and
/// opens it (`BPF_OBJ_GET`). `None` when there is no pin.
fn open_pin(dir: &Path, path: &Path) -> Result<Option<OwnedFd>, PinError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir)(e)),
    };
    if !meta.file_type().is_file() {
        return Err(untrusted(
            dir,
            format!("pin {} is not a pinned object", path.display()),
        ));
    }
    if let Some(what) = owner_and_mode("pin", path, &meta) {
        return Err(untrusted(dir, what));
    }
    obj_get(path).map(Some).map_err(io_err(dir))
}

/// What kind of BPF object `fd` is: "map", "link", "prog".
fn kind(fd: BorrowedFd<'_>) -> io::Result<String> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let target = target.to_string_lossy();
    Ok(match target.strip_prefix("anon_inode:") {
        Some("bpf-map") => "map".into(),
        // "bpf-link" since Linux 6.x.
        Some("bpf_link" | "bpf-link") => "link".into(),
        Some("bpf-prog") => "program".into(),
        _ => target.into_owned(),
    })
}

/// `BPF_MAP_TYPE_HASH` → `hash`.
fn map_type_name(t: u32) -> String {
    bpf_map_type::try_from(t).map_or_else(
        |_| format!("type {t}"),
        |t| {
            format!("{t:?}")
                .trim_start_matches("BPF_MAP_TYPE_")
                .to_lowercase()
        },
    )
}

/// A pinned state map that is not used: recreated empty.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The map.
    pub name: &'static str,
    /// Why, e.g. "value size 72, expected 80"; empty when it goes with
    /// the rest of the flow state.
    pub why: String,
}

/// Checks the pinned state maps under `dir` against `expected` (the shape
/// of each of [`STATE_MAPS`], in that order) before anything uses them.
///
/// - A pin that is not a map, or a map of another type or other flags,
///   is refused: no build of this agent makes it.
/// - A map whose key size, value size or capacity differ (an upgrade that
///   changed a map, a new `--flow-table-capacity`) is removed, to be
///   recreated empty; returned with the field that differs. The flow
///   tables, their filter and their count are one piece of state (the
///   first [`FLOW_STATE`] maps): if one is missing or dropped, so are the
///   others (a filter that undercounts its table would hide tracked
///   connections).
///
/// Nothing is removed unless every pin passes.
pub fn check_maps(
    dir: &Path,
    expected: &[Shape; STATE_MAPS.len()],
) -> Result<Vec<Dropped>, PinError> {
    let mut dropped = Vec::new();
    let mut flows_whole = true;
    for (i, (name, want)) in STATE_MAPS.iter().zip(expected).enumerate() {
        let path = dir.join(name);
        let Some(fd) = open_pin(dir, &path)? else {
            flows_whole &= i >= FLOW_STATE;
            continue;
        };
        let kind = kind(fd.as_fd()).map_err(io_err(dir))?;
        if kind != "map" {
            return Err(untrusted(
                dir,
                format!("pin {} is a {kind}, not a map", path.display()),
            ));
        }
        let info = sys::map_info(fd.as_fd()).map_err(io_err(dir))?;
        let found = Shape {
            map_type: info.type_,
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            flags: info.map_flags,
        };
        if found.map_type != want.map_type {
            return Err(untrusted(
                dir,
                format!(
                    "pinned map {} has map type {}, expected {}",
                    path.display(),
                    map_type_name(found.map_type),
                    map_type_name(want.map_type)
                ),
            ));
        }
        if found.flags != want.flags {
            return Err(untrusted(
                dir,
                format!(
                    "pinned map {} has map flags {:#x}, expected {:#x}",
                    path.display(),
                    found.flags,
                    want.flags
                ),
            ));
        }
        let why = [
            ("key size", found.key_size, want.key_size),
            ("value size", found.value_size, want.value_size),
            ("max entries", found.max_entries, want.max_entries),
        ]
        .iter()
        .filter(|(_, f, w)| f != w)
        .map(|(field, f, w)| format!("{field} {f}, expected {w}"))
        .collect::<Vec<_>>()
        .join(", ");
        if !why.is_empty() {
            dropped.push(Dropped { name, why });
            flows_whole &= i >= FLOW_STATE;
        }
    }
    if !flows_whole {
        for name in &STATE_MAPS[..FLOW_STATE] {
            if dir.join(name).exists() && !dropped.iter().any(|d| d.name == *name) {
                dropped.push(Dropped {
                    name,
                    why: String::new(),
                });
            }
        }
    }
    for d in &dropped {
        std::fs::remove_file(dir.join(d.name)).map_err(io_err(dir))?;
    }
    Ok(dropped)
}

/// Opens the pinned link of program `name` under `dir`, if there is one,
/// after checking that it is a cgroup link of `attach_type` attached to
/// the cgroup whose directory is `cgroup` (a link on another cgroup would
/// enforce nothing here).
pub fn check_link(
    dir: &Path,
    name: &str,
    attach_type: bpf_attach_type,
    cgroup: &std::fs::File,
    cgroup_path: &Path,
) -> Result<Option<OwnedFd>, PinError> {
    let path = link_path(dir, name);
    let Some(fd) = open_pin(dir, &path)? else {
        return Ok(None);
    };
    let refuse = |what: String| Err(untrusted(dir, format!("pin {} {what}", path.display())));
    let kind = kind(fd.as_fd()).map_err(io_err(dir))?;
    if kind != "link" {
        return refuse(format!("is a {kind}, not a link"));
    }
    let info = sys::link_info(fd.as_fd()).map_err(io_err(dir))?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 {
        return refuse(format!(
            "is a link of type {}, not a cgroup link",
            info.type_
        ));
    }
    // SAFETY: the union member of a cgroup link.
    let (cgroup_id, found_type) = unsafe {
        let c = info.__bindgen_anon_1.cgroup;
        (c.cgroup_id, c.attach_type)
    };
    if found_type != attach_type as u32 {
        let found = bpf_attach_type::try_from(found_type)
            .map_or_else(|_| found_type.to_string(), |t| format!("{t:?}"));
        return refuse(format!(
            "attaches as {found}, program {name} as {attach_type:?}"
        ));
    }
    // A cgroup v2 directory's inode number is the cgroup's id (64-bit
    // kernfs inode numbers, Linux 5.5+).
    let want = cgroup.metadata().map_err(io_err(dir))?.ino();
    if cgroup_id != want {
        return refuse(format!(
            "is attached to the cgroup of id {cgroup_id}, not to {} (id {want}) as this agent is told",
            cgroup_path.display()
        ));
    }
    Ok(Some(fd))
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

/// Detaches the pinned links and removes every pin under `dir`, then `dir`.
/// A `dir` that is a symbolic link is refused, not followed: the pins are
/// removed from the directory opened, never from wherever a link swapped
/// in meanwhile points.
pub fn cleanup(dir: &Path) -> io::Result<usize> {
    let opened = match open_dir_nofollow(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::other(format!(
                "{} is a symbolic link: not followed (remove the link itself, or name the directory)",
                dir.display()
            )));
        }
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    // The entries of the directory opened, whatever `dir` names now.
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", opened.as_raw_fd()))? {
        let name = CString::new(entry?.file_name().as_bytes()).map_err(io::Error::other)?;
        // Removing a link's last pin (no process holds it) detaches it.
        // SAFETY: a directory fd we hold and a NUL-terminated name.
        if unsafe { libc::unlinkat(opened.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        removed += 1;
    }
    // rmdir does not follow a final symbolic link either.
    std::fs::remove_dir(dir)?;
    Ok(removed)
}
