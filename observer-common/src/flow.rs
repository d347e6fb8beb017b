//! The flow table: one entry per tracked TCP connection, shared by the
//! ingress and egress programs so that a connection whose both ends live on
//! this node is one entry, counted once.

use crate::{
    config::Addr,
    protocol::{PREFIX_LEN, Prefix, Protocol, first_bytes},
};

/// Key of the `FLOWS` hash. The two ends are stored in a canonical order
/// (lower address:port first) so that a packet in either direction finds the
/// entry with one lookup; [`Flow::client_is_lo`] remembers which end is the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The lower end's address.
    pub lo: Addr,
    /// The higher end's address.
    pub hi: Addr,
    /// The lower end's port, host byte order.
    pub lo_port: u16,
    /// The higher end's port, host byte order.
    pub hi_port: u16,
}

const _: () = assert!(size_of::<FlowKey>() == 36);

impl FlowKey {
    /// The canonical key of a packet from `src:sport` to `dst:dport`, and
    /// whether the source is the key's `lo` end.
    #[inline(always)]
    pub fn new(src: Addr, sport: u16, dst: Addr, dport: u16) -> (Self, bool) {
        // Any total order that both directions agree on will do: compare
        // 32-bit words, which a kernel program does in four steps.
        let src_is_lo = (src.words(), sport) <= (dst.words(), dport);
        if src_is_lo {
            (
                Self {
                    lo: src,
                    hi: dst,
                    lo_port: sport,
                    hi_port: dport,
                },
                true,
            )
        } else {
            (
                Self {
                    lo: dst,
                    hi: src,
                    lo_port: dport,
                    hi_port: sport,
                },
                false,
            )
        }
    }
}

/// Number of slots of the `FLOW_FILTER` map (a power of two).
pub const FILTER_SLOTS: u32 = 1 << 16;

/// Value of one `FLOW_FILTER` slot: what a packet reads before hashing its
/// key. A packet whose slot is all zeros belongs to no tracked and no
/// half-open connection, and its work ends there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Never below the number of `FLOWS` entries whose key hashes here: the
    /// kernel adds one before it inserts an entry, and whoever removes one
    /// (the kernel on a valid close, the agent on idle expiry) subtracts
    /// one after. Updated with atomic adds only.
    pub flows: u64,
    /// The agent's clock when a SYN or SYN-ACK of a half-open connection
    /// hashing here was last seen, 0 when none is recent: the segment that
    /// completes the handshake looks in `HALF_OPEN` only then. The agent
    /// clears marks older than [`HALF_OPEN_TTL_NS`] once no half-open entry
    /// hashes here.
    pub syn_ns: u64,
}

const _: () = assert!(size_of::<Filter>() == 16);

/// How long a half-open entry, and a `Filter::syn_ns` mark, last without a
/// new SYN or SYN-ACK: longer than the kernel's handshake retransmissions
/// (about a minute) and than a SYN cookie stays valid (a few minutes), so
/// a handshake that completes late is still found.
pub const HALF_OPEN_TTL_NS: u64 = 300_000_000_000;

/// How long the agent keeps an entry the kernel programs saw close (a RST,
/// or a FIN each way) on a path with a `block` rule: they keep enforcing
/// until then (see `Flow::reset`).
pub const CLOSED_LINGER_NS: u64 = 10_000_000_000;

/// The `FLOW_FILTER` slot of a connection between `a:a_port` and
/// `b:b_port`; symmetric, so both directions of a connection share it.
#[inline(always)]
pub const fn filter_slot(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> u32 {
    let (a, b) = (a.words(), b.words());
    let addrs = (a[0] ^ a[1] ^ a[2] ^ a[3]).wrapping_add(b[0] ^ b[1] ^ b[2] ^ b[3]);
    let ports = (a_port as u32).wrapping_add(b_port as u32);
    // Fibonacci hashing: the top bits of the product are well mixed.
    (addrs ^ ports.rotate_left(16)).wrapping_mul(0x9e37_79b1)
        >> (32 - FILTER_SLOTS.trailing_zeros())
}

/// Words of the `FLOW_COUNT` map.
pub mod flow_count {
    /// Entries in `FLOWS` now (atomic adds by the kernel and the agent).
    pub const ENTRIES: u32 = 0;
    /// The capacity of `FLOWS`, written by the agent at load.
    pub const CAPACITY: u32 = 1;
    /// Number of words.
    pub const WORDS: u32 = 2;
}

impl FlowKey {
    /// This key's `FLOW_FILTER` counter (see [`filter_slot`]).
    #[inline(always)]
    pub const fn filter_slot(&self) -> u32 {
        filter_slot(&self.lo, self.lo_port, &self.hi, self.hi_port)
    }

    /// (client, client port, server, server port) of the connection `flow`
    /// describes.
    #[inline(always)]
    pub const fn ends(&self, flow: &Flow) -> (Addr, u16, Addr, u16) {
        if flow.client_is_lo != 0 {
            (self.lo, self.lo_port, self.hi, self.hi_port)
        } else {
            (self.hi, self.hi_port, self.lo, self.lo_port)
        }
    }
}

/// Value of the `CONNECTS` map (key: socket cookie): what a local client's
/// `connect()` said, before any address translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The destination the process asked for (e.g. the `kubernetes` VIP).
    pub orig: Addr,
    /// Its port, host byte order.
    pub orig_port: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
    /// Who called `connect()`.
    pub caller: Caller,
}

