//! Resetting blocked connections.
//!
//! The kernel programs already drop every payload segment of a blocked
//! connection, so no request reaches the server. To make both ends fail at
//! once instead of retransmitting into the void until a timeout, the agent
//! destroys the connection's sockets with the kernel's `SOCK_DESTROY`
//! (sock_diag netlink, CONFIG_INET_DIAG_DESTROY): the kernel aborts the
//! socket, its application gets ECONNABORTED, and its peer gets a RST with
//! the right sequence number. This needs no extra kernel program and no
//! kfunc, only a netlink request — in the network namespace of the socket,
//! which is why each request is tried in every namespace the agent can see
//! (`/run/netns`, `/var/run/netns`, and those of every process in `/proc`).

use std::{
    collections::HashSet,
    fs::File,
    io,
    mem::offset_of,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
    sync::{Arc, atomic::Ordering, mpsc},
    thread::JoinHandle,
};

use observer_common::flow::{Flow, FlowKey};

use crate::agent_counters::AgentCounters;

/// Starts the enforcer thread; it resets the connection of every
/// (client, server) pair sent to it, until the sender is dropped.
pub fn spawn(
    counters: Arc<AgentCounters>,
) -> (mpsc::Sender<(SocketAddr, SocketAddr)>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<(SocketAddr, SocketAddr)>();
    let thread = std::thread::Builder::new()
        .name("enforcer".into())
        .spawn(move || {
            for (client, server) in rx {
                reset_counted(client, server, &counters, "blocked");
            }
        })
        .expect("a thread can be spawned");
    (tx, thread)
}

/// [`reset`], its outcome counted in `counters` and logged with `why`.
pub fn reset_counted(client: SocketAddr, server: SocketAddr, counters: &AgentCounters, why: &str) {
    match reset(client, server) {
        Ok(0) => tracing::debug!(%client, %server, why, "connection to reset already gone"),
        Ok(n) => {
            counters
                .sockets_reset
                .fetch_add(n as u64, Ordering::Relaxed);
            tracing::info!(%client, %server, sockets = n, why, "reset connection");
        }
        Err(e) => {
            counters.reset_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%client, %server, why, "cannot reset connection: {e}");
        }
    }
}

/// (client, server) of the connection a flow entry describes.
pub fn ends(key: &FlowKey, flow: &Flow) -> (SocketAddr, SocketAddr) {
    let (c, cport, s, sport) = key.ends(flow);
    (
        SocketAddr::new(c.into(), cport),
        SocketAddr::new(s.into(), sport),
    )
}

/// Destroys both ends of `client` → `server` wherever they live; returns
/// how many sockets went.
pub fn reset(client: SocketAddr, server: SocketAddr) -> io::Result<usize> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let mut destroyed = 0;
    let mut last_err = None;
    for ns in namespaces() {
        if let Err(e) = setns(&ns) {
            last_err = Some(e);
            continue;
        }
        // The server's socket sees (local=server, remote=client); a local
        // client's socket sees the reverse.
        for (local, remote) in [(server, client), (client, server)] {
            match destroy(local, remote) {
                Ok(true) => destroyed += 1,
                Ok(false) => {}
                Err(e) => last_err = Some(e),
            }
        }
    }
    setns(&home)?;
    match (destroyed, last_err) {
        (0, Some(e)) => Err(e),
        (n, _) => Ok(n),
    }
}

fn setns(ns: &File) -> io::Result<()> {
    // SAFETY: a namespace fd; only this thread changes namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every network namespace visible from here, once each, ours first.
fn namespaces() -> Vec<File> {
    let mut candidates = vec![std::path::PathBuf::from("/proc/self/ns/net")];
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            candidates.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        candidates.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter_map(|p| File::open(p).ok())
        .filter(|f| f.metadata().is_ok_and(|m| seen.insert((m.dev(), m.ino()))))
        .collect()
}

// linux/sock_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;

/// `struct inet_diag_sockid` (linux/inet_diag.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`, the answer to `SOCK_DIAG_BY_FAMILY`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// A sock_diag request naming one socket.
#[repr(C)]
struct DestroyRequest {
    hdr: libc::nlmsghdr,
    req: InetDiagReqV2,
}

// The sizes the kernel's uapi gives these (no padding anywhere).
const _: () = assert!(
    size_of::<InetDiagSockId>() == 48
        && size_of::<InetDiagReqV2>() == 56
        && size_of::<InetDiagMsg>() == 72
        && size_of::<DestroyRequest>() == 72
);

/// Length of the netlink header before a message's payload.
const NLMSG_HDRLEN: usize = size_of::<libc::nlmsghdr>();

/// A `T` read from `buf` at `off`, if it is long enough.
fn read_at<T: Copy>(buf: &[u8], off: usize) -> Option<T> {
    let bytes = buf.get(off..off.checked_add(size_of::<T>())?)?;
    // SAFETY: `bytes` holds `size_of::<T>()` bytes; `T` is one of the
    // plain uapi structs or integers here, valid for any bit pattern.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// The type of the netlink message at the start of `buf`.
fn message_type(buf: &[u8]) -> Option<u16> {
    read_at::<libc::nlmsghdr>(buf, 0).map(|h| h.nlmsg_type)
}

/// Puts an address in an `idiag_src`/`idiag_dst` field: IPv4 in the first
/// four bytes, IPv6 (never IPv4-mapped: the kernel looks those up as IPv4).
fn family_and_bytes(a: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match a.to_canonical() {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (libc::AF_INET as u8, out)
        }
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets()),
    }
}

