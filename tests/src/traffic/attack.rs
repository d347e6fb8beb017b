//! Clients that attack an enforcer the way an adversary would, for the
//! adversarial integration tests: a SYN flood from spoofed sources, urgent
//! (out-of-band) bytes before a request, a request carried in the SYN (TCP
//! Fast Open), and a request sent with a hole in its sequence space.
//!
//! Each is bounded in packets and time and stops by itself. They send only
//! to and from lab addresses, from sockets made inside lab namespaces (raw
//! sockets and `TCP_REPAIR` need root, as the lab does anyway).

use std::{
    io::{self, Write as _},
    mem::size_of,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd as _, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader};
use libc::c_int;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::{
    cluster::netns::NetNs,
    traffic::{
        IO_TIMEOUT,
        client::{self, Counting},
    },
};

/// Longest flood [`syn_flood`] accepts: a test that needs more is wrong.
pub const MAX_FLOOD: Duration = Duration::from_secs(60);
/// Batches per second a flood is cut into: it sleeps between batches.
const BATCHES_PER_S: u32 = 100;
/// Longest sleep of a flood, so that `stop` is prompt at low rates.
const STOP_CHECK: Duration = Duration::from_millis(10);
/// Pause between writes meant to leave in separate segments (Nagle off).
const SEGMENT_GAP: Duration = Duration::from_millis(2);
/// Pause between the segment after the hole and the one that fills it.
const HOLE_GAP: Duration = Duration::from_millis(20);
/// TTL of hand-made packets.
const TTL: u8 = 64;
/// Window advertised by hand-made segments.
const WINDOW: u16 = 65535;

/// `net.ipv4.tcp_fastopen`: client on (0x1), server on (0x2), client sends
/// data without a cookie (0x4), server takes data without a cookie (0x200).
const FAST_OPEN_ALL: u32 = 0x207;
/// Listen queue of pending Fast Open requests (`TCP_FASTOPEN`).
const FAST_OPEN_QUEUE: c_int = 16;
/// `tcp_info.tcpi_options` bit: the SYN-ACK acknowledged the SYN's data
/// (linux/tcp.h; not in libc).
const TCPI_OPT_SYN_DATA: u8 = 32;

/// `TCP_REPAIR` values and `TCP_REPAIR_QUEUE` queues (linux/tcp.h; not in
/// libc). `TCP_REPAIR_OFF` would send a window probe on the way out;
/// `_NO_WP` leaves silently.
const TCP_REPAIR_ON: c_int = 1;
const TCP_REPAIR_OFF_NO_WP: c_int = -1;
const TCP_RECV_QUEUE: c_int = 1;
const TCP_SEND_QUEUE: c_int = 2;

// ---- SYN flood ----

/// What a flood did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodReport {
    /// SYNs the kernel took.
    pub sent: u64,
    /// SYNs it refused (`ENOBUFS`, `EAGAIN`, `EPERM` from a filter, ...).
    pub errors: u64,
}

/// A SYN flood running on its own thread (see [`syn_flood`]). Stops when
/// its time is up, when [`Flood::stop`] is called, or on drop.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<FloodReport>>,
}

