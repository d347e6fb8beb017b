//! sock_diag netlink (linux/sock_diag.h, linux/inet_diag.h), by hand: the
//! few requests the agent makes, each in the network namespace its socket
//! was created in. The enforcer destroys blocked connections' sockets with
//! it (`SOCK_DESTROY`, `Diag::destroy`); the local apiserver is found
//! among the listening sockets it dumps (`Diag::listeners`).

use std::{
    io,
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// How long a sock_diag answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

// linux/sock_diag.h, linux/netlink.h, linux/inet_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;

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

/// A sock_diag request: one socket (by its ends), or a dump (by state).
#[repr(C)]
struct Request {
    hdr: libc::nlmsghdr,
    req: InetDiagReqV2,
}

// The sizes the kernel's uapi gives these (no padding anywhere).
const _: () = assert!(
    size_of::<InetDiagSockId>() == 48
        && size_of::<InetDiagReqV2>() == 56
        && size_of::<InetDiagMsg>() == 72
        && size_of::<Request>() == 72
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

/// What a sock_diag lookup found on (local, remote).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The socket, now destroyed.
    Destroyed,
    /// Nothing.
    Absent,
    /// A socket, not the one the cookie names: left alone.
    Stale,
    /// A time-wait socket or a listener: nothing to destroy.
    Closed,
}

/// A sock_diag netlink socket, bound for life to the network namespace
/// it was created in.
pub(crate) struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    /// A socket in the current thread's namespace.
    pub(crate) fn new() -> io::Result<Self> {
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
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a valid option value of its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// The cookie of the socket's namespace (Linux 5.14+).
    pub(crate) fn netns_cookie(&self) -> Option<u64> {
        const SO_NETNS_COOKIE: libc::c_int = 71;
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: a valid out buffer of its size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                std::ptr::from_mut(&mut cookie).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(cookie)
    }

    /// `SOCK_DESTROY` of the TCP socket (local, remote) in this socket's
    /// namespace, and only if its cookie is `cookie` (0: any).
    ///
    /// The kernel's exact lookup falls back to a *listening* socket when no
    /// connection matches; destroying that would take a server down. So the
    /// socket is first looked up (`SOCK_DIAG_BY_FAMILY`), listeners are left
    /// alone, and the destroy names the found socket by its cookie: if it
    /// went in between, a newer one on the same ends does not go instead.
    pub(crate) fn destroy(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        cookie: u64,
    ) -> io::Result<Found> {
        let Some(mut req) = request(local, remote) else {
            return Ok(Found::Absent);
        };
        req.hdr.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        req.hdr.nlmsg_flags = libc::NLM_F_REQUEST as u16;
        let mut buf = [0u8; 1024];
        let n = self.exchange(&mut req, &mut buf)?;
        let answer = &buf[..n];
        let ty = message_type(answer);
        if ty == Some(NLMSG_ERROR) {
            return match errno(answer)? {
                libc::ENOENT => Ok(Found::Absent),
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
            return Ok(Found::Closed);
        }
        if cookie != 0 && msg.id.cookie != cookie_words(cookie) {
            return Ok(Found::Stale);
        }
        req.req.id.cookie = msg.id.cookie;
        req.hdr.nlmsg_type = SOCK_DESTROY;
        req.hdr.nlmsg_flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let n = self.exchange(&mut req, &mut buf)?;
        if message_type(&buf[..n]) != Some(NLMSG_ERROR) {
            return Err(io::Error::other("unexpected sock_diag answer"));
        }
        match errno(&buf[..n])? {
            0 => Ok(Found::Destroyed),
            // Gone in between (closed, or reset by its peer): nothing to do.
            libc::ENOENT | libc::ESTALE => Ok(Found::Closed),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Sends `req` with the next sequence number.
    fn send(&mut self, req: &mut Request) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        req.hdr.nlmsg_seq = self.seq;
        // SAFETY: sending a fully initialised #[repr(C)] struct.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(req).cast(),
                size_of::<Request>(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives a datagram into `buf`: its length, at least a header and
    /// an errno long (anything shorter cannot even say an error).
    fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer of the given size.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < (NLMSG_HDRLEN + size_of::<i32>()) as isize {
            return Err(if n < 0 {
                io::Error::last_os_error()
            } else {
                io::Error::other("short sock_diag answer")
            });
        }
        Ok(n as usize)
    }

    /// Sends `req` with the next sequence number and receives its answer
    /// into `buf` (skipping late answers to earlier requests); returns its
    /// length.
    fn exchange(&mut self, req: &mut Request, buf: &mut [u8]) -> io::Result<usize> {
        self.send(req)?;
        loop {
            let n = self.receive(buf)?;
            if read_at::<libc::nlmsghdr>(buf, 0).is_some_and(|h| h.nlmsg_seq == self.seq) {
                return Ok(n);
            }
        }
    }

    /// Every listening TCP socket of this socket's namespace, IPv4 and IPv6.
    pub(crate) fn listeners(&mut self) -> io::Result<Vec<Listener>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            self.dump_listeners(family as u8, &mut out)?;
        }
        Ok(out)
    }

    /// Adds the listening TCP sockets of `family` to `out`: one dump, its
    /// answer in as many datagrams as it takes, up to `NLMSG_DONE`.
    fn dump_listeners(&mut self, family: u8, out: &mut Vec<Listener>) -> io::Result<()> {
        const TCP_LISTEN: u32 = 10;
        let mut req = Request {
            hdr: libc::nlmsghdr {
                nlmsg_len: size_of::<Request>() as u32,
                nlmsg_type: SOCK_DIAG_BY_FAMILY,
                nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                nlmsg_seq: 0,
                nlmsg_pid: 0,
            },
            req: InetDiagReqV2 {
                family,
                protocol: libc::IPPROTO_TCP as u8,
                ext: 0,
                pad: 0,
                states: 1 << TCP_LISTEN,
                id: InetDiagSockId {
                    sport: [0; 2],
                    dport: [0; 2],
                    src: [0; 16],
                    dst: [0; 16],
                    ifindex: 0,
                    cookie: [u32::MAX; 2], // INET_DIAG_NOCOOKIE
                },
            },
        };
        self.send(&mut req)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.receive(&mut buf)?;
            let mut off = 0;
            while let Some(hdr) = read_at::<libc::nlmsghdr>(&buf[..n], off) {
                let len = hdr.nlmsg_len as usize;
                let Some(msg) = buf[..n].get(off..off + len).filter(|_| len >= NLMSG_HDRLEN) else {
                    return Err(io::Error::other("truncated sock_diag answer"));
                };
                // Late parts of an earlier request's answer are skipped.
                if hdr.nlmsg_seq == self.seq {
                    match hdr.nlmsg_type {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => return Err(io::Error::from_raw_os_error(errno(msg)?)),
                        SOCK_DIAG_BY_FAMILY => out.extend(listener(msg)),
                        _ => {}
                    }
                }
                off += align(len);
            }
        }
    }
}

/// A listening TCP socket, as a sock_diag dump gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listener {
    /// Where it is bound (an unspecified address: every address).
    pub addr: SocketAddr,
    /// `IPV6_V6ONLY`, for an IPv6 socket: without it, one bound to `::`
    /// also takes IPv4 connections. (Always false for IPv4 sockets.)
    pub v6only: bool,
    /// Its inode number, as `/proc/<pid>/fd/*` links name it (`socket:[N]`).
    pub inode: u32,
}

