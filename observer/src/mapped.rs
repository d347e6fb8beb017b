//! Kernel arrays mapped into the agent's memory (`BPF_F_MMAPABLE`): the
//! flow table's filter and count, and the clock the kernel programs stamp
//! entries with. Their own module, so that the flow table (`flows`) needs
//! nothing of the loader (`ebpf`).

use aya::maps::MapData;

/// A `BPF_F_MMAPABLE` array of `u64`, mapped into the agent's memory: the
/// kernel programs and the agent update it with atomic instructions on the
/// same memory.
pub struct MappedArray {
    words: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
    /// Keeps the map open while it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for MappedArray {}
// SAFETY: as above.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps the `len` words of `map` (the map's exact size).
    pub(crate) fn new(map: MapData, len: usize) -> std::io::Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array of `len`
        // u64 values (the object defines them so; the pin shapes check it).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * size_of::<u64>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let words = std::ptr::NonNull::new(ptr.cast())
            .ok_or_else(|| std::io::Error::other("mmap returned NULL"))?;
        Ok(Self {
            words,
            len,
            _map: map,
        })
    }

    /// Word `i`; panics past the end.
    pub fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < self.len, "word {i} of a {}-word map", self.len);
        // SAFETY: in bounds, aligned, and alive as long as `self`.
        unsafe { self.words.add(i).as_ref() }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.len * size_of::<u64>()) };
    }
}
