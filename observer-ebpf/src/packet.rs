//! Reading the IPv4/IPv6 and TCP headers of a packet.
//!
//! A `cgroup_skb` program sees the packet from its network header. Anything
//! that is not a TCP segment is [`Parsed::NotTcp`]: passed untouched, at as
//! little cost as possible. What might be TCP but hides its header from us
//! is [`Parsed::Unreadable`]: the receiving stack may read further than we
//! do, so enforcement must not take it for "not ours".

use core::mem::offset_of;

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::SkBuffContext};
use observer_common::config::Addr;
use observer_common::protocol::{PREFIX_LEN, Prefix};

/// TCP flag bits ([`TcpHdr::flags`]).
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// The IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers walked before giving up.
const MAX_V6_EXT_HEADERS: usize = 6;

/// The IPv4 header without options. Multi-byte fields are in network
/// byte order, addresses as the word their bytes make in memory order.
#[repr(C)]
struct Ipv4Hdr {
    /// Version (high nibble, in both families) and header length in
    /// words (low nibble).
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    /// Flags (top 3 bits) and fragment offset.
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// The fixed IPv6 header.
#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: u32,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

/// The start of an IPv6 Hop-by-Hop, Routing, Destination Options or
/// Authentication header: all [`skip_v6_ext_headers`] reads of one.
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    /// Length in units that depend on the header type.
    len: u8,
}

/// The start of an IPv6 Fragment header, up to its fragment offset: all
/// [`skip_v6_ext_headers`] reads of one. The whole header is
/// [`V6_FRAG_HDR_LEN`] bytes.
#[repr(C)]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    /// Fragment offset (top 13 bits) and flags.
    frag_off: u16,
}

/// Length of an IPv6 Fragment header: [`Ipv6FragHdr`] and a 32-bit
/// identification.
const V6_FRAG_HDR_LEN: u32 = 8;

/// The TCP header without options.
#[repr(C)]
struct TcpHdr {
    source: u16,
    dest: u16,
    seq: u32,
    ack_seq: u32,
    /// Data offset in words (high nibble).
    doff: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

const _: () = assert!(
    size_of::<Ipv4Hdr>() == 20
        && size_of::<Ipv6Hdr>() == 40
        && size_of::<Ipv6ExtHdr>() == 2
        && size_of::<Ipv6FragHdr>() == 4
        && size_of::<TcpHdr>() == 20
);

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
    // An IPv4 header without options is the smallest of both families.
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, end, 0) else {
        return parse_copied(ctx);
    };
    // SAFETY (every read below): `ptr_at` proved the header inside the
    // packet; the verifier checks the same.
    let first = unsafe { (*ip).version_ihl };
    let (src, dst, l4_off) = match first >> 4 {
        4 => {
            let (proto, frag, src, dst) =
                unsafe { ((*ip).protocol, (*ip).frag_off, (*ip).saddr, (*ip).daddr) };
            let ihl = usize::from(first & 0x0f) * 4;
            if proto != IPPROTO_TCP || ihl < size_of::<Ipv4Hdr>() {
                return Parsed::NotTcp;
            }
            if u16::from_be(frag) & 0x1fff != 0 {
                return Parsed::Unreadable;
            }
            (Addr::from_v4_word(src), Addr::from_v4_word(dst), ihl)
        }
        6 => {
            let Some(ip) = ptr_at::<Ipv6Hdr>(data, end, 0) else {
                return parse_copied(ctx);
            };
            if unsafe { (*ip).next_header } != IPPROTO_TCP {
                return parse_copied(ctx); // extension headers, or not TCP
            }
            let (src, dst) = unsafe { ((*ip).saddr, (*ip).daddr) };
            (
                Addr::from_words(src),
                Addr::from_words(dst),
                size_of::<Ipv6Hdr>(),
            )
        }
        _ => return Parsed::NotTcp,
    };
    let Some(tcp) = ptr_at::<TcpHdr>(data, end, l4_off) else {
        return parse_copied(ctx);
    };
    let (sport, dport, seq, ack, doff, flags) = unsafe {
        (
            (*tcp).source,
            (*tcp).dest,
            (*tcp).seq,
            (*tcp).ack_seq,
            (*tcp).doff,
            (*tcp).flags,
        )
    };
    segment(
        ctx,
        src,
        dst,
        l4_off as u32,
        [u16::from_be(sport), u16::from_be(dport)],
        [u32::from_be(seq), u32::from_be(ack)],
        [doff, flags],
    )
}