impl Flood {
    /// Stops the flood now and reports what it sent.
    pub fn stop(mut self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the flood to run its full duration and reports what it sent.
    pub fn wait(mut self) -> FloodReport {
        self.join()
    }

    fn join(&mut self) -> FloodReport {
        self.thread.take().map_or_else(FloodReport::default, |t| {
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a flood's SYNs come from and go.
#[derive(Clone, Copy, Debug)]
struct FloodPlan {
    first_source: u32,
    count_sources: u32,
    to: SocketAddrV4,
    rate_per_s: u32,
    duration: Duration,
}

/// Floods `to` with TCP SYNs from inside `ns`, from spoofed sources
/// `sources`, `sources + 1`, ... (`count_sources` of them, in turn), each
/// with a random source port (1024..65535) and ISN, at `rate_per_s` for
/// `duration` (at most [`MAX_FLOOD`]). Sent on a raw socket: the kernel of
/// `ns` keeps no state for them, and the answers go to addresses that do
/// not exist. Panics if the raw socket cannot be made.
pub fn syn_flood(
    ns: &NetNs,
    sources: Ipv4Addr,
    count_sources: u32,
    to: SocketAddrV4,
    rate_per_s: u32,
    duration: Duration,
) -> Flood {
    assert!(count_sources > 0, "a flood needs at least one source");
    assert!(rate_per_s > 0, "a flood needs a rate");
    assert!(duration <= MAX_FLOOD, "a flood lasts at most {MAX_FLOOD:?}");
    let raw = ns
        .run(RawIpv4::open)
        .and_then(|raw| raw.0.set_nonblocking(true).map(|()| raw))
        .unwrap_or_else(|e| panic!("raw socket in {}: {e}", ns.name()));
    let plan = FloodPlan {
        first_source: sources.into(),
        count_sources,
        to,
        rate_per_s,
        duration,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || flood(&raw, plan, &stop2));
    Flood {
        stop,
        thread: Some(thread),
    }
}

/// The flood's loop: a batch, then a sleep until the next batch is due.
fn flood(raw: &RawIpv4, plan: FloodPlan, stop: &AtomicBool) -> FloodReport {
    let batch = (plan.rate_per_s / BATCHES_PER_S).max(1);
    let interval = Duration::from_secs(1) * batch / plan.rate_per_s;
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut rng = Rng::seeded();
    let mut report = FloodReport::default();
    let mut due = start;
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) && due < deadline && Instant::now() < deadline {
        for _ in 0..batch {
            let from = SocketAddrV4::new(
                Ipv4Addr::from(plan.first_source.wrapping_add(i % plan.count_sources)),
                rng.port(),
            );
            match raw.send(&syn(from, plan.to, rng.next_u32())) {
                Ok(()) => report.sent += 1,
                Err(_) => report.errors += 1,
            }
            i = i.wrapping_add(1);
        }
        due += interval;
        pause_until(due.min(deadline), stop);
    }
    report
}

/// Sleeps until `t`, waking at least every [`STOP_CHECK`] to honour `stop`.
fn pause_until(t: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let left = t.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

/// A xorshift generator: ports and ISNs need to look random, not be secret.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Any 64 bits make a seed; `| 1` because xorshift sticks at 0.
        Self(nanos as u64 | 1)
    }

    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }

    /// A port in 1024..65535.
    fn port(&mut self) -> u16 {
        let span = u32::from(u16::MAX) - 1024;
        u16::try_from(1024 + self.next_u32() % span).expect("below 65535")
    }
}

// ---- Urgent data ----

/// Connects to `to` from inside `ns` (Nagle off), sends each byte of
/// `urgent` as urgent data (`MSG_OOB`), each in its own segment, then a
/// `GET /` request, and returns the response's status line.
///
/// A server without `SO_OOBINLINE` never reads the urgent bytes; an
/// inspector that reassembles sequence space sees them in the stream.
/// Linux keeps only the latest urgent byte out of band: an earlier one the
/// server had not read past when the next arrived reads as ordinary data.
/// The pause between them lets a server blocked in `read` skip each in turn.
pub fn urgent_then_request(ns: &NetNs, to: SocketAddr, urgent: &[u8]) -> io::Result<String> {
    ns.run(move || {
        let mut s = Counting::connect(to)?;
        let sock = SockRef::from(&s.inner);
        for byte in urgent {
            sock.send_out_of_band(std::slice::from_ref(byte))?;
            std::thread::sleep(SEGMENT_GAP);
        }
        s.write_all(client::request(to).as_bytes())?;
        Ok(client::finish(s)?.status)
    })
}

// ---- TCP Fast Open ----

/// What a Fast Open request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastOpen {
    /// The response's status line.
    pub status: String,
    /// The SYN-ACK acknowledged the data in the SYN: the request really
    /// travelled in the SYN and the server took it there. `false` means
    /// the kernel fell back to sending it after the handshake.
    pub syn_data_acked: bool,
}

/// Turns TCP Fast Open fully on in `ns` (`net.ipv4.tcp_fastopen = 0x207`):
/// as a client it puts data in the SYN of even the first connection (no
/// cookie), as a server it takes data from a SYN without a cookie. Also
/// switches off the blackhole detection that would turn Fast Open off for
/// an hour after a SYN with data went unanswered (as an enforcer may make
/// it). Needed in the client's and the server's namespace.
pub fn enable_fast_open(ns: &NetNs) {
    ns.sysctl("net.ipv4.tcp_fastopen", &FAST_OPEN_ALL.to_string());
    ns.sysctl("net.ipv4.tcp_fastopen_blackhole_timeout_sec", "0");
}

/// A listener on `addr` inside `ns` that takes data in SYNs (the
/// `TCP_FASTOPEN` option, set before `listen`), for
/// [`Server::with_listener`](super::Server::with_listener). The
/// IPv6 unspecified address listens on both families. Panics on failure.
pub fn fast_open_listener(ns: &NetNs, addr: SocketAddr) -> TcpListener {
    ns.run(move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            s.set_only_v6(false)?;
        }
        s.set_reuse_address(true)?;
        set_tcp_opt(s.as_fd(), libc::TCP_FASTOPEN, FAST_OPEN_QUEUE)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        Ok::<_, io::Error>(TcpListener::from(s))
    })
    .unwrap_or_else(|e| panic!("fast-open listener on {addr} in {}: {e}", ns.name()))
}