/// The listener a `SOCK_DIAG_BY_FAMILY` message describes, with its
/// attributes (`INET_DIAG_SKV6ONLY`; the kernel puts it in every IPv6
/// socket's message, so an IPv6 socket without it is taken as v6only, the
/// answer that never widens what it serves).
fn listener(msg: &[u8]) -> Option<Listener> {
    const INET_DIAG_SKV6ONLY: u16 = 11;
    let m = read_at::<InetDiagMsg>(msg, NLMSG_HDRLEN)?;
    let ip = match i32::from(m.family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(
            m.id.src[0],
            m.id.src[1],
            m.id.src[2],
            m.id.src[3],
        )),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(m.id.src)),
        _ => return None,
    };
    let mut v6only = ip.is_ipv6();
    // `struct rtattr` (u16 length, u16 type) and its payload, aligned.
    let mut off = NLMSG_HDRLEN + align(size_of::<InetDiagMsg>());
    while let Some([len, ty]) = read_at::<[u16; 2]>(msg, off) {
        let len = usize::from(len);
        if len < 4 {
            break;
        }
        if ty == INET_DIAG_SKV6ONLY {
            v6only = read_at::<u8>(msg, off + 4).is_none_or(|v| v != 0);
        }
        off += align(len);
    }
    Some(Listener {
        addr: SocketAddr::new(ip, u16::from_be_bytes(m.id.sport)),
        v6only,
        inode: m.inode,
    })
}

/// `len` rounded up to netlink's alignment (4 bytes).
const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A socket cookie as `inet_diag_sockid.idiag_cookie` holds it: the low
/// 32 bits first.
fn cookie_words(cookie: u64) -> [u32; 2] {
    [cookie as u32, (cookie >> 32) as u32]
}