const _: () = assert!(size_of::<Connect>() == 40);

/// A process on this node: the one that called `connect()`, named in the
/// violation events of its connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// Process id (thread group id).
    pub pid: u32,
    /// Command name, NUL-padded.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<Caller>() == 20);

/// Index of the client→server direction in per-direction arrays.
pub const C2S: usize = 0;
/// Index of the server→client direction in per-direction arrays.
pub const S2C: usize = 1;

/// [`Flow::protocol`] while no decision has been made.
pub const UNDECIDED: u8 = 0xff;

/// Value of the `FLOWS` hash (and of `HALF_OPEN`, until the handshake
/// completes): what is known about one tracked connection.
///
/// The ingress and egress programs update an entry from several CPUs at
/// once. So every flag is a byte of its own, set with a plain store (no
/// read-modify-write of shared bits), and the decision (protocol and
/// verdict) is one aligned 16-bit store ([`Flow::set_decision`]): no CPU
/// can see a protocol without its verdict.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The [`crate::path::Path`] discriminant.
    pub path: u8,
    /// 1 when the key's `lo` end is the client.
    pub client_is_lo: u8,
    /// The [`Protocol`] discriminant, or [`UNDECIDED`].
    pub protocol: u8,
    /// The [`crate::policy::Verdict`] discriminant, valid once decided.
    pub verdict: u8,
    /// Per direction ([`C2S`], [`S2C`]): 1 once the start sequence is known.
    pub started: [u8; 2],
    /// Per direction: 1 once a valid FIN went that way.
    pub fin: [u8; 2],
    /// Per direction: the sequence number after the last byte let through,
    /// so retransmissions and the second sighting of a segment (both ends
    /// on this node) are not counted twice, and a RST can be checked.
    pub next_seq: [u32; 2],
    /// Per direction: the sequence number of the first payload byte.
    pub start_seq: [u32; 2],
    /// How many leading bytes of the client's stream are in `prefix`.
    pub prefix_len: u32,
    /// The server's ISN + 1 (from its SYN-ACK), 0 if not seen: what the
    /// client's handshake-completing ACK acknowledges.
    pub server_start: u32,
    /// The client's first bytes, in stream order, for detection.
    pub prefix: Prefix,
    /// The agent's clock (`CLOCK`) when the connection was first seen.
    pub created_ns: u64,
    /// The same clock at the connection's last segment; the agent removes
    /// entries idle for longer than `--flow-idle-timeout` (connections that
    /// vanished without a FIN or RST passing our hooks).
    pub last_ns: u64,
    /// Socket cookie of the client's socket when the client is on this node
    /// (0 otherwise): the key of its `CONNECTS` entry (process, original
    /// destination).
    pub client_cookie: u64,
    /// 1 once a valid RST was seen on a path with a `block` rule: the entry
    /// stays (a RST the receiver discarded must not end enforcement), every
    /// later payload segment is dropped, and the agent removes it after a
    /// short linger, destroying any socket still there.
    pub reset: u8,
    /// Explicit padding, always 0.
    pub _pad0: u8,
    /// Bytes this connection may still put in the `HEADS` ring, records'
    /// headers included (see `observer_common::head`): set at a violating
    /// decision, so that no connection can flood the ring with copies
    /// (retransmissions, one-byte segments). 0 in the entries of earlier
    /// agents, which were padding there: their connections get no copies.
    pub head_budget: u16,
    /// Explicit padding, always 0. (The layout differs from the 72-byte one
    /// of earlier agents by its size too, so their pinned tables are
    /// recreated rather than misread: see `observer/src/pin.rs`.)
    pub _pad: [u8; 4],
}