/// Sends a `GET /` request in the SYN (`sendto` with `MSG_FASTOPEN` on an
/// unconnected socket) from inside `ns`, and reads the response. Both
/// namespaces need [`enable_fast_open`] and the server a
/// [`fast_open_listener`] for the request to stay in the SYN.
pub fn fast_open_request(ns: &NetNs, to: SocketAddr) -> io::Result<FastOpen> {
    ns.run(move || {
        let sock = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        // The write timeout also bounds the wait for the handshake in sendto.
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_tcp_nodelay(true)?;
        let request = client::request(to);
        let in_syn = sock.send_to_with_flags(request.as_bytes(), &to.into(), libc::MSG_FASTOPEN)?;
        let inner = TcpStream::from(sock);
        let syn_data_acked = tcp_info(inner.as_fd())?.tcpi_options & TCPI_OPT_SYN_DATA != 0;
        let mut s = Counting {
            inner,
            sent: in_syn as u64,
            received: 0,
        };
        s.write_all(&request.as_bytes()[in_syn..])?;
        Ok(FastOpen {
            status: client::finish(s)?.status,
            syn_data_acked,
        })
    })
}

// ---- Out-of-order segments ----

/// A request sent with a hole in its sequence space (see
/// [`out_of_order_request`]). Keeps the connection up while it lives.
#[derive(Debug)]
pub struct OutOfOrder {
    /// The real socket whose connection the segments belong to. It never
    /// learns of the request: it drops the server's answer, which
    /// acknowledges bytes it never sent. Closed on drop.
    pub sock: TcpStream,
    /// Its local address: the segments' source.
    pub local: SocketAddrV4,
    /// The server's address.
    pub peer: SocketAddrV4,
    /// Sequence number of the request's first byte.
    pub snd_nxt: u32,
    /// The next byte expected from the server: the segments' ACK number.
    pub rcv_nxt: u32,
    raw: RawIpv4,
}

