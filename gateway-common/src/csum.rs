//! Incremental updates of Internet checksums (RFC 1071 sums, RFC 1624 updates), for the
//! datapath's NAT and the benchmark's flow generator. Every function is a few ALU
//! instructions, inlined into the caller; property tests on the host check each one against
//! a full recomputation (as Katran keeps csum_helpers.h and Cilium csum.h apart).
//!
//! A "diff" is what a change of fields adds to a ones'-complement sum: `~m + m'` for every
//! 16-bit word `m` that becomes `m'` (RFC 1624), carried in a `u32` and folded at the end.
//! Several diffs may be added before one update, as long as the sum stays below 2^32.

/// A 16-bit field as the checksum adds it (the bytes in wire order).
#[inline(always)]
pub const fn word(b: [u8; 2]) -> u32 {
    u16::from_be_bytes(b) as u32
}

/// What replacing the 32-bit field `from` by `to` (an IPv4 address, in wire order) adds to a
/// ones'-complement sum.
#[inline(always)]
pub const fn diff4(from: [u8; 4], to: [u8; 4]) -> u32 {
    (!word([from[0], from[1]]) & 0xffff)
        + (!word([from[2], from[3]]) & 0xffff)
        + word([to[0], to[1]])
        + word([to[2], to[3]])
}

/// What replacing the 16-bit field `from` by `to` (a port, say) adds to a ones'-complement
/// sum. The values are the fields as numbers: `u16::from_be_bytes` of their wire bytes.
#[inline(always)]
pub const fn diff2(from: u16, to: u16) -> u32 {
    (!from as u32 & 0xffff) + to as u32
}

/// A ones'-complement sum folded to 16 bits: the carries added back in.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A complete checksum field after a change of `diff` (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn update_complete(check: [u8; 2], diff: u32) -> [u8; 2] {
    (!fold((!u16::from_be_bytes(check)) as u32 + diff)).to_be_bytes()
}

/// The pseudo-header seed in the checksum field of a `CHECKSUM_PARTIAL` frame after a change
/// of `diff`: the seed is a plain folded sum (the device complements it once it has added the
/// segment).
#[inline(always)]
pub const fn update_seed(seed: [u8; 2], diff: u32) -> [u8; 2] {
    fold(word(seed) + diff).to_be_bytes()
}

#[cfg(test)]
mod tests {
    //! The oracle: RFC 1071 over the whole buffer, written here without any of the functions
    //! above.

    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// The ones'-complement sum of `data` (16-bit big-endian words, an odd byte padded).
    fn sum(data: &[u8]) -> u16 {
        let mut s: u64 = data
            .chunks(2)
            .map(|c| u64::from(c[0]) << 8 | u64::from(c.get(1).copied().unwrap_or(0)))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The checksum of `data` with its checksum field (at `at`) taken as zero.
    fn checksum(data: &[u8], at: usize) -> [u8; 2] {
        let mut d = data.to_vec();
        d[at..at + 2].copy_from_slice(&[0, 0]);
        (!sum(&d)).to_be_bytes()
    }

    /// A header-like buffer: even length, one word that is never zero (every real header has
    /// one: IPv4's version, the pseudo-header's protocol), a checksum field and a field to
    /// change, at distinct even offsets.
    fn buffer(field_len: usize) -> impl Strategy<Value = (Vec<u8>, usize, usize)> {
        (4usize..32)
            .prop_flat_map(move |words| {
                (
                    proptest::collection::vec(any::<u8>(), words * 2),
                    0..words,
                    0..words - field_len / 2,
                )
            })
            .prop_filter("distinct fields", move |(_, check, field)| {
                let field_words = *field..*field + field_len / 2;
                *check != 0 && !field_words.contains(check) && !field_words.contains(&0)
            })
            .prop_map(|(mut data, check, field)| {
                data[0] |= 0x40;
                (data, check * 2, field * 2)
            })
    }

    proptest! {
        // The carries that need the second fold are rare: enough cases to meet them.
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn an_address_change_updates_a_complete_checksum_as_a_recomputation_would(
            (mut data, at, field) in buffer(4),
            to in any::<[u8; 4]>(),
        ) {
            let check = checksum(&data, at);
            data[at..at + 2].copy_from_slice(&check);
            let from: [u8; 4] = data[field..field + 4].try_into().unwrap();
            data[field..field + 4].copy_from_slice(&to);
            prop_assert_eq!(update_complete(check, diff4(from, to)), checksum(&data, at));
        }

        #[test]
        fn a_port_change_updates_a_complete_checksum_as_a_recomputation_would(
            (mut data, at, field) in buffer(2),
            to in any::<u16>(),
        ) {
            let check = checksum(&data, at);
            data[at..at + 2].copy_from_slice(&check);
            let from = u16::from_be_bytes([data[field], data[field + 1]]);
            data[field..field + 2].copy_from_slice(&to.to_be_bytes());
            prop_assert_eq!(update_complete(check, diff2(from, to)), checksum(&data, at));
        }

        #[test]
        fn address_and_port_changes_add_up_in_one_update(
            (mut data, at, field) in buffer(6),
            to_addr in any::<[u8; 4]>(),
            to_port in any::<u16>(),
        ) {
            let check = checksum(&data, at);
            data[at..at + 2].copy_from_slice(&check);
            let from_addr: [u8; 4] = data[field..field + 4].try_into().unwrap();
            let from_port = u16::from_be_bytes([data[field + 4], data[field + 5]]);
            data[field..field + 4].copy_from_slice(&to_addr);
            data[field + 4..field + 6].copy_from_slice(&to_port.to_be_bytes());
            let diff = diff4(from_addr, to_addr) + diff2(from_port, to_port);
            prop_assert_eq!(update_complete(check, diff), checksum(&data, at));
        }

        /// CHECKSUM_PARTIAL: the field holds the folded sum of the pseudo-header (addresses,
        /// protocol, length), which must follow an address change.
        #[test]
        fn an_address_change_updates_a_pseudo_header_seed_as_a_recomputation_would(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            to in any::<[u8; 4]>(),
            protocol in prop_oneof![Just(6u8), Just(17u8)],
            len in 8u16..1500,
            destination in any::<bool>(),
        ) {
            let pseudo = |src: [u8; 4], dst: [u8; 4]| {
                let mut p = Vec::from(src);
                p.extend_from_slice(&dst);
                p.extend_from_slice(&[0, protocol]);
                p.extend_from_slice(&len.to_be_bytes());
                sum(&p).to_be_bytes()
            };
            let seed = pseudo(src, dst);
            let (from, after) = if destination {
                (dst, pseudo(src, to))
            } else {
                (src, pseudo(to, dst))
            };
            prop_assert_eq!(update_seed(seed, diff4(from, to)), after);
        }
    }

    #[test]
    fn the_rfc_1624_example_does_not_produce_minus_zero() {
        // RFC 1624 section 4: a checksum of 0xdd2f, a word 0x5555 becoming 0x3285; eqn. 2
        // gives 0xffff, eqn. 3 the correct 0x0000.
        let check = 0xdd2fu16.to_be_bytes();
        assert_eq!(
            update_complete(check, diff2(0x5555, 0x3285)),
            0x0000u16.to_be_bytes()
        );
    }
}
