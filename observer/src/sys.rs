//! Thin wrappers over the few system calls the agent makes itself (what
//! aya and std do not expose).

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

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

/// `bpf(cmd, attr, size)`: `size` bytes of `attr` are passed, so a caller
/// with tail padding passes only up to its last field (the kernel refuses
/// non-zero bytes past the fields it knows).
pub fn bpf<T>(cmd: libc::c_long, attr: &T, size: usize) -> io::Result<i64> {
    assert!(size <= size_of::<T>());
    // SAFETY: `attr` is a live #[repr(C)] bpf_attr prefix of at least `size` bytes.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}
