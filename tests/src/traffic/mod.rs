//! Traffic across the lab, on one client/server stack: the servers
//! ([`server`]), the clients ([`client`]) and their TLS material
//! ([`tls`]), and the attacks an adversary would try ([`attack`]). The
//! benchmarks' workloads (`crate::bench::workload`) use the same servers and
//! the same [`connect`].

pub mod attack;
pub mod client;
pub mod server;
pub mod tls;

use std::{
    io,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

pub use client::{
    Exchange, connect_close, connect_close_from, h2c_hello, http_get, http_get_split,
    http_get_waiting, http_request_split, https_get, raw, ssh_hello,
};
pub use server::{Kind, Server};

/// Read, write and connect timeout of every client socket: every exchange
/// in the lab is local and small.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection to `to` with [`IO_TIMEOUT`] on connect, reads and
/// writes (Nagle left on: the workloads measure the stack as it comes).
pub fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// True for the errors a client sees when its connection is reset (by the
/// peer's RST, or its own socket destroyed).
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Pins the calling thread to the highest CPU it may run on. Both ends of
/// every benchmark workload run there: each measurement is bound by that
/// one CPU's work (the programs under test are part of it), and runs do not
/// differ in where their threads and softirq work landed, which was the
/// largest noise with the ends floating. The agent and the rest of the
/// machine get the other CPUs. Best effort: if the mask cannot be read or
/// set, the thread floats.
pub fn pin_to_one_cpu() {
    if let Some(&cpu) = allowed_cpus().last() {
        pin_to_cpu(cpu);
    }
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the call only writes it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: the set is built here and only read by the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}
