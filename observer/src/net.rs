//! Network domain types shared by the configuration, discovery and the role
//! trie.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// An address prefix. A bare address means a single host (/32 or /128);
/// IPv4-mapped IPv6 prefixes (`::ffff:10.0.0.0/104`) are taken as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "'{s}' is not a CIDR (expected ADDRESS/PREFIX such as 10.0.0.0/16 or fd00::/64)"
                    ));
                }
            },
        };
        Ok(Self(canonical(net)))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Folds IPv4-mapped IPv6 prefixes to IPv4 and clears host bits.
fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        let v4 = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix checked above");
        return IpNet::V4(v4.trunc());
    }
    net.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "fd00::1".parse::<Cidr>().unwrap().to_string(),
            "fd00::1/128"
        );
        assert_eq!(
            "::ffff:10.1.0.0/112".parse::<Cidr>().unwrap().to_string(),
            "10.1.0.0/16"
        );
        let err = "banana".parse::<Cidr>().unwrap_err();
        assert!(err.contains("'banana'"), "{err}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
