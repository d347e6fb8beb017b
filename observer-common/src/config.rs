//! Configuration the agent writes into kernel maps: address roles, endpoint
//! sets and port numbers.

/// Bit set of the roles an address plays in the path table (README, "The paths":
/// control plane, node, pod). Stored as the value of the `ROLES`
/// longest-prefix-match trie.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Roles(pub u32);

impl Roles {
    /// No role: the address is none of ours.
    pub const EMPTY: Self = Self(0);
    /// Inside a `--control-plane` CIDR.
    pub const CONTROL_PLANE: Self = Self(1);
    /// One of the node's own addresses (`--node-ip`).
    pub const NODE: Self = Self(1 << 1);
    /// Inside a `--pod-cidr`.
    pub const POD: Self = Self(1 << 2);

    /// True when every bit of `other` is set.
    #[inline(always)]
    pub const fn has(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// The union of both sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// An IP address as the kernel maps store it: 16 bytes in network order,
/// IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one map and one
/// code path serve both families. Aligned to 4 bytes so the kernel programs
/// build and compare it a 32-bit word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr(pub [u8; 16]);

const _: () = assert!(size_of::<Addr>() == 16 && align_of::<Addr>() == 4);

impl Addr {
    /// The IPv4-mapped form of an IPv4 address given as its 4 bytes.
    #[inline(always)]
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        Self([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
        ])
    }

    /// The address as four 32-bit words, each from 4 bytes in memory order
    /// (as a kernel program loads them from a packet).
    #[inline(always)]
    pub const fn words(&self) -> [u32; 4] {
        // SAFETY: same size, and every bit pattern is a valid `[u32; 4]`.
        unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(self.0) }
    }

    /// The inverse of [`Self::words`].
    #[inline(always)]
    pub const fn from_words(words: [u32; 4]) -> Self {
        // SAFETY: same size, and every bit pattern is a valid `[u8; 16]`.
        Self(unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) })
    }

    /// The IPv4-mapped form of an IPv4 address given as the 32-bit word
    /// its 4 bytes make in memory order.
    #[inline(always)]
    pub const fn from_v4_word(word: u32) -> Self {
        Self::from_words([0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), word])
    }

    /// The 4 bytes of an IPv4-mapped address, or `None` for a true IPv6 one.
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let a = &self.0;
        if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
            Some([a[12], a[13], a[14], a[15]])
        } else {
            None
        }
    }
}

/// The kernel form of an address: IPv4 as IPv4-mapped IPv6 (an
/// IPv4-mapped IPv6 address is the same address).
impl From<core::net::IpAddr> for Addr {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip.to_canonical() {
            core::net::IpAddr::V4(v4) => Self::from_v4(v4.octets()),
            core::net::IpAddr::V6(v6) => Self(v6.octets()),
        }
    }
}

/// The address as Rust sees it: IPv4-mapped back to IPv4.
impl From<Addr> for core::net::IpAddr {
    fn from(addr: Addr) -> Self {
        match addr.as_v4() {
            Some(v4) => Self::V4(v4.into()),
            None => Self::V6(addr.0.into()),
        }
    }
}

/// Prefix length to add to an IPv4 prefix to store it in the 128-bit trie.
pub const V4_MAPPED_PREFIX: u32 = 96;

/// The port flags (`--kubelet-port` and the others), in host byte order.
/// Index 0 of the `PORTS` array.
/// A port of 0 disables the rows that need it (no connection uses port 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// `--kubelet-port`, default 10250.
    pub kubelet: u16,
    /// `--kubelet-read-only-port`, default 10255.
    pub kubelet_read_only: u16,
    /// `--ssh-port`, default 22.
    pub ssh: u16,
    /// `--konnectivity-port`, default 8132.
    pub konnectivity: u16,
    /// Explicit padding, always 0.
    pub _pad: u32,
}

const _: () = assert!(size_of::<Ports>() == 12);

impl Default for Ports {
    fn default() -> Self {
        Self {
            kubelet: 10250,
            kubelet_read_only: 10255,
            ssh: 22,
            konnectivity: 8132,
            _pad: 0,
        }
    }
}

/// Key of the `APISERVERS` hash: an apiserver endpoint or the `kubernetes`
/// VIP (`--apiserver`, `--apiserver-vip`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The address.
    pub addr: Addr,
    /// TCP port, host byte order.
    pub port: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
}

const _: () = assert!(size_of::<Endpoint>() == 20);

impl From<core::net::SocketAddr> for Endpoint {
    fn from(ep: core::net::SocketAddr) -> Self {
        Self {
            addr: ep.ip().into(),
            port: ep.port(),
            _pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use core::net::{IpAddr, SocketAddr};

    use super::*;

    #[test]
    fn addresses_convert_both_ways() {
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.18.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(Addr::from(v4), Addr::from_v4([198, 18, 0, 1]));
        assert_eq!(Addr::from(mapped), Addr::from(v4));
        assert_eq!(IpAddr::from(Addr::from(v4)), v4);
        assert_eq!(IpAddr::from(Addr::from(mapped)), v4);
        assert_eq!(IpAddr::from(Addr::from(v6)), v6);
        let ep: SocketAddr = "[2001:db8::1]:6443".parse().unwrap();
        let key = Endpoint::from(ep);
        assert_eq!((IpAddr::from(key.addr), key.port), (ep.ip(), ep.port()));
    }
}