const _: () = assert!(size_of::<Flow>() == 80);
const _: () = assert!(core::mem::offset_of!(Flow, protocol) % 2 == 0);

impl Flow {
    /// A new entry for a connection seen at its SYN with sequence `isn`.
    #[inline(always)]
    pub const fn new(path: u8, client_is_lo: bool, isn: u32, now_ns: u64) -> Self {
        let start = isn.wrapping_add(1);
        Self {
            path,
            client_is_lo: client_is_lo as u8,
            protocol: UNDECIDED,
            verdict: 0,
            started: [1, 0],
            fin: [0; 2],
            next_seq: [start, 0],
            start_seq: [start, 0],
            prefix_len: 0,
            server_start: 0,
            prefix: [0; 2],
            created_ns: now_ns,
            last_ns: now_ns,
            client_cookie: 0,
            reset: 0,
            _pad0: 0,
            head_budget: 0,
            _pad: [0; 4],
        }
    }

    /// The direction of a packet whose source is (or is not) the key's `lo`.
    #[inline(always)]
    pub const fn direction(&self, src_is_lo: bool) -> usize {
        if src_is_lo == (self.client_is_lo != 0) {
            C2S
        } else {
            S2C
        }
    }

    /// The decided protocol, if any.
    pub const fn protocol(&self) -> Option<Protocol> {
        Protocol::from_u8(self.protocol)
    }

    /// (protocol, verdict), read at once.
    #[inline(always)]
    pub fn decision(&self) -> (u8, u8) {
        // SAFETY: `protocol` is 2-aligned (asserted above) and followed by
        // `verdict`: one aligned 16-bit load of two fields of `self`.
        let both = unsafe { core::ptr::read_volatile((&raw const self.protocol).cast::<u16>()) };
        let [protocol, verdict] = both.to_le_bytes();
        (protocol, verdict)
    }

    /// Sets protocol and verdict with one store.
    #[inline(always)]
    pub fn set_decision(&mut self, protocol: u8, verdict: u8) {
        // SAFETY: as in `decision`, for a store.
        unsafe {
            core::ptr::write_volatile(
                (&raw mut self.protocol).cast::<u16>(),
                u16::from_le_bytes([protocol, verdict]),
            );
        }
    }

    /// Records the first sequence number of direction `dir` (from a SYN or
    /// SYN-ACK: `seq` is the ISN, the first byte comes after it).
    #[inline(always)]
    pub fn start(&mut self, dir: usize, isn: u32) {
        let d = dir & 1;
        if self.started[d] == 0 {
            let start = isn.wrapping_add(1);
            self.start_seq[d] = start;
            self.next_seq[d] = start;
            self.started[d] = 1;
        }
    }

    /// Accounts a segment of `len` payload bytes at `seq` in direction `dir`
    /// and returns how many of them are new (not seen before).
    #[inline(always)]
    pub fn new_bytes(&mut self, dir: usize, seq: u32, len: u32) -> u32 {
        let d = dir & 1;
        if self.started[d] == 0 {
            // We missed this direction's handshake: start at this segment.
            self.start_seq[d] = seq;
            self.next_seq[d] = seq;
            self.started[d] = 1;
        }
        let end = seq.wrapping_add(len);
        let next = self.next_seq[d];
        if (end.wrapping_sub(next) as i32) <= 0 {
            return 0;
        }
        self.next_seq[d] = end;
        if (seq.wrapping_sub(next) as i32) >= 0 {
            len
        } else {
            end.wrapping_sub(next)
        }
    }

    /// Where a client segment at `seq` sits relative to the bytes detection
    /// has: [`Place::Prefix`] with its stream offset when it starts inside
    /// or right after them, [`Place::Hole`] when bytes before it are
    /// missing, [`Place::Before`] when it starts before the stream (old or
    /// crafted data the server discards).
    #[inline(always)]
    pub fn place(&self, seq: u32) -> Place {
        let off = seq.wrapping_sub(self.start_seq[C2S]);
        if (off as i32) < 0 {
            Place::Before
        } else if off <= self.prefix_len && off < PREFIX_LEN as u32 {
            Place::Prefix(off as usize)
        } else {
            Place::Hole
        }
    }