/// A `T` at `off` from the network header in the linear part of the skb
/// (`data..end`, from [`bounds`]), or `None` if it does not fit.
///
/// Read its fields with plain loads: the packet gives no alignment, but the
/// verifier accepts unaligned packet loads on architectures with efficient
/// unaligned access (x86-64, arm64), and `read_unaligned` would make LLVM
/// split each load into single bytes.
#[inline(always)]
fn ptr_at<T>(data: usize, end: usize, off: usize) -> Option<*const T> {
    let p = data + off;
    // (A check against a 1-byte size would let LLVM rewrite it into
    // `p >= end`, a form the verifier does not follow.)
    if p + size_of::<T>() > end {
        return None;
    }
    Some(p as *const T)
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
    if doff < size_of::<TcpHdr>() as u32 || payload_off > len {
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
            let Ok(ip) = ctx.load::<Ipv4Hdr>(0) else {
                return Parsed::NotTcp;
            };
            let ihl = u32::from(ip.version_ihl & 0x0f) * 4;
            if ip.protocol != IPPROTO_TCP || ihl < size_of::<Ipv4Hdr>() as u32 {
                return Parsed::NotTcp;
            }
            if u16::from_be(ip.frag_off) & 0x1fff != 0 {
                return Parsed::Unreadable;
            }
            (
                Addr::from_v4_word(ip.saddr),
                Addr::from_v4_word(ip.daddr),
                ihl,
            )
        }
        6 => {
            let Ok(next) = ctx.load::<u8>(offset_of!(Ipv6Hdr, next_header)) else {
                return Parsed::NotTcp;
            };
            let Ok(src) = ctx.load::<Addr>(offset_of!(Ipv6Hdr, saddr)) else {
                return Parsed::NotTcp;
            };
            let Ok(dst) = ctx.load::<Addr>(offset_of!(Ipv6Hdr, daddr)) else {
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
    let Ok(tcp) = ctx.load::<TcpHdr>(l4_off as usize) else {
        return Parsed::NotTcp;
    };
    segment(
        ctx,
        src,
        dst,
        l4_off,
        [u16::from_be(tcp.source), u16::from_be(tcp.dest)],
        [u32::from_be(tcp.seq), u32::from_be(tcp.ack_seq)],
        [tcp.doff, tcp.flags],
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
    let mut off = size_of::<Ipv6Hdr>() as u32;
    for _ in 0..MAX_V6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return Transport::Tcp(off),
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let Ok(h) = ctx.load::<Ipv6ExtHdr>(off as usize) else {
                    return Transport::Other;
                };
                next = h.next_header;
                off += (u32::from(h.len) + 1) * 8;
            }
            FRAGMENT => {
                let Ok(h) = ctx.load::<Ipv6FragHdr>(off as usize) else {
                    return Transport::Other;
                };
                if u16::from_be(h.frag_off) & 0xfff8 != 0 {
                    // Not the first fragment: a TCP header is in another
                    // packet.
                    return if h.next_header == IPPROTO_TCP {
                        Transport::Unknown
                    } else {
                        Transport::Other
                    };
                }
                next = h.next_header;
                off += V6_FRAG_HDR_LEN;
            }
            AUTH => {
                let Ok(h) = ctx.load::<Ipv6ExtHdr>(off as usize) else {
                    return Transport::Other;
                };
                next = h.next_header;
                off += (u32::from(h.len) + 2) * 4;
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
        if let Some(p) = ptr_at::<Prefix>(data, end, seg.payload_off as usize) {
            // SAFETY: `ptr_at` proved it inside the packet.
            *buf = unsafe { *p };
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