/// `SOCK_DESTROY` of the TCP connection socket (local, remote) in the
/// current network namespace: `Ok(false)` when there is none.
///
/// The kernel's exact lookup falls back to a *listening* socket when no
/// connection matches; destroying that would take a server down. So the
/// socket is first looked up (`SOCK_DIAG_BY_FAMILY`), listeners are left
/// alone, and the destroy names the found socket by its cookie.
fn destroy(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    let Some(mut req) = request(local, remote) else {
        return Ok(false);
    };
    let fd = netlink()?;
    req.hdr.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.hdr.nlmsg_flags = libc::NLM_F_REQUEST as u16;
    let mut buf = [0u8; 1024];
    let n = exchange(&fd, &req, &mut buf)?;
    let answer = &buf[..n];
    let ty = message_type(answer);
    if ty == Some(NLMSG_ERROR) {
        return match errno(answer)? {
            libc::ENOENT => Ok(false),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    let msg = match (ty, read_at::<InetDiagMsg>(answer, NLMSG_HDRLEN)) {
        (Some(SOCK_DIAG_BY_FAMILY), Some(msg)) => msg,
        _ => return Err(io::Error::other("unexpected sock_diag answer")),
    };
    // A listener is a server, not a connection; a time-wait socket is a
    // connection over already.
    const TCP_TIME_WAIT: u8 = 6;
    const TCP_LISTEN: u8 = 10;
    if matches!(msg.state, TCP_LISTEN | TCP_TIME_WAIT) {
        return Ok(false);
    }
    req.req.id.cookie = msg.id.cookie;
    req.hdr.nlmsg_type = SOCK_DESTROY;
    req.hdr.nlmsg_flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let n = exchange(&fd, &req, &mut buf)?;
    if message_type(&buf[..n]) != Some(NLMSG_ERROR) {
        return Err(io::Error::other("unexpected sock_diag answer"));
    }
    match errno(&buf[..n])? {
        0 => Ok(true),
        // Gone in between (closed, or reset by its peer): nothing to do.
        libc::ENOENT | libc::ESTALE => Ok(false),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The request naming (local, remote), or `None` for mixed families.
fn request(local: SocketAddr, remote: SocketAddr) -> Option<DestroyRequest> {
    let (family, src) = family_and_bytes(local.ip());
    let (family2, dst) = family_and_bytes(remote.ip());
    (family == family2).then(|| DestroyRequest {
        hdr: libc::nlmsghdr {
            nlmsg_len: size_of::<DestroyRequest>() as u32,
            nlmsg_type: 0,
            nlmsg_flags: 0,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: u32::MAX,
            id: InetDiagSockId {
                sport: local.port().to_be_bytes(),
                dport: remote.port().to_be_bytes(),
                src,
                dst,
                ifindex: 0,
                cookie: [u32::MAX; 2], // INET_DIAG_NOCOOKIE
            },
        },
    })
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `req`, receives one answer into `buf`, returns its length.
fn exchange(fd: &OwnedFd, req: &DestroyRequest, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: sending a fully initialised #[repr(C)] struct.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            std::ptr::from_ref(req).cast(),
            size_of::<DestroyRequest>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: receiving into a buffer of the given size.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    // Anything shorter cannot even say an error.
    if n < (NLMSG_HDRLEN + size_of::<i32>()) as isize {
        return Err(if n < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::other("short sock_diag answer")
        });
    }
    Ok(n as usize)
}

/// The errno of an `NLMSG_ERROR` answer (0 for an ack): `struct nlmsgerr`'s
/// `error`, the negative errno.
fn errno(msg: &[u8]) -> io::Result<i32> {
    read_at::<i32>(msg, NLMSG_HDRLEN + offset_of!(libc::nlmsgerr, error))
        .map(|e| -e)
        .ok_or_else(|| io::Error::other("short sock_diag error"))
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// Needs CAP_NET_ADMIN (the test suite runs as root).
    #[test]
    fn destroys_a_loopback_connection_and_the_peer_sees_a_reset() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
        assert!(
            destroy(s, c).unwrap(),
            "the server's socket is found and destroyed"
        );
        let unknown: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(!destroy(unknown, c).unwrap(), "no such socket: Ok(false)");
        // The connection is gone: the same tuple now only matches the
        // listener, which must be left alone.
        assert!(!destroy(s, c).unwrap(), "a listener is never destroyed");
        let _still_listening =
            std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1];
        let err = client
            .write_all(b"x")
            .and_then(|()| client.read(&mut buf).map(|_| ()))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let err = server.read(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
    }
}
