//! Reading the IPv4/IPv6 and TCP headers of a packet.
//!
//! A `cgroup_skb` program sees the packet from its network header. Anything
//! that is not a TCP segment is [`Parsed::NotTcp`]: passed untouched, at as
//! little cost as possible. What might be TCP but hides its header from us
//! is [`Parsed::Unreadable`]: the receiving stack may read further than we
//! do, so enforcement must not take it for "not ours".

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::SkBuffContext};
use observer_common::config::Addr;
use observer_common::protocol::{PREFIX_LEN, Prefix};

/// TCP flag bits (byte 13 of the header).
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers walked before giving up.
const MAX_V6_EXT_HEADERS: usize = 6;

/// The parts of a TCP segment the programs use.
pub struct Segment {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    /// The acknowledgment number (meaningful with [`ACK`]).
    pub ack: u32,
    pub flags: u8,
    /// Offset of the first payload byte from the network header.
    pub payload_off: u32,
    /// Payload bytes in this skb (all of a GSO/GRO super-packet).
    pub payload_len: u32,
}

/// What [`parse`] found.
pub enum Parsed {
    /// A TCP segment.
    Segment(Segment),
    /// Not TCP, or not a packet we could read at all (truncated headers).
    NotTcp,
    /// Maybe TCP, with its header where we cannot see it: an IPv6
    /// extension header chain longer than we walk, or a fragment that does
    /// not carry the TCP header.
    Unreadable,
}

/// Parses the packet.
///
/// The common case, headers in the linear part of the skb and IPv6 without
/// extension headers, is read in place (direct packet access): no helper
/// call, no copy. Anything else takes [`parse_copied`].
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Parsed {
    let (data, end) = bounds(ctx);
    // 20 bytes: an IPv4 header without options, the smallest of both
    // families. (Checking for 1 byte would let LLVM rewrite the check into
    // `data >= end`, a form the verifier does not follow.)
    if data + 20 > end {
        return parse_copied(ctx);
    }
    // SAFETY (every read below): the bounds check before it proves the
    // bytes are inside the packet; the verifier checks the same.
    let first = unsafe { *(data as *const u8) };
    let (src, dst, tcp) = match first >> 4 {
        4 => {
            let (proto, frag, src, dst) = unsafe {
                (
                    *((data + 9) as *const u8),
                    *((data + 6) as *const u16),
                    *((data + 12) as *const u32),
                    *((data + 16) as *const u32),
                )
            };
            let ihl = usize::from(first & 0x0f) * 4;
            if proto != IPPROTO_TCP || ihl < 20 {
                return Parsed::NotTcp;
            }
            if u16::from_be(frag) & 0x1fff != 0 {
                return Parsed::Unreadable;
            }
            (Addr::from_v4_word(src), Addr::from_v4_word(dst), data + ihl)
        }
        6 => {
            if data + 40 > end {
                return parse_copied(ctx);
            }
            if unsafe { *((data + 6) as *const u8) } != IPPROTO_TCP {
                return parse_copied(ctx); // extension headers, or not TCP
            }
            let (src, dst) = unsafe {
                (
                    *((data + 8) as *const [u32; 4]),
                    *((data + 24) as *const [u32; 4]),
                )
            };
            (Addr::from_words(src), Addr::from_words(dst), data + 40)
        }
        _ => return Parsed::NotTcp,
    };
    if tcp + 20 > end {
        return parse_copied(ctx);
    }
    let (ports, seq, ack, doff_flags) = unsafe {
        (
            *(tcp as *const [u16; 2]),
            *((tcp + 4) as *const u32),
            *((tcp + 8) as *const u32),
            *((tcp + 12) as *const [u8; 2]),
        )
    };
    segment(
        ctx,
        src,
        dst,
        (tcp - data) as u32,
        [u16::from_be(ports[0]), u16::from_be(ports[1])],
        [u32::from_be(seq), u32::from_be(ack)],
        doff_flags,
    )
}

