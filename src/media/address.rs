//! Which addresses a fetch may reach: only globally reachable unicast ones, unless the
//! operator allowed a network (`media.fetch_allow`, e.g. an intranet image host).
//!
//! The table follows IANA's special-purpose registries (what std's unstable `is_global`
//! encodes), plus multicast, which `is_global` leaves out. IPv4 carried inside IPv6
//! (mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, the deprecated compatible `::/96`) is
//! judged as the IPv4 address it reaches.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address may not be fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8`: "this network", which Linux connects to as this host.
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7`, site-local `fec0::/10`.
    Private,
    /// `100.64.0.0/10` (carrier-grade NAT; Aliyun's metadata service is `100.100.100.200`).
    SharedAddressSpace,
    /// `169.254.0.0/16` (AWS/GCP/Azure metadata `169.254.169.254`), `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`.
    Benchmarking,
    /// Reserved, protocol-specific or deprecated ranges: `240.0.0.0/4`, `192.0.0.0/24`,
    /// `192.88.99.0/24`, `100::/64`, `2001::/23`, `2002::/16`, `64:ff9b:1::/48`,
    /// `5f00::/16`, IPv4-compatible `::/96`.
    Reserved,
}

impl Reason {
    /// A phrase that completes "it is …".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unspecified => "an unspecified address",
            Self::ThisNetwork => "in 0.0.0.0/8 (this host's network)",
            Self::Loopback => "a loopback address (this machine)",
            Self::Private => "a private network address",
            Self::SharedAddressSpace => {
                "in the shared address space 100.64.0.0/10 (carrier-grade NAT, cloud metadata)"
            }
            Self::LinkLocal => "a link-local address (cloud metadata services live there)",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation-only address",
            Self::Benchmarking => "a benchmarking address (198.18.0.0/15)",
            Self::Reserved => "a reserved or special-purpose address",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// `Some(reason)` when a fetch must not connect to `ip`: it is not globally reachable
/// and no network in `allow` contains it. An IPv4-mapped IPv6 address is the IPv4
/// address for both questions (`::ffff:127.0.0.1` is allowed by `127.0.0.1/32`).
pub fn is_refused(ip: IpAddr, allow: &[IpNet]) -> Option<Reason> {
    let ip = ip.to_canonical();
    if allow.iter().any(|net| net.contains(&ip)) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<Reason> {
    let [a, b, c, _] = ip.octets();
    let reason = if ip.is_unspecified() {
        Reason::Unspecified
    } else if a == 0 {
        Reason::ThisNetwork
    } else if ip.is_loopback() {
        Reason::Loopback
    } else if ip.is_private() {
        Reason::Private
    } else if a == 100 && (b & 0b1100_0000) == 64 {
        Reason::SharedAddressSpace
    } else if ip.is_link_local() {
        Reason::LinkLocal
    } else if ip.is_multicast() {
        Reason::Multicast
    } else if ip.is_broadcast() {
        Reason::Broadcast
    } else if ip.is_documentation() {
        Reason::Documentation
    } else if a == 198 && (b & 0xfe) == 18 {
        Reason::Benchmarking
    } else if a >= 240 || (a, b, c) == (192, 0, 0) || (a, b, c) == (192, 88, 99) {
        // 240/4 (future use); 192.0.0.0/24 IETF protocol assignments (its two anycast
        // addresses .9 and .10 serve no images either); 192.88.99.0/24 the deprecated
        // 6to4 relay anycast.
        Reason::Reserved
    } else {
        return None;
    };
    Some(reason)
}

fn refused_v6(ip: Ipv6Addr) -> Option<Reason> {
    let s = ip.segments();
    let reason = if ip.is_unspecified() {
        Reason::Unspecified
    } else if ip.is_loopback() {
        Reason::Loopback
    } else if ip.is_multicast() {
        Reason::Multicast
    } else if ip.is_unique_local() {
        Reason::Private
    } else if ip.is_unicast_link_local() {
        Reason::LinkLocal
    } else if (s[0] & 0xffc0) == 0xfec0 {
        // Deprecated site-local: still an intranet wherever it is used.
        Reason::Private
    } else if matches!(s, [0x2001, 0xdb8, ..]) || (s[0] == 0x3fff && s[1] < 0x1000) {
        Reason::Documentation
    } else if matches!(s, [0x64, 0xff9b, 0, 0, 0, 0, _, _]) {
        // NAT64 well-known prefix: reaches the embedded IPv4 address.
        return refused_v4(embedded_v4(ip));
    } else if matches!(s, [0, 0, 0, 0, 0, 0, _, _]) {
        // Deprecated IPv4-compatible: reaches nothing routable, or the embedded IPv4.
        return Some(refused_v4(embedded_v4(ip)).unwrap_or(Reason::Reserved));
    } else if matches!(s, [0x64, 0xff9b, 1, ..])
        || matches!(s, [0x100, 0, 0, 0, ..])
        || (s[0] == 0x2001 && s[1] < 0x200)
        || s[0] == 0x2002
        || s[0] == 0x5f00
    {
        // Local-use NAT64, discard-only, IETF protocol assignments (Teredo among them),
        // 6to4, SRv6 SIDs.
        Reason::Reserved
    } else {
        return None;
    };
    Some(reason)
}

fn embedded_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Option<Reason> {
        is_refused(text.parse().unwrap(), &[])
    }

    #[test]
    fn refused_addresses_with_their_reason() {
        use Reason::*;
        let table = [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("0.255.255.255", ThisNetwork),
            ("127.0.0.1", Loopback),
            ("127.0.0.2", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("192.168.0.0", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.100.100.200", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("192.0.0.1", Reserved),
            ("192.0.0.170", Reserved),
            ("192.88.99.1", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", Private),
            ("fd00:ec2::254", Private),
            ("fdff:ffff::1", Private),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("3fff:fff::1", Documentation),
            ("2001::1", Reserved),
            ("2001:1::1", Reserved),
            ("2002:a00:1::1", Reserved),
            ("100::1", Reserved),
            ("64:ff9b:1::1", Reserved),
            ("5f00::1", Reserved),
            // IPv4 inside IPv6 is judged as IPv4.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:0.0.0.0", Unspecified),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::192.168.0.1", Private),
            ("::127.0.0.1", Loopback),
            ("::10.1.2.3", Private),
            ("::8.8.8.8", Reserved),
        ];
        for (text, reason) in table {
            assert_eq!(check(text), Some(reason), "{text}");
        }
    }

    #[test]
    fn global_addresses_pass() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.88.98.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "11.0.0.1",
            "1.0.0.0",
            "2606:4700:4700::1111",
            "2400:3200::1",
            "2001:200::1",
            "2001:4860:4860::8888",
            "3fff:1000::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert_eq!(check(text), None, "{text}");
        }
    }

    #[test]
    fn allow_lets_a_network_through_and_only_it() {
        let allow: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        let refused = |text: &str| is_refused(text.parse().unwrap(), &allow);
        assert_eq!(refused("127.0.0.1"), None);
        assert_eq!(
            refused("::ffff:127.0.0.1"),
            None,
            "mapped is the IPv4 address"
        );
        assert_eq!(refused("10.1.200.3"), None);
        assert_eq!(refused("127.0.0.2"), Some(Reason::Loopback));
        assert_eq!(refused("::1"), Some(Reason::Loopback));
        assert_eq!(refused("10.2.0.1"), Some(Reason::Private));
        assert_eq!(refused("169.254.169.254"), Some(Reason::LinkLocal));
        let v6: Vec<IpNet> = vec!["fd00::/8".parse().unwrap()];
        assert_eq!(is_refused("fd00:ec2::254".parse().unwrap(), &v6), None);
        assert_eq!(
            is_refused("fc00::1".parse().unwrap(), &v6),
            Some(Reason::Private)
        );
    }

    proptest::proptest! {
        /// Every IPv4 address gets the same answer on its own, mapped into IPv6 and
        /// behind the NAT64 prefix (the mapped form must never be a way around).
        #[test]
        fn ipv4_inside_ipv6_is_judged_as_ipv4(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let plain = is_refused(IpAddr::V4(v4), &[]);
            proptest::prop_assert_eq!(is_refused(IpAddr::V6(v4.to_ipv6_mapped()), &[]), plain);
            let mut nat64 = [0u8; 16];
            nat64[..4].copy_from_slice(&[0, 0x64, 0xff, 0x9b]);
            nat64[12..].copy_from_slice(&v4.octets());
            proptest::prop_assert_eq!(is_refused(IpAddr::V6(Ipv6Addr::from(nat64)), &[]), plain);
        }

        /// The table agrees with std's own predicates wherever std has one.
        #[test]
        fn agrees_with_std_predicates(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let std_says_not_global = v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified();
            if std_says_not_global {
                proptest::prop_assert!(is_refused(IpAddr::V4(v4), &[]).is_some());
            }
        }
    }
}
