//! Which addresses a URL import (or a webhook) may reach: globally reachable unicast only.
//!
//! One table per family, each row a range of the IANA special-purpose address registries
//! (<https://www.iana.org/assignments/iana-ipv4-special-registry>,
//! <https://www.iana.org/assignments/iana-ipv6-special-registry>) whose "Globally Reachable"
//! is not `True`, plus the multicast and reserved blocks of the address-space registries.
//! IPv6 outside 2000::/3 (the only block IANA allocates as global unicast) is refused as a
//! whole, which covers `::/8` with its IPv4-mapped (`::ffff:0:0/96`), IPv4-translated
//! (`::ffff:0:0:0/96`) and IPv4-compatible forms, `100::/64`, `5f00::/16`, ULA, link-local
//! and multicast. Ranges that embed an IPv4 address (NAT64 `64:ff9b::/96` is marked
//! globally reachable) are refused too: they reach IPv4 space we would otherwise check.
//! A few registry rows inside a refused block are globally reachable anycast addresses
//! (192.0.0.9, 192.0.0.10, 2001:1::1..3, 2001:3::/32, 2001:4:112::/48, 2001:20::/27); no
//! import needs them, so the whole block stays refused.
//!
//! Checked on the resolved addresses (a name can point anywhere), on every redirect, and
//! on IP literals however they are spelled (the URL parser turns `0x7f000001`, `2130706433`
//! and `127.1` into 127.0.0.1 before we look).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One refused range: network, prefix length, what it is, and where it is defined.
#[derive(Debug, Clone, Copy)]
pub struct Range<A> {
    /// The first address.
    pub network: A,
    /// The prefix length.
    pub prefix: u8,
    /// What it is, for the error message.
    pub name: &'static str,
    /// The registry row's source.
    pub source: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, name: &'static str, source: &'static str) -> Range<Ipv4Addr> {
    Range {
        network: Ipv4Addr::new(a, b, c, d),
        prefix,
        name,
        source,
    }
}

const fn v6(s: [u16; 3], prefix: u8, name: &'static str, source: &'static str) -> Range<Ipv6Addr> {
    Range {
        network: Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0),
        prefix,
        name,
        source,
    }
}

/// IPv4 ranges that are not globally reachable.
pub const V4_REFUSED: &[Range<Ipv4Addr>] = &[
    v4(
        0,
        0,
        0,
        0,
        8,
        "\"this network\" (0.0.0.0/8)",
        "IANA IPv4 special-purpose, RFC 791",
    ),
    v4(
        10,
        0,
        0,
        0,
        8,
        "private-use (10/8)",
        "IANA IPv4 special-purpose, RFC 1918",
    ),
    v4(
        100,
        64,
        0,
        0,
        10,
        "shared (carrier-grade NAT)",
        "IANA IPv4 special-purpose, RFC 6598",
    ),
    v4(127, 0, 0, 0, 8, "loopback", "IANA IPv4 special-purpose, RFC 1122"),
    v4(169, 254, 0, 0, 16, "link-local", "IANA IPv4 special-purpose, RFC 3927"),
    v4(
        172,
        16,
        0,
        0,
        12,
        "private-use (172.16/12)",
        "IANA IPv4 special-purpose, RFC 1918",
    ),
    v4(
        192,
        0,
        0,
        0,
        24,
        "IETF protocol assignments",
        "IANA IPv4 special-purpose, RFC 6890",
    ),
    v4(
        192,
        0,
        2,
        0,
        24,
        "documentation (TEST-NET-1)",
        "IANA IPv4 special-purpose, RFC 5737",
    ),
    v4(
        192,
        88,
        99,
        0,
        24,
        "deprecated 6to4 relay anycast",
        "IANA IPv4 special-purpose, RFC 7526",
    ),
    v4(
        192,
        168,
        0,
        0,
        16,
        "private-use (192.168/16)",
        "IANA IPv4 special-purpose, RFC 1918",
    ),
    v4(198, 18, 0, 0, 15, "benchmarking", "IANA IPv4 special-purpose, RFC 2544"),
    v4(
        198,
        51,
        100,
        0,
        24,
        "documentation (TEST-NET-2)",
        "IANA IPv4 special-purpose, RFC 5737",
    ),
    v4(
        203,
        0,
        113,
        0,
        24,
        "documentation (TEST-NET-3)",
        "IANA IPv4 special-purpose, RFC 5737",
    ),
    v4(224, 0, 0, 0, 4, "multicast", "IANA IPv4 address space, RFC 5771"),
    // Inside 240/4: listed first so its name is the one reported.
    v4(
        255,
        255,
        255,
        255,
        32,
        "limited broadcast",
        "IANA IPv4 special-purpose, RFC 919",
    ),
    v4(
        240,
        0,
        0,
        0,
        4,
        "reserved (240/4)",
        "IANA IPv4 special-purpose, RFC 1112",
    ),
];