/// The "hole" attack: connects to `to` from inside `ns` (a real handshake),
/// reads the connection's sequence numbers with `TCP_REPAIR`, then sends
/// a `GET /` request itself on a raw socket as two ACK+PSH segments: bytes
/// 1.. first (leaving a hole at byte 0), then, 20 ms later, byte 0. A
/// receiving TCP reassembles the request; an inspector that reads segments
/// in arrival order sees it start mid-line.
pub fn out_of_order_request(ns: &NetNs, to: SocketAddrV4) -> io::Result<OutOfOrder> {
    let attack = ns.run(move || {
        let sock = super::connect(to.into())?;
        let SocketAddr::V4(local) = sock.local_addr()? else {
            unreachable!("an IPv4 connection has an IPv4 address")
        };
        let (snd_nxt, rcv_nxt) = sequence_numbers(sock.as_fd())?;
        Ok::<_, io::Error>(OutOfOrder {
            sock,
            local,
            peer: to,
            snd_nxt,
            rcv_nxt,
            raw: RawIpv4::open()?,
        })
    })?;
    let request = attack.request();
    attack.send(attack.snd_nxt.wrapping_add(1), &request[1..])?;
    std::thread::sleep(HOLE_GAP);
    attack.send(attack.snd_nxt, &request[..1])?;
    Ok(attack)
}

impl OutOfOrder {
    /// Sends the whole request again as one segment at `snd_nxt`, in order,
    /// as a retransmission would.
    pub fn resend_in_order(&self) -> io::Result<()> {
        self.send(self.snd_nxt, &self.request())
    }

    fn request(&self) -> Vec<u8> {
        client::request(self.peer.into()).into_bytes()
    }

    /// Sends one hand-made segment. A segment the enforcer drops on the
    /// way out makes `sendto` fail with EPERM: that is the attack failing,
    /// which the test sees at the server, not an error of the client.
    fn send(&self, seq: u32, payload: &[u8]) -> io::Result<()> {
        match self
            .raw
            .send(&data(self.local, self.peer, seq, self.rcv_nxt, payload))
        {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            other => other,
        }
    }
}

/// `tcpi_bytes_acked` and `tcpi_bytes_received` of a TCP socket (what
/// `bpf_tcp_sock` calls `bytes_acked` and `bytes_received`), from
/// `TCP_INFO` (byte offsets 120 and 128 of `struct tcp_info`, since 4.1;
/// libc's glibc layout stops before them).
pub fn tcp_byte_counters(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: any bits are a valid byte array.
    let info: [u8; 136] = unsafe { get_tcp_opt(fd, libc::TCP_INFO) }?;
    let at = |i: usize| u64::from_ne_bytes(info[i..i + 8].try_into().expect("8 bytes"));
    Ok((at(120), at(128)))
}

/// The connection's next send (`write_seq`) and receive (`rcv_nxt`)
/// sequence numbers, read in repair mode. Leaves repair mode without the window probe `TCP_REPAIR_OFF` sends.
pub fn sequence_numbers(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    set_tcp_opt(fd, libc::TCP_REPAIR, TCP_REPAIR_ON)?;
    let read = |queue| {
        set_tcp_opt(fd, libc::TCP_REPAIR_QUEUE, queue)?;
        // SAFETY: TCP_QUEUE_SEQ is a 32-bit integer; any bits are a u32.
        unsafe { get_tcp_opt::<u32>(fd, libc::TCP_QUEUE_SEQ) }
    };
    let seqs = read(TCP_SEND_QUEUE).and_then(|snd| Ok((snd, read(TCP_RECV_QUEUE)?)));
    set_tcp_opt(fd, libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)?;
    seqs
}

// ---- Raw IPv4 and hand-made segments ----

/// A raw IPv4 socket that sends whole packets, IP header included
/// (`IPPROTO_RAW` implies `IP_HDRINCL`). Stays in the namespace it was
/// made in.
#[derive(Debug)]
struct RawIpv4(Socket);

impl RawIpv4 {
    fn open() -> io::Result<Self> {
        let s = Socket::new(
            Domain::IPV4,
            Type::from(libc::SOCK_RAW),
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self(s))
    }