    /// True when `n` bytes (`bytes`, packed) starting at stream offset `off`
    /// agree with the prefix wherever both have bytes: a receiver that
    /// keeps what it queued first sees the same stream either way.
    #[inline(always)]
    pub fn agrees(&self, off: usize, bytes: &Prefix, n: usize) -> bool {
        let have = self.prefix_len as usize;
        let end = if off + n > have { have } else { off + n };
        if off >= end {
            return true;
        }
        let shifted = shift_up(bytes, off);
        let overlap = first_bytes(end);
        let before = first_bytes(off);
        ((shifted[0] ^ self.prefix[0]) & overlap[0] & !before[0]) == 0
            && ((shifted[1] ^ self.prefix[1]) & overlap[1] & !before[1]) == 0
    }

    /// True when the connection is over as far as the kernel programs
    /// know (a valid RST, or a valid FIN each way).
    pub const fn closed(&self) -> bool {
        self.reset != 0 || (self.fin[C2S] != 0 && self.fin[S2C] != 0)
    }

    /// Adds `n` bytes (`bytes`, packed), which start at stream offset `off`,
    /// to the prefix, keeping what is already there (as the receiving TCP
    /// keeps the bytes it queued first).
    #[inline(always)]
    pub fn merge_prefix(&mut self, off: usize, bytes: &Prefix, n: usize) {
        let have = self.prefix_len as usize;
        let end = if off + n > PREFIX_LEN {
            PREFIX_LEN
        } else {
            off + n
        };
        if end <= have {
            return;
        }
        let shifted = shift_up(bytes, off);
        let old = first_bytes(have);
        let new = first_bytes(end);
        self.prefix[0] |= shifted[0] & new[0] & !old[0];
        self.prefix[1] |= shifted[1] & new[1] & !old[1];
        self.prefix_len = end as u32;
    }
}

/// Where a client segment falls, for detection ([`Flow::place`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// At this stream offset, inside or right after the bytes we have.
    Prefix(usize),
    /// Beyond a gap: the receiver would hold it until the gap is filled.
    Hole,
    /// Before the first byte of the stream.
    Before,
}