/// IPv6 ranges that are not globally reachable (all of them outside 2000::/3 as well).
pub const V6_REFUSED: &[Range<Ipv6Addr>] = &[
    v6(
        [0, 0, 0],
        3,
        "outside global unicast 2000::/3 (loopback, unspecified, IPv4-mapped, IPv4-translated, IPv4-compatible, discard-only, SRv6 SIDs, reserved)",
        "IANA IPv6 address space, RFC 4291; special-purpose: RFC 4291, 6052, 6666, 9602",
    ),
    v6(
        [0x4000, 0, 0],
        2,
        "outside global unicast 2000::/3 (reserved, unique-local, link-local, site-local, multicast)",
        "IANA IPv6 address space, RFC 4291, 4193, 3879",
    ),
    v6(
        [0x8000, 0, 0],
        1,
        "outside global unicast 2000::/3 (reserved, unique-local, link-local, site-local, multicast)",
        "IANA IPv6 address space, RFC 4291, 4193, 3879",
    ),
    v6(
        [0x64, 0xff9b, 0],
        16,
        "IPv4/IPv6 translation (64:ff9b::/96, 64:ff9b:1::/48)",
        "IANA IPv6 special-purpose, RFC 6052, 8215",
    ),
    v6(
        [0x2001, 0, 0],
        23,
        "IETF protocol assignments (Teredo, benchmarking, ORCHID, ...)",
        "IANA IPv6 special-purpose, RFC 2928, 4380, 5180, 7343",
    ),
    v6(
        [0x2001, 0xdb8, 0],
        32,
        "documentation (2001:db8::/32)",
        "IANA IPv6 special-purpose, RFC 3849",
    ),
    v6([0x2002, 0, 0], 16, "6to4", "IANA IPv6 special-purpose, RFC 3056"),
    v6(
        [0x3fff, 0, 0],
        20,
        "documentation (3fff::/20)",
        "IANA IPv6 special-purpose, RFC 9637",
    ),
];

fn v4_in(ip: Ipv4Addr, range: &Range<Ipv4Addr>) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(range.prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(range.network) & mask
}

fn v6_in(ip: Ipv6Addr, range: &Range<Ipv6Addr>) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(range.prefix)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(range.network) & mask
}

/// Why an address is off limits, for the error message (`None`: globally reachable).
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => V4_REFUSED.iter().find(|r| v4_in(ip, r)).map(|r| r.name),
        IpAddr::V6(ip) => V6_REFUSED.iter().find(|r| v6_in(ip, r)).map(|r| r.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        forbidden_reason(s.parse().unwrap()).is_some()
    }

    fn v4_last(r: &Range<Ipv4Addr>) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(r.network) | u32::MAX.checked_shr(u32::from(r.prefix)).unwrap_or(0))
    }

    fn v6_last(r: &Range<Ipv6Addr>) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(r.network) | u128::MAX.checked_shr(u32::from(r.prefix)).unwrap_or(0))
    }

    #[test]
    fn every_row_is_refused_from_its_first_to_its_last_address_and_names_its_source() {
        for r in V4_REFUSED {
            assert!(!r.source.is_empty() && !r.name.is_empty());
            // The row's own name for its first address (a more specific row listed before
            // it may name its last one: 255.255.255.255 in 240/4).
            assert_eq!(
                forbidden_reason(r.network.into()),
                Some(r.name),
                "{}/{}",
                r.network,
                r.prefix
            );
            assert!(v4_in(v4_last(r), r) && forbidden_reason(v4_last(r).into()).is_some());
            // The address after the row is not refused by this row.
            if let Some(next) = u32::from(v4_last(r)).checked_add(1) {
                assert!(!v4_in(Ipv4Addr::from(next), r));
            }
        }
        for r in V6_REFUSED {
            assert!(!r.source.is_empty() && !r.name.is_empty());
            for ip in [r.network, v6_last(r)] {
                assert!(
                    forbidden_reason(ip.into()).is_some(),
                    "{ip} in {}/{}",
                    r.network,
                    r.prefix
                );
                assert!(v6_in(ip, r));
            }
            if let Some(next) = u128::from(v6_last(r)).checked_add(1) {
                assert!(!v6_in(Ipv6Addr::from(next), r));
            }
        }
    }

    #[test]
    fn every_non_public_range_is_refused() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "192.168.255.255",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.170",
            "192.0.2.7",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.1",
            "203.0.113.9",
            "192.88.99.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            // IPv4-translated (::ffff:0:0:0/96) embedding 169.254.169.254 and 127.0.0.1.
            "::ffff:0:a9fe:a9fe",
            "::ffff:0:7f00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "100::1",
            "100:0:0:1::1",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "2001:200::1",
            "3ffe::1",
            "3fff:1000::1",
        ] {
            assert!(!refused(ip), "{ip} is public");
        }
    }

    #[test]
    fn ip_spellings_the_url_parser_normalizes_are_caught() {
        for url in [
            "http://0x7f000001/",
            "http://2130706433/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:0:a9fe:a9fe]/",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            let ip: IpAddr = match parsed.host().unwrap() {
                url::Host::Ipv4(v4) => v4.into(),
                url::Host::Ipv6(v6) => v6.into(),
                url::Host::Domain(d) => panic!("{url} parsed as the name {d}"),
            };
            assert!(forbidden_reason(ip).is_some(), "{url} -> {ip}");
        }
    }
}
