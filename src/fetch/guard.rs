//! Which addresses a URL import may reach: public unicast only.
//!
//! Checked on the resolved addresses (a name can point anywhere), on every redirect, and
//! on IP literals however they are spelled (the URL parser turns `0x7f000001`, `2130706433`
//! and `127.1` into 127.0.0.1 before we look).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is off limits, for the error message.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "an unspecified (0.0.0.0/8) address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        _ if ip.is_link_local() => "a link-local address",
        _ if a == 100 && (64..128).contains(&b) => "a shared (carrier-grade NAT) address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_broadcast() || a >= 240 => "a reserved address",
        _ if a == 192 && b == 0 && ip.octets()[2] == 0 => "an IETF protocol address",
        _ if ip.is_documentation() => "a documentation address",
        _ if a == 198 && (b == 18 || b == 19) => "a benchmarking address",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    Some(match () {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.to_ipv4_mapped().is_some() => "an IPv4-mapped address",
        // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::/96 (NAT64) reach IPv4 space.
        _ if seg[..6] == [0; 6] => "an IPv4-compatible address",
        _ if seg[0] == 0x64 && seg[1] == 0xff9b => "a NAT64 address",
        _ if seg[0] == 0x2002 => "a 6to4 address",
        _ if seg[0] == 0x2001 && seg[1] == 0 => "a Teredo address",
        _ if (seg[0] & 0xfe00) == 0xfc00 => "a unique local (fc00::/7) address",
        _ if (seg[0] & 0xffc0) == 0xfe80 => "a link-local (fe80::/10) address",
        _ if (seg[0] & 0xffc0) == 0xfec0 => "a site-local address",
        _ if ip.is_multicast() => "a multicast address",
        _ if seg[0] == 0x2001 && seg[1] == 0xdb8 => "a documentation address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        forbidden_reason(s.parse().unwrap()).is_some()
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
            "64:ff9b::7f00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
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
            "2606:4700::1111",
            "2a00:1450::1",
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