/// Moves packed bytes `off` positions up the stream (`off` in `0..16`).
#[inline(always)]
fn shift_up(w: &Prefix, off: usize) -> Prefix {
    let bits = (8 * off) as u32;
    if off == 0 {
        *w
    } else if off < 8 {
        [
            w[0].wrapping_shl(bits),
            w[1].wrapping_shl(bits) | w[0].wrapping_shr(64 - bits),
        ]
    } else if off < PREFIX_LEN {
        [0, w[0].wrapping_shl(bits - 64)]
    } else {
        [0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Detection, detect, pack};

    fn a(last: u8) -> Addr {
        Addr::from_v4([198, 18, 0, last])
    }

    #[test]
    fn both_directions_share_a_key() {
        let (k1, lo1) = FlowKey::new(a(1), 40000, a(2), 8080);
        let (k2, lo2) = FlowKey::new(a(2), 8080, a(1), 40000);
        assert_eq!(k1, k2);
        assert_ne!(lo1, lo2);
        let mut f = Flow::new(3, lo1, 100, 0);
        assert_eq!(f.direction(lo1), C2S);
        assert_eq!(f.decision(), (UNDECIDED, 0));
        f.set_decision(Protocol::Tls as u8, 2);
        assert_eq!((f.protocol, f.verdict), (Protocol::Tls as u8, 2));
        assert_eq!(f.decision(), (Protocol::Tls as u8, 2));
        assert_eq!(f.direction(lo2), S2C);
        assert_eq!(k1.ends(&f), (a(1), 40000, a(2), 8080));
        let g = Flow::new(3, lo2, 100, 0);
        assert_eq!(k2.ends(&g), (a(2), 8080, a(1), 40000));
    }

    #[test]
    fn filter_slots_are_symmetric_and_spread() {
        let v6 = Addr([0x20, 1, 0x0d, 0xb8, 0, 0x16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        for (x, xp, y, yp) in [(a(1), 40000, a(2), 8080), (v6, 443, a(7), 1)] {
            let s = filter_slot(&x, xp, &y, yp);
            assert_eq!(s, filter_slot(&y, yp, &x, xp));
            assert!(s < FILTER_SLOTS);
            assert_eq!(FlowKey::new(x, xp, y, yp).0.filter_slot(), s);
        }
        // One client's connections to one server land in many slots.
        let mut seen = [0u32; 1000];
        for (i, port) in (32768..33768).enumerate() {
            seen[i] = filter_slot(&a(1), port, &a(2), 6443);
        }
        seen.sort_unstable();
        let distinct = 1 + seen.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(distinct > 900, "{distinct} distinct slots of 1000");
    }

    #[test]
    fn retransmissions_and_second_sightings_count_once() {
        let mut f = Flow::new(3, true, 999, 0);
        assert_eq!(f.new_bytes(C2S, 1000, 10), 10);
        assert_eq!(f.new_bytes(C2S, 1000, 10), 0, "same segment again");
        assert_eq!(f.new_bytes(C2S, 1005, 10), 5, "overlapping retransmission");
        assert_eq!(f.new_bytes(C2S, 1015, 0), 0);
        // The server side was never started: its first segment starts it.
        assert_eq!(f.new_bytes(S2C, 7, 3), 3);
        assert_eq!(f.new_bytes(S2C, 7, 3), 0);
    }

    #[test]
    fn sequence_wraps() {
        let mut f = Flow::new(3, true, u32::MAX - 2, 0);
        assert_eq!(f.new_bytes(C2S, u32::MAX - 1, 4), 4);
        assert_eq!(f.next_seq[C2S], 2);
        assert_eq!(f.new_bytes(C2S, 2, 4), 4);
        assert_eq!(f.place(u32::MAX - 1), Place::Prefix(0));
        assert_eq!(f.place(1), Place::Hole, "past the empty prefix");
        assert_eq!(f.place(u32::MAX - 3), Place::Before);
    }

    /// A request line sent one byte per segment, with a duplicate and an
    /// early segment in between, is assembled in order.
    #[test]
    fn prefix_assembles_tiny_segments() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut f = Flow::new(3, true, 0, 0);
        let mut decided = None;
        let feed = |f: &mut Flow, seq: u32, bytes: &[u8]| {
            if let Place::Prefix(off) = f.place(seq) {
                f.merge_prefix(off, &pack(bytes), bytes.len().min(PREFIX_LEN));
            }
        };
        feed(&mut f, 5, &req[4..6]); // ahead of a hole: ignored
        assert_eq!(f.prefix_len, 0);
        for (i, b) in req.iter().enumerate() {
            feed(&mut f, 1 + i as u32, &[*b]);
            feed(&mut f, 1 + i as u32, &[*b]); // the other end's sighting
            if let Detection::Decided(p) = detect(&f.prefix, f.prefix_len as usize, false) {
                decided = Some((p, i + 1));
                break;
            }
        }
        assert_eq!(decided, Some((Protocol::Http, 4)));
        assert_eq!(f.prefix, pack(b"GET "));
    }

    #[test]
    fn agreement_is_checked_on_the_overlap_only() {
        let mut f = Flow::new(3, true, 0, 0);
        f.merge_prefix(
            0,
            &pack(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            11,
        );
        assert!(f.agrees(0, &pack(b"\x16\x03\x01"), 3), "a retransmission");
        assert!(
            f.agrees(9, &pack(b"\x03\x03MORE"), 6),
            "overlap, then new bytes"
        );
        assert!(f.agrees(11, &pack(b"anything"), 8), "past the prefix");
        assert!(
            !f.agrees(0, &pack(b"GET / HTTP/1.1\r\n"), 16),
            "other bytes at 0"
        );
        assert!(!f.agrees(10, &pack(b"XY"), 2), "one byte differs");
        let empty = Flow::new(3, true, 0, 0);
        assert!(
            empty.agrees(0, &pack(b"GET "), 4),
            "nothing to disagree with"
        );
    }

    #[test]
    fn merge_keeps_old_bytes_and_spans_words() {
        let mut f = Flow::new(3, true, 0, 0);
        f.merge_prefix(0, &pack(b"PRI * H"), 7);
        f.merge_prefix(5, &pack(b"XXTTP/2.0\r\n\r\nSM"), 14); // overlaps "H"; old bytes win
        assert_eq!(f.prefix_len, 16);
        assert_eq!(f.prefix, pack(b"PRI * HTTP/2.0\r\n"));
        for off in 0..PREFIX_LEN {
            let mut g = Flow::new(3, true, 0, 0);
            g.prefix_len = off as u32;
            g.merge_prefix(off, &pack(&[0xab; 16]), 16);
            let mut want = [0u8; 16];
            want[off..].fill(0xab);
            assert_eq!(g.prefix, pack(&want), "offset {off}");
        }
    }
}