/// Where the linear part of the skb starts (the network header) and ends.
#[inline(always)]
fn bounds(ctx: &SkBuffContext) -> (usize, usize) {
    // SAFETY: two plain reads of the program's context.
    unsafe {
        let skb = ctx.skb.skb;
        ((*skb).data as usize, (*skb).data_end as usize)
    }
}

/// Largest payload offset [`load_prefix`] reads in place (IPv4 and TCP
/// headers full of options); a bound the verifier needs, too.
const MAX_LINEAR_PAYLOAD_OFF: u32 = 120;

// `load_prefix` bounds a length by masking with `PREFIX_LEN - 1`.
const _: () = assert!(PREFIX_LEN.is_power_of_two());

/// The rest of [`parse`] once the addresses and the TCP header are read.
#[inline(always)]
fn segment(
    ctx: &SkBuffContext,
    src: Addr,
    dst: Addr,
    l4_off: u32,
    ports: [u16; 2],
    [seq, ack]: [u32; 2],
    [doff, flags]: [u8; 2],
) -> Parsed {
    let len = ctx.len();
    let doff = u32::from(doff >> 4) * 4;
    let payload_off = l4_off + doff;
    if doff < 20 || payload_off > len {
        return Parsed::NotTcp; // the receiving stack discards it too
    }
    Parsed::Segment(Segment {
        src,
        dst,
        sport: ports[0],
        dport: ports[1],
        seq,
        ack,
        flags,
        payload_off,
        payload_len: len - payload_off,
    })
}

/// [`parse`] for packets whose headers are not all in the linear part of
/// the skb, or that carry IPv6 extension headers: copies them out with
/// `bpf_skb_load_bytes`. A subprogram of its own so its copies stay off
/// the caller's stack.
#[inline(never)]
fn parse_copied(ctx: &SkBuffContext) -> Parsed {
    // A header we cannot read is a truncated packet, which no stack
    // accepts: not a segment of ours.
    let Ok(first) = ctx.load::<u8>(0) else {
        return Parsed::NotTcp;
    };
    let (src, dst, l4_off) = match first >> 4 {
        4 => {
            // Words as in memory: byte 0 of the header is the low byte.
            let Ok(ip) = ctx.load::<[u32; 5]>(0) else {
                return Parsed::NotTcp;
            };
            let ihl = (ip[0] & 0x0f) * 4;
            let frag = u16::from_be((ip[1] >> 16) as u16) & 0x1fff;
            let proto = (ip[2] >> 8) as u8;
            if proto != IPPROTO_TCP || ihl < 20 {
                return Parsed::NotTcp;
            }
            if frag != 0 {
                return Parsed::Unreadable;
            }
            (Addr::from_v4_word(ip[3]), Addr::from_v4_word(ip[4]), ihl)
        }
        6 => {
            let Ok(next) = ctx.load::<u8>(6) else {
                return Parsed::NotTcp;
            };
            let Ok(src) = ctx.load::<Addr>(8) else {
                return Parsed::NotTcp;
            };
            let Ok(dst) = ctx.load::<Addr>(24) else {
                return Parsed::NotTcp;
            };
            match skip_v6_ext_headers(ctx, next) {
                Transport::Tcp(off) => (src, dst, off),
                Transport::Other => return Parsed::NotTcp,
                Transport::Unknown => return Parsed::Unreadable,
            }
        }
        _ => return Parsed::NotTcp,
    };
    let Ok(tcp) = ctx.load::<[u32; 4]>(l4_off as usize) else {
        return Parsed::NotTcp;
    };
    let ports = tcp[0].to_ne_bytes();
    let doff_flags = tcp[3].to_ne_bytes();
    segment(
        ctx,
        src,
        dst,
        l4_off,
        [
            u16::from_be_bytes([ports[0], ports[1]]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ],
        [u32::from_be(tcp[1]), u32::from_be(tcp[2])],
        [doff_flags[0], doff_flags[1]],
    )
}

/// Where [`skip_v6_ext_headers`] ended.
enum Transport {
    /// TCP, its header at this offset.
    Tcp(u32),
    /// Another transport, or a header the receiving stack cannot pass
    /// either.
    Other,
    /// Past what we walk: a longer chain, or a later fragment.
    Unknown,
}

/// Walks IPv6 extension headers from `next` (the fixed header's Next
/// Header) to the transport header.
#[inline(always)]
fn skip_v6_ext_headers(ctx: &SkBuffContext, mut next: u8) -> Transport {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let mut off: u32 = 40;
    for _ in 0..MAX_V6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return Transport::Tcp(off),
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let Ok(h) = ctx.load::<[u8; 2]>(off as usize) else {
                    return Transport::Other;
                };
                next = h[0];
                off += (u32::from(h[1]) + 1) * 8;
            }
            FRAGMENT => {
                let Ok(h) = ctx.load::<[u8; 4]>(off as usize) else {
                    return Transport::Other;
                };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    // Not the first fragment: a TCP header is in another
                    // packet.
                    return if h[0] == IPPROTO_TCP {
                        Transport::Unknown
                    } else {
                        Transport::Other
                    };
                }
                next = h[0];
                off += 8;
            }
            AUTH => {
                let Ok(h) = ctx.load::<[u8; 2]>(off as usize) else {
                    return Transport::Other;
                };
                next = h[0];
                off += (u32::from(h[1]) + 2) * 4;
            }
            // UDP, ICMPv6, ESP, No Next Header, or a type the receiving
            // stack rejects as well.
            _ => return Transport::Other,
        }
    }
    if next == IPPROTO_TCP {
        Transport::Tcp(off)
    } else if matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | AUTH | DEST_OPTS) {
        Transport::Unknown
    } else {
        Transport::Other
    }
}

