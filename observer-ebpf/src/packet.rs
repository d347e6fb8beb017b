//! Reading the IPv4/IPv6 and TCP headers of a packet.
//!
//! A `cgroup_skb` program sees the packet from its network header. Anything
//! that is not a well-formed TCP segment yields `None`: such packets are
//! passed untouched and cost as little as possible.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::SkBuffContext};
use observer_common::config::Addr;
use observer_common::protocol::{PREFIX_LEN, Prefix};

/// TCP flag bits (byte 13 of the header).
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

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
    pub flags: u8,
    /// Offset of the first payload byte from the network header.
    pub payload_off: u32,
    /// Payload bytes in this skb (all of a GSO/GRO super-packet).
    pub payload_len: u32,
}

/// Parses the packet, or `None` when it is not a TCP segment we can read.
/// A subprogram of its own so its header copies stay off the caller's stack.
#[inline(never)]
pub fn parse(ctx: &SkBuffContext) -> Option<Segment> {
    // A header we cannot read is a truncated packet: not a segment of ours.
    let Ok(first) = ctx.load::<u8>(0) else {
        return None;
    };
    let (src, dst, l4_off) = match first >> 4 {
        4 => {
            let Ok(ip) = ctx.load::<[u8; 20]>(0) else {
                return None;
            };
            let ihl = u32::from(ip[0] & 0x0f) * 4;
            let frag_off = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            if ip[9] != IPPROTO_TCP || ihl < 20 || frag_off != 0 {
                return None;
            }
            let src = Addr::from_v4([ip[12], ip[13], ip[14], ip[15]]);
            let dst = Addr::from_v4([ip[16], ip[17], ip[18], ip[19]]);
            (src, dst, ihl)
        }
        6 => {
            let Ok(next) = ctx.load::<u8>(6) else {
                return None;
            };
            let Ok(src) = ctx.load::<Addr>(8) else {
                return None;
            };
            let Ok(dst) = ctx.load::<Addr>(24) else {
                return None;
            };
            (src, dst, skip_v6_ext_headers(ctx, next)?)
        }
        _ => return None,
    };
    let len = ctx.len();
    let Ok(tcp) = ctx.load::<[u8; 20]>(l4_off as usize) else {
        return None;
    };
    let doff = u32::from(tcp[12] >> 4) * 4;
    let payload_off = l4_off + doff;
    if doff < 20 || payload_off > len {
        return None;
    }
    Some(Segment {
        src,
        dst,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags: tcp[13],
        payload_off,
        payload_len: len - payload_off,
    })
}

/// Walks IPv6 extension headers from `next` (the fixed header's Next
/// Header) to the TCP header. `None` for non-TCP, non-first fragments,
/// or chains longer than we walk.
#[inline(always)]
fn skip_v6_ext_headers(ctx: &SkBuffContext, mut next: u8) -> Option<u32> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let mut off: u32 = 40;
    for _ in 0..MAX_V6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return Some(off),
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let Ok(h) = ctx.load::<[u8; 2]>(off as usize) else {
                    return None;
                };
                next = h[0];
                off += (u32::from(h[1]) + 1) * 8;
            }
            FRAGMENT => {
                let Ok(h) = ctx.load::<[u8; 4]>(off as usize) else {
                    return None;
                };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return None; // not the first fragment: no TCP header
                }
                next = h[0];
                off += 8;
            }
            AUTH => {
                let Ok(h) = ctx.load::<[u8; 2]>(off as usize) else {
                    return None;
                };
                next = h[0];
                off += (u32::from(h[1]) + 2) * 4;
            }
            _ => return None,
        }
    }
    if next == IPPROTO_TCP { Some(off) } else { None }
}

/// Copies the first `min(payload_len, PREFIX_LEN)` payload bytes of `seg`
/// into `buf` (packed as `Prefix`: little-endian words) and returns how many.
#[inline(always)]
pub fn load_prefix(ctx: &SkBuffContext, seg: &Segment, buf: &mut Prefix) -> Result<usize, ()> {
    let n = seg.payload_len.min(PREFIX_LEN as u32);
    // Verifier-only: the helper needs a length it can prove is in 1..=16;
    // LLVM would fold away a check it can prove itself, so hide the value.
    let n = core::hint::black_box(n);
    if n == 0 || n > PREFIX_LEN as u32 {
        return Ok(0);
    }
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
