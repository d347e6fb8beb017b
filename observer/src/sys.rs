//! Thin wrappers over the few system calls the agent makes itself (what
//! aya and std do not expose).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_map_info};

/// The `f_type` of the filesystem holding `path` (`statfs(2)`).
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded and filled the buffer.
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's type differs between libcs"
    )]
    Ok(unsafe { st.assume_init() }.f_type as i64)
}

/// `bpf(cmd, attr)` with an attribute union of zeros that `fill` sets
/// the command's fields of: the kernel refuses non-zero bytes in fields it
/// does not expect, and accepts a union longer than its own if the rest is
/// zero.
pub fn bpf(cmd: bpf_cmd, fill: impl FnOnce(&mut bpf_attr)) -> io::Result<i64> {
    // SAFETY: all zeros is a valid `bpf_attr` (plain integers).
    let mut attr = unsafe { std::mem::zeroed::<bpf_attr>() };
    fill(&mut attr);
    // SAFETY: `attr` is a live, fully initialised `bpf_attr` of that size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_ref(&attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a map (the caller knows `fd` is one).
pub fn map_info(fd: BorrowedFd<'_>) -> io::Result<bpf_map_info> {
    // SAFETY: all zeros is a valid `bpf_map_info` (plain integers).
    let mut info = unsafe { std::mem::zeroed::<bpf_map_info>() };
    obj_info(
        fd,
        std::ptr::from_mut(&mut info).cast(),
        size_of::<bpf_map_info>(),
    )?;
    Ok(info)
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a link (the caller knows `fd` is one).
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<bpf_link_info> {
    // SAFETY: all zeros is a valid `bpf_link_info` (plain integers).
    let mut info = unsafe { std::mem::zeroed::<bpf_link_info>() };
    obj_info(
        fd,
        std::ptr::from_mut(&mut info).cast(),
        size_of::<bpf_link_info>(),
    )?;
    Ok(info)
}

/// The kernel writes at most `len` bytes of the object's info at `info`
/// (fewer if its struct is shorter; the rest stays zero).
fn obj_info(fd: BorrowedFd<'_>, info: *mut u8, len: usize) -> io::Result<()> {
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, |attr| {
        attr.info.bpf_fd = fd.as_raw_fd() as u32;
        attr.info.info_len = len as u32;
        attr.info.info = info as u64;
    })
    .map(|_| ())
}

/// Raises the soft limit of open descriptors (`RLIMIT_NOFILE`) to the hard
/// one, and returns it: container runtimes often start processes with a
/// soft limit of 1024 and a far higher hard one.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid resource and out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: a valid resource and a limit no higher than the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}