/// Copies the first `min(payload_len, PREFIX_LEN)` payload bytes of `seg`
/// into `buf` (packed as `Prefix`: little-endian words) and returns how many.
/// A subprogram: inlined into a busy caller, LLVM spills the packet
/// pointers, and the verifiers of 5.10 and 6.1 then lose their bounds.
#[inline(never)]
pub fn load_prefix(ctx: &SkBuffContext, seg: &Segment, buf: &mut Prefix) -> Result<usize, ()> {
    // The usual first payload (a TLS ClientHello, an HTTP request) has 16
    // bytes in the linear part of the skb: read them in place.
    if seg.payload_len >= PREFIX_LEN as u32 && seg.payload_off <= MAX_LINEAR_PAYLOAD_OFF {
        let (data, end) = bounds(ctx);
        let p = data + seg.payload_off as usize;
        if p + PREFIX_LEN <= end {
            // SAFETY: checked inside the packet just above.
            *buf = unsafe { *(p as *const Prefix) };
            return Ok(PREFIX_LEN);
        }
    }
    let n = seg.payload_len.min(PREFIX_LEN as u32);
    if n == 0 {
        return Ok(0);
    }
    // Verifier-only: the helper needs a length it can prove is in 1..=16.
    // The verifiers of 5.10 and 6.1 learn nothing from `n != 0`, so the
    // bound comes from arithmetic instead: `((n - 1) & 15) + 1` is `n` for
    // `n` in 1..=16, and provably in 1..=16 to every verifier. `black_box` keeps
    // LLVM from folding it back into `n`.
    let n = (core::hint::black_box(n - 1) & (PREFIX_LEN as u32 - 1)) + 1;
    // SAFETY: `buf` has room for `n <= PREFIX_LEN` bytes.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            seg.payload_off,
            buf.as_mut_ptr().cast(),
            n,
        )
    };
    if ret == 0 { Ok(n as usize) } else { Err(()) }
}