    /// Sends an IPv4 packet to its destination address.
    fn send(&self, packet: &[u8]) -> io::Result<()> {
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let n = self.0.send_to(packet, &SocketAddrV4::new(dst, 0).into())?;
        if n == packet.len() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                packet.len()
            )))
        }
    }
}

/// A SYN with no options, IPv4 header first.
fn syn(from: SocketAddrV4, to: SocketAddrV4, isn: u32) -> Vec<u8> {
    write(tcp(from, to, isn).syn(), &[])
}

/// An ACK+PSH segment carrying `payload` at `seq`, IPv4 header first.
fn data(from: SocketAddrV4, to: SocketAddrV4, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    write(tcp(from, to, seq).ack(ack).psh(), payload)
}

fn tcp(from: SocketAddrV4, to: SocketAddrV4, seq: u32) -> PacketBuilderStep<TcpHeader> {
    PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), TTL).tcp(
        from.port(),
        to.port(),
        seq,
        WINDOW,
    )
}

/// The packet with both checksums filled in (etherparse computes them).
fn write(b: PacketBuilderStep<TcpHeader>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .expect("writing to a Vec succeeds");
    out
}

// ---- TCP socket options socket2 has no wrapper for ----

fn set_tcp_opt(fd: BorrowedFd<'_>, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: a valid fd and a c_int option of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            name,
            (&raw const value).cast(),
            socklen::<c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a TCP socket option of type `T`.
///
/// # Safety
///
/// `T` must be plain data that any bit pattern (including zero) is valid for.
unsafe fn get_tcp_opt<T>(fd: BorrowedFd<'_>, name: c_int) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = socklen::<T>();
    // SAFETY: a valid fd, and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            name,
            value.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        // SAFETY: zeroed, then partly written by the kernel; the caller
        // vouches that any bits are a valid T.
        Ok(unsafe { value.assume_init() })
    } else {
        Err(io::Error::last_os_error())
    }
}

fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is a C struct of integers.
    unsafe { get_tcp_opt(fd, libc::TCP_INFO) }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("an option fits a socklen_t")
}

// ---- A handshake held open while floods push out its state ----

/// Connects to a server-first service at `to` from inside `ns` with the
/// handshake's last ACK held back (an `iptables` rule in `ns` drops every
/// segment to `to` but SYNs), runs `meanwhile`, lets the ACK go, reads
/// the server's greeting line and sends a plaintext `GET /` request;
/// returns the response's status line.
///
/// Held, the handshake stays half-open on the server's side for as long
/// as `meanwhile` runs: the time a control plane far away takes, or a
/// client that waits on purpose. The server's SYN-ACK retransmission
/// (after about a second, then three) completes it once the rule goes.
pub fn request_after_a_held_handshake(
    ns: &NetNs,
    to: SocketAddr,
    meanwhile: impl FnOnce(),
) -> io::Result<String> {
    let port = to.port().to_string();
    let dst = to.ip().to_string();
    let iptables = if to.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    };
    let rule = |op: &str| {
        ns.exec(&[
            iptables, op, "OUTPUT", "-p", "tcp", "-d", &dst, "--dport", &port, "!", "--syn", "-j",
            "DROP",
        ]);
    };
    rule("-A");
    let connected = ns.run(|| Counting::connect(to));
    meanwhile();
    rule("-D");
    let mut s = connected?;
    super::server::read_line(&mut s.inner)?;
    s.write_all(client::request(to).as_bytes())?;
    Ok(client::finish(s)?.status)
}

// ---- connect() flood ----

