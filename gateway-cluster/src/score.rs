//! The rendezvous hash that ranks nodes for a VIP: the agent's model elects the
//! best-scoring eligible node from the objects alone (one node), and the cluster's election
//! gives a VIP without a live claimant to the best-scoring alive one. Both must rank alike
//! on every node and every version, hence one function, written out.

use std::net::Ipv4Addr;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit. Written out because std's hasher may change between Rust versions, and
/// every node, whatever version it runs, must compute the same announcer.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// FNV-1a 64 of the VIP's four octets followed by the node name's bytes.
pub fn announcer_score(vip: Ipv4Addr, node_name: &str) -> u64 {
    fnv1a64(vip.octets().into_iter().chain(node_name.bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP_49: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);
    const VIP_50: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 50);

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_score_hashes_the_vip_octets_then_the_node_name() {
        let mut bytes = vec![192, 168, 10, 49];
        bytes.extend(b"worker-1");
        assert_eq!(announcer_score(VIP_49, "worker-1"), fnv1a64(bytes));
        // Pinned: every node and every version must keep computing these.
        assert_eq!(announcer_score(VIP_49, "worker-1"), 0x16dc_61c7_435b_0e6c);
        assert_eq!(announcer_score(VIP_49, "worker-2"), 0x16dc_64c7_435b_1385);
        assert_eq!(announcer_score(VIP_50, "worker-1"), 0x54de_96e4_990a_c1a5);
        assert_eq!(announcer_score(VIP_50, "worker-2"), 0x54de_93e4_990a_bc8c);
        assert_eq!(announcer_score(VIP_49, "cp-1"), 0x3f91_1008_1c6c_dee5);
    }
}
