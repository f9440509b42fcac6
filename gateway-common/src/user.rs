//! Userspace side of the contract: `aya::Pod` for every map type, and conversions between
//! the network-byte-order fields and `std`-style values.

extern crate std;

use crate::*;

macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        // SAFETY: every type is #[repr(C)], made only of integers and integer arrays, with
        // explicit padding fields, so any bit pattern is valid and there are no holes.
        $(unsafe impl aya::Pod for $t {})+
    };
}

pod!(
    VipKey,
    VipInfo,
    ServiceKey,
    Service,
    SlotKey,
    Backend,
    RevNatKey,
    Frontend,
    RevNat,
    CtKey,
    CtEntry,
    ReplyKey,
    SnatPort,
    SourceRange,
    IfaceInfo,
    NextHop,
    AffinityKey,
    Affinity,
    L2Key,
    L2Entry,
    HairpinVip,
    SockRevNatKey,
    DatapathConfig,
    Traffic,
    ServiceName,
    AgentState,
    cluster::Gate,
    cluster::ClusterRecord,
    cluster::MemberRecord,
    cluster::ClaimKey,
    cluster::ClaimRecord,
    bench::BenchFrame,
);

/// Writes `text` into a NUL-padded field, truncated on a character boundary.
pub fn write_text<const N: usize>(field: &mut [u8; N], text: &str) {
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    *field = [0; N];
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
}

/// The text of a NUL-padded field.
pub fn read_text(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..end]).unwrap_or("?")
}

impl ServiceName {
    pub fn new(text: &str) -> Self {
        let mut name = [0u8; 96];
        write_text(&mut name, text);
        Self { name }
    }

    pub fn as_str(&self) -> &str {
        read_text(&self.name)
    }
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_round_trip_and_truncate() {
        assert_eq!(
            ServiceName::new("gateway/gw:http").as_str(),
            "gateway/gw:http"
        );
        let long = "é".repeat(60);
        let name = ServiceName::new(&long);
        assert_eq!(name.as_str().len(), 96);
        assert!(long.starts_with(name.as_str()));
    }

    #[test]
    fn the_clock_scales_jiffies_and_wraps_around() {
        let clock = Clock {
            tick_ns: 4_000_000,
            offset_ns: 5u64.wrapping_sub(4_000_000 * 4_294_892_296),
        };
        // jiffies start 300 s before wrapping 32 bits (INITIAL_JIFFIES at HZ 250).
        assert_eq!(clock.at(4_294_892_296), 5);
        assert_eq!(clock.at(4_294_892_296 + 250), 1_000_000_005);
    }

    #[test]
    fn tcp_lifetimes_follow_the_state() {
        let c = DatapathConfig::from_secs(21600, 3600, Clock::default());
        let mut e = CtEntry {
            flags: CT_F_TCP,
            ..Default::default()
        };
        assert_eq!(e.lifetime_ns(&c), c.ct_syn_ns);
        e.flags |= CT_F_ESTABLISHED;
        assert_eq!(e.lifetime_ns(&c), 21600 * timeouts::NS_PER_SEC);
        e.flags |= CT_F_FIN_CLIENT;
        assert_eq!(
            e.lifetime_ns(&c),
            c.ct_tcp_ns,
            "half-closed stays established"
        );
        e.flags |= CT_F_FIN_BACKEND;
        assert_eq!(e.lifetime_ns(&c), c.ct_close_ns);
        let udp = CtEntry::default();
        assert_eq!(udp.lifetime_ns(&c), 3600 * timeouts::NS_PER_SEC);
        let rst = CtEntry {
            flags: CT_F_TCP | CT_F_ESTABLISHED | CT_F_RST,
            ..Default::default()
        };
        assert_eq!(rst.lifetime_ns(&c), c.ct_close_ns);
        assert!(rst.is_alive(c.ct_close_ns, &c));
        assert!(!rst.is_alive(c.ct_close_ns + 1, &c));
    }
}
