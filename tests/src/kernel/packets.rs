//! Crafted packets for `BPF_PROG_TEST_RUN`: Ethernet + IPv4/IPv6 + TCP.
//!
//! `cgroup_skb` test runs take the packet with an Ethernet header, which the
//! kernel pulls before running the program (the program sees the IP header
//! first, as at the real hooks).

use std::net::{IpAddr, SocketAddr};

use etherparse::PacketBuilder;

/// A TCP segment to build.
#[derive(Clone, Debug)]
pub struct Tcp {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    /// The acknowledgment number, when ACK is set.
    ack_seq: u32,
    /// The urgent pointer, when URG is set.
    urgent: Option<u16>,
    payload: Vec<u8>,
}

impl Tcp {
    /// A bare ACK from `src` to `dst`, sequence 1.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            src,
            dst,
            seq: 1,
            syn: false,
            ack: true,
            fin: false,
            rst: false,
            ack_seq: 1,
            urgent: None,
            payload: Vec::new(),
        }
    }
    /// The opening SYN (no ACK), ISN `seq`.
    #[must_use]
    pub fn syn(mut self, isn: u32) -> Self {
        self.syn = true;
        self.ack = false;
        self.seq = isn;
        self
    }
    /// The answering SYN-ACK, ISN `seq`.
    #[must_use]
    pub fn syn_ack(mut self, isn: u32) -> Self {
        self.syn = true;
        self.ack = true;
        self.seq = isn;
        self
    }
    /// Sequence number of the first payload byte.
    #[must_use]
    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }
    /// Payload bytes.
    #[must_use]
    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }
    /// The acknowledgment number (1 unless set).
    #[must_use]
    pub fn ack_seq(mut self, ack: u32) -> Self {
        self.ack_seq = ack;
        self
    }
    /// Sets URG, the urgent pointer at the end of the payload (urgent data
    /// as `send(MSG_OOB)` sends it).
    #[must_use]
    pub fn urgent(mut self) -> Self {
        self.urgent = Some(self.payload.len() as u16);
        self
    }
    /// Sets FIN.
    #[must_use]
    pub fn fin(mut self) -> Self {
        self.fin = true;
        self
    }
    /// Sets RST.
    #[must_use]
    pub fn rst(mut self) -> Self {
        self.rst = true;
        self
    }

    /// The packet, Ethernet header first.
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed address families in a crafted packet"),
        };
        let mut b = ip.tcp(self.src.port(), self.dst.port(), self.seq, 65535);
        if self.syn {
            b = b.syn();
        }
        if self.ack {
            b = b.ack(self.ack_seq);
        }
        if let Some(ptr) = self.urgent {
            b = b.urg(ptr);
        }
        if self.fin {
            b = b.fin();
        }
        if self.rst {
            b = b.rst();
        }
        if !self.payload.is_empty() {
            b = b.psh();
        }
        let mut out = Vec::with_capacity(b.size(self.payload.len()));
        b.write(&mut out, &self.payload)
            .expect("writing to a Vec succeeds");
        out
    }
}

/// SYN, SYN-ACK and the handshake's last ACK of client `c` → server `s`,
/// the client's ISN `isn`, the server's 5000.
pub fn handshake(c: SocketAddr, s: SocketAddr, isn: u32) -> [Tcp; 3] {
    [
        Tcp::new(c, s).syn(isn),
        Tcp::new(s, c).syn_ack(5000).ack_seq(isn + 1),
        Tcp::new(c, s).seq(isn + 1).ack_seq(5001),
    ]
}

/// Ethernet header length: where the IP header starts in a built packet.
pub const ETH_LEN: usize = 14;

/// `packet` (IPv4) with `words` 4-byte words of NOP options after the IP
/// header: IHL and total length adjusted.
pub fn with_ipv4_options(packet: &[u8], words: usize) -> Vec<u8> {
    assert!(words <= 10, "IHL is at most 15 words");
    let ip = ETH_LEN;
    assert_eq!(packet[ip] >> 4, 4, "an IPv4 packet");
    let mut out = packet[..ip + 20].to_vec();
    out.extend(std::iter::repeat_n(1u8, words * 4)); // NOP
    out.extend_from_slice(&packet[ip + 20..]);
    out[ip] = 0x40 | (5 + words) as u8;
    let total = u16::from_be_bytes([out[ip + 2], out[ip + 3]]) + (words * 4) as u16;
    out[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    out
}

/// IPv6 extension header types.
pub mod ext {
    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Fragment.
    pub const FRAGMENT: u8 = 44;
    /// Destination options.
    pub const DEST_OPTS: u8 = 60;
}

/// `packet` (IPv6) with 8-byte extension headers of the given types inserted
/// between the IPv6 header and TCP. A fragment header gets `frag_offset`
/// (in 8-byte units) and the more-fragments bit.
pub fn with_ipv6_ext_headers(packet: &[u8], types: &[u8], frag_offset: u16) -> Vec<u8> {
    let ip = ETH_LEN;
    assert_eq!(packet[ip] >> 4, 6, "an IPv6 packet");
    let transport = packet[ip + 6];
    let mut headers = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let next = types.get(i + 1).copied().unwrap_or(transport);
        let mut h = [0u8; 8];
        h[0] = next;
        if *t == ext::FRAGMENT {
            h[2..4].copy_from_slice(&((frag_offset << 3) | 1).to_be_bytes());
            h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        } else {
            h[1] = 0; // (0 + 1) * 8 bytes
            h[2] = 1; // PadN option covering the rest
            h[3] = 4;
        }
        headers.extend_from_slice(&h);
    }
    let mut out = packet[..ip + 40].to_vec();
    out.extend_from_slice(&headers);
    out.extend_from_slice(&packet[ip + 40..]);
    out[ip + 6] = types.first().copied().unwrap_or(transport);
    let len = u16::from_be_bytes([out[ip + 4], out[ip + 5]]) + headers.len() as u16;
    out[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
    out
}
