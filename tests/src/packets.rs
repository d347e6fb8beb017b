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
            b = b.ack(1);
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

/// Ethernet header length: where the IP header starts in a built packet.
pub const ETH_LEN: usize = 14;