/// The request naming (local, remote), or `None` for mixed families.
fn request(local: SocketAddr, remote: SocketAddr) -> Option<Request> {
    let (family, src) = family_and_bytes(local.ip());
    let (family2, dst) = family_and_bytes(remote.ip());
    (family == family2).then(|| Request {
        hdr: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
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

/// The errno of an `NLMSG_ERROR` answer (0 for an ack): `struct nlmsgerr`'s
/// `error`, the negative errno.
fn errno(msg: &[u8]) -> io::Result<i32> {
    read_at::<i32>(msg, NLMSG_HDRLEN + offset_of!(libc::nlmsgerr, error))
        .map(|e| -e)
        .ok_or_else(|| io::Error::other("short sock_diag error"))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// The socket cookie of `s` (SO_COOKIE).
    fn cookie_of(s: &impl std::os::fd::AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: a valid out buffer of its size.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                std::ptr::from_mut(&mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        cookie
    }

    /// Runs `f` on a thread in a network namespace of its own (lo up),
    /// which no path names: nothing else on the machine can interfere.
    fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: affects this thread only.
                assert_eq!(
                    unsafe { libc::unshare(libc::CLONE_NEWNET) },
                    0,
                    "unshare: {}",
                    io::Error::last_os_error()
                );
                let up = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .expect("ip runs");
                assert!(up.success());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// A client socket bound to `local` (SO_REUSEADDR) connected to `to`.
    fn connect_from(local: SocketAddr, to: SocketAddr) -> TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&local.into()).unwrap();
        s.connect(&to.into()).unwrap();
        s.into()
    }

    /// Needs CAP_NET_ADMIN and CAP_SYS_ADMIN (the test suite runs as root).
    #[test]
    fn destroys_a_loopback_connection_and_the_peer_sees_a_reset() {
        in_new_netns(|| {
            let mut diag = Diag::new().unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
            assert_eq!(
                diag.destroy(s, c, 0).unwrap(),
                Found::Destroyed,
                "the server's socket is found and destroyed"
            );
            let unknown: SocketAddr = "127.0.0.1:9".parse().unwrap();
            assert_eq!(diag.destroy(unknown, c, 0).unwrap(), Found::Absent);
            // The connection is gone: the same tuple now only matches the
            // listener, which must be left alone.
            assert_eq!(
                diag.destroy(s, c, 0).unwrap(),
                Found::Closed,
                "a listener is never destroyed"
            );
            let _still_listening = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
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
        });
    }

    /// A reset named by the cookie of a connection that is gone does not
    /// touch a newer connection on the same four-tuple; the newer one's
    /// cookie does.
    #[test]
    fn a_stale_cookie_spares_a_newer_connection_on_the_same_tuple() {
        in_new_netns(|| {
            let mut diag = Diag::new().unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let to = listener.local_addr().unwrap();
            let from: SocketAddr = "127.0.0.1:40404".parse().unwrap();
            let old = connect_from(from, to);
            let (old_server, _) = listener.accept().unwrap();
            let stale = cookie_of(&old);
            // Closed with a RST (linger 0): no time-wait keeps the tuple.
            socket2::SockRef::from(&old)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(old);
            drop(old_server);

            let mut newer = connect_from(from, to);
            let (mut newer_server, _) = listener.accept().unwrap();
            assert_eq!(newer.local_addr().unwrap(), from, "the same four-tuple");
            assert_ne!(cookie_of(&newer), stale);
            for (local, remote) in [(from, to), (to, from)] {
                assert_eq!(
                    diag.destroy(local, remote, stale).unwrap(),
                    Found::Stale,
                    "({local}, {remote}) is another socket than the one named"
                );
            }
            newer.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            newer_server.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping", "the newer connection still works");

            assert_eq!(
                diag.destroy(from, to, cookie_of(&newer)).unwrap(),
                Found::Destroyed,
                "its own cookie names it"
            );
            let err = newer.write_all(b"x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        });
    }

    /// The inode a `/proc/self/fd` link names for `fd` (`socket:[N]`).
    fn inode_of(fd: &impl std::os::fd::AsRawFd) -> u32 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let link = link.to_string_lossy();
        link.strip_prefix("socket:[")
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a socket link: {link}"))
    }

    /// An IPv6 listener on `addr`, `IPV6_V6ONLY` as given.
    fn listen6(addr: &str, v6only: bool) -> socket2::Socket {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        s.set_only_v6(v6only).unwrap();
        s.bind(&addr.parse::<SocketAddr>().unwrap().into()).unwrap();
        s.listen(1).unwrap();
        s
    }

    /// A dump lists every listener of the namespace and nothing else, each
    /// with where it is bound, whether an IPv6 one takes IPv4 too, and the
    /// inode its holders' fd links name.
    #[test]
    fn listeners_are_dumped_with_their_inodes() {
        in_new_netns(|| {
            let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
            let dual = listen6("[::]:0", false);
            let only6 = listen6("[::1]:0", true);
            let _not_a_listener = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
            let found = Diag::new().unwrap().listeners().unwrap();
            let addr6 = |s: &socket2::Socket| s.local_addr().unwrap().as_socket().unwrap();
            let want = [
                (v4.local_addr().unwrap(), false, inode_of(&v4)),
                (addr6(&dual), false, inode_of(&dual)),
                (addr6(&only6), true, inode_of(&only6)),
            ];
            assert_eq!(found.len(), want.len(), "{found:?}");
            for (addr, v6only, inode) in want {
                let l = Listener {
                    addr,
                    v6only,
                    inode,
                };
                assert!(found.contains(&l), "{l:?} in {found:?}");
            }
        });
    }

    #[test]
    fn a_cookie_is_put_low_word_first() {
        assert_eq!(
            cookie_words(0x1122_3344_5566_7788),
            [0x5566_7788, 0x1122_3344]
        );
    }
}