/// `connect()`s `count` non-blocking TCP sockets to `to` from inside `ns`
/// on each CPU this process may run on (threads pinned one per CPU),
/// closing each at once; returns how many connects were made. Each
/// `connect()` runs the cgroup connect hooks, whose table (`CONNECTS`,
/// least recently used per CPU) it fills. `count` is at most
/// [`MAX_CONNECTS`].
pub fn connect_flood(ns: &NetNs, to: SocketAddr, count: u32) -> u64 {
    assert!(
        count <= MAX_CONNECTS,
        "a connect flood makes at most {MAX_CONNECTS} per CPU"
    );
    let cpus = super::allowed_cpus();
    std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                scope.spawn(move || {
                    ns.run(|| {
                        super::pin_to_cpu(cpu);
                        let mut made = 0;
                        for _ in 0..count {
                            let Ok(s) = Socket::new(Domain::for_address(to), Type::STREAM, None)
                            else {
                                continue;
                            };
                            if s.set_nonblocking(true).is_ok() {
                                // EINPROGRESS or ECONNREFUSED: the hook ran.
                                let _ = s.connect(&to.into());
                                made += 1;
                            }
                        }
                        made
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("connect flood thread"))
            .sum()
    })
}

/// Most connects [`connect_flood`] makes per CPU.
pub const MAX_CONNECTS: u32 = 100_000;

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    use crate::cluster::topology::addrs::{CP4, POD4};

    const FROM: SocketAddrV4 = SocketAddrV4::new(POD4, 40000);
    const TO: SocketAddrV4 = SocketAddrV4::new(CP4, 8080);

    /// The Internet checksum's folded one's-complement sum (RFC 1071),
    /// written independently of etherparse: a correct header sums to 0xffff.
    fn ones_sum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        u16::try_from(sum).expect("folded")
    }

    /// Both checksums of an IPv4+TCP packet verify.
    fn assert_checksums(packet: &[u8]) {
        let ihl = usize::from(packet[0] & 0xf) * 4;
        assert_eq!(ones_sum(&[&packet[..ihl]]), 0xffff, "IPv4 header checksum");
        let segment = &packet[ihl..];
        let len = u16::try_from(segment.len()).expect("small").to_be_bytes();
        let pseudo = [&packet[12..20], &[0, 6], &len[..]].concat();
        assert_eq!(ones_sum(&[&pseudo, segment]), 0xffff, "TCP checksum");
    }

    #[test]
    fn ones_sum_matches_rfc1071_example() {
        // RFC 1071 §3's example words sum to 0xddf2.
        let words = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_sum(&[&words]), 0xddf2);
    }

    #[test]
    fn syn_has_valid_checksums_and_fields() {
        let p = syn(FROM, TO, 0xdead_beef);
        assert_checksums(&p);
        let s = SlicedPacket::from_ip(&p).expect("parses");
        let Some(NetSlice::Ipv4(ip)) = s.net else {
            panic!("IPv4")
        };
        assert_eq!(ip.header().source_addr(), *FROM.ip());
        assert_eq!(ip.header().destination_addr(), *TO.ip());
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!("TCP")
        };
        assert!(t.syn() && !t.ack());
        assert_eq!(
            (t.source_port(), t.destination_port()),
            (FROM.port(), TO.port())
        );
        assert_eq!(t.sequence_number(), 0xdead_beef);
    }

    #[test]
    fn data_segment_has_valid_checksums_and_fields() {
        // An odd length exercises the checksum's padding byte.
        let p = data(FROM, TO, u32::MAX, 7, b"GET / HTTP/1.1\r\n\r");
        assert_checksums(&p);
        let s = SlicedPacket::from_ip(&p).expect("parses");
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!("TCP")
        };
        assert!(t.ack() && t.psh() && !t.syn());
        assert_eq!(
            (t.sequence_number(), t.acknowledgment_number()),
            (u32::MAX, 7)
        );
        assert_eq!(t.window_size(), WINDOW);
        assert_eq!(t.payload(), b"GET / HTTP/1.1\r\n\r");
    }

    #[test]
    fn ports_stay_in_range() {
        let mut rng = Rng::seeded();
        assert!((0..10_000).map(|_| rng.port()).all(|p| p >= 1024));
    }
}
