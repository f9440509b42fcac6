//! IPv4 prefixes as Kubernetes writes them (`192.168.10.0/24`), e.g. a service's
//! `spec.loadBalancerSourceRanges`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::Reason;
use super::error::ObjectDiagnostics;

/// An IPv4 prefix: the address with its host bits cleared, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    /// The prefix of `len` bits of `addr` (its host bits cleared); `None` past 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        let host_bits = 32u32.checked_sub(u32::from(len))?;
        let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
        Some(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        Self::new(addr, self.len).is_some_and(|net| net.addr == self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a text is not an IPv4 prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// An IPv6 prefix: valid Kubernetes, but nothing an IPv4 datapath can match.
    Ipv6,
    Invalid(&'static str),
}

impl FromStr for Ipv4Net {
    type Err = PrefixError;

    /// `A.B.C.D/N`, or a bare address (a /32). Host bits must be clear, as Kubernetes
    /// validates them (`10.0.0.1/8` is refused there too).
    fn from_str(text: &str) -> Result<Self, PrefixError> {
        let text = text.trim();
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        if addr.contains(':') {
            return Err(PrefixError::Ipv6);
        }
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| PrefixError::Invalid("not an IPv4 address"))?;
        let len = match len {
            None => 32,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|&len| len <= 32)
                .ok_or(PrefixError::Invalid("the prefix length is not 0..=32"))?,
        };
        let net = Ipv4Net::new(addr, len).ok_or(PrefixError::Invalid("bad prefix length"))?;
        if net.addr != addr {
            return Err(PrefixError::Invalid("host bits are set"));
        }
        Ok(net)
    }
}

/// `spec.loadBalancerSourceRanges`: `None` when empty (every client admitted), else its
/// IPv4 prefixes. An IPv6 prefix admits no IPv4 client: it is left out with a warning, and
/// a list of IPv6 prefixes only admits nobody here (never everybody). A text that is no
/// prefix at all is returned apart, with its field and why, for the caller to refuse the
/// Service (Kubernetes rejects it; guessing what it meant could admit clients it keeps out).
pub(crate) fn source_ranges(
    raw: &[String],
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> (Option<Vec<Ipv4Net>>, Vec<(String, String)>) {
    if raw.is_empty() {
        return (None, Vec::new());
    }
    let (mut ranges, mut invalid) = (Vec::new(), Vec::new());
    for (i, text) in raw.iter().enumerate() {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        match text.parse::<Ipv4Net>() {
            Ok(net) => ranges.push(net),
            Err(PrefixError::Ipv6) => diagnostics.warn(
                Reason::IPv6NotServed,
                field,
                format!("{text:?} is IPv6: it admits no client of this IPv4 datapath"),
            ),
            Err(PrefixError::Invalid(why)) => {
                invalid.push((field, format!("{text:?} is not an IPv4 prefix: {why}")))
            }
        }
    }
    ranges.sort();
    ranges.dedup();
    (Some(ranges), invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_match() {
        let net: Ipv4Net = "192.168.10.0/24".parse().unwrap();
        assert_eq!(net.to_string(), "192.168.10.0/24");
        assert!(net.contains(Ipv4Addr::new(192, 168, 10, 200)));
        assert!(!net.contains(Ipv4Addr::new(192, 168, 11, 1)));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        let one: Ipv4Net = "10.0.0.7".parse().unwrap();
        assert_eq!(one, Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 7), 32).unwrap());
        assert!(!one.contains(Ipv4Addr::new(10, 0, 0, 8)));
    }

    #[test]
    fn a_services_source_ranges_are_read_ipv6_left_out_and_bad_ones_refused() {
        use crate::config::Severity;
        use crate::config::fixtures::*;
        let with = |ranges: &str| {
            lb_service(
                "web",
                "shop",
                &format!("  loadBalancerSourceRanges: [{ranges}]\n"),
            )
        };
        let ranges = |text: &str| parse_ok(text).services[0].source_ranges.clone();
        let net = |text: &str| text.parse::<Ipv4Net>().unwrap();
        assert_eq!(ranges(&lb_service("web", "shop", "")), None);
        assert_eq!(ranges(&with("")), None, "an empty list admits everybody");
        assert_eq!(
            ranges(&with("10.0.0.0/8, 192.168.10.10/32, 10.0.0.0/8")),
            Some(vec![net("10.0.0.0/8"), net("192.168.10.10/32")])
        );
        // IPv6 only: nobody (never everybody), with a warning.
        let ipv6 = with("\"2001:db8::/32\"");
        assert_eq!(ranges(&ipv6), Some(vec![]));
        let findings = parse_reasons(&ipv6);
        assert_eq!(
            findings.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
            [(Severity::Warning, Reason::IPv6NotServed)]
        );
        assert_line(
            &[findings[0].2.clone()],
            &[
                "Service/web/shop: spec.loadBalancerSourceRanges[0]",
                "is IPv6",
            ],
        );
        // Not a prefix: the Service is not served (never served wider than written).
        let bad = with("10.0.0.0/8, 10.0.0.1/8");
        let findings = parse_reasons(&bad);
        assert_eq!(
            findings.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
            [(Severity::Error, Reason::InvalidSourceRange)]
        );
        assert_line(
            &[findings[0].2.clone()],
            &[
                "Service/web/shop: spec.loadBalancerSourceRanges[1]",
                "host bits are set",
                "not served",
            ],
        );
        let service = &parse_ok(&bad).services[0];
        assert_eq!(
            service.unservable.as_ref().map(|u| u.reason),
            Some(Reason::InvalidSourceRange)
        );
    }

    #[test]
    fn bad_prefixes_say_why() {
        for (text, expected) in [
            ("10.0.0.1/8", PrefixError::Invalid("host bits are set")),
            (
                "10.0.0.0/33",
                PrefixError::Invalid("the prefix length is not 0..=32"),
            ),
            ("10.0.0/8", PrefixError::Invalid("not an IPv4 address")),
            ("2001:db8::/32", PrefixError::Ipv6),
        ] {
            assert_eq!(text.parse::<Ipv4Net>(), Err(expected), "{text}");
        }
    }
}
