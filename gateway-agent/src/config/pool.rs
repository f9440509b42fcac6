//! `CiliumLoadBalancerIPPool`: the address blocks VIPs are allocated from.
//!
//! A block that cannot be read is skipped with a finding and the others serve. A pool whose
//! serviceSelector cannot be read is delivered broken ([`IpPool::broken`]): like a disabled
//! one, it keeps the VIPs Services hold in their status and allocates nothing new, so a
//! typo in a pool never moves the VIPs it gave out.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::jiff::Timestamp;

use super::cilium::{CiliumLoadBalancerIpPool, IpPoolBlock};
use super::error::ObjectDiagnostics;
use super::selector::{Selector, selector};
use super::{ObjectRef, Reason};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPool {
    pub name: String,
    /// `metadata.creationTimestamp`: of two overlapping pools the newer one conflicts.
    pub created: Option<Timestamp>,
    /// The IPv4 blocks, `spec.blocks` then the deprecated `spec.cidrs`, as written. IPv6
    /// blocks are skipped with a finding: the datapath serves IPv4 only.
    pub blocks: Vec<IpBlock>,
    pub service_selector: Selector,
    /// `spec.disabled`: nothing new is allocated from the pool, but a VIP a service already
    /// holds (in its status) stays.
    pub disabled: bool,
    /// Why the pool allocates nothing new though it is not disabled (its serviceSelector
    /// cannot be read); it keeps what Services hold, as a disabled pool does.
    pub broken: Option<String>,
}

/// An inclusive range of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    /// Where the block is written, e.g. `spec.blocks[0]`.
    pub field: String,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// The first and last address are never handed out (`allowFirstLastIPs: No`).
    pub reserved_ends: bool,
}

impl IpPool {
    pub const KIND: &str = "CiliumLoadBalancerIPPool";

    pub fn object(&self) -> ObjectRef {
        ObjectRef::cluster_scoped(Self::KIND, &self.name)
    }

    /// The block holding `addr`, if any.
    pub fn block_of(&self, addr: Ipv4Addr) -> Option<&IpBlock> {
        self.blocks.iter().find(|block| block.contains(addr))
    }
}

impl IpBlock {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&addr)
    }

    /// Inside the block but never handed out.
    pub fn is_reserved(&self, addr: Ipv4Addr) -> bool {
        self.reserved_ends && (addr == self.first || addr == self.last)
    }

    /// The addresses that can be handed out.
    pub fn allocatable(&self) -> u64 {
        let size = u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1;
        size - if self.reserved_ends { 2 } else { 0 }
    }

    /// `first/len` when the block is a whole prefix, `first-last` otherwise.
    pub fn describe(&self) -> String {
        let first = u64::from(u32::from(self.first));
        let size = u64::from(u32::from(self.last)) - first + 1;
        if size.is_power_of_two() && first % size == 0 {
            format!("{}/{}", self.first, 32 - size.trailing_zeros())
        } else {
            format!("{}-{}", self.first, self.last)
        }
    }
}

/// `spec.allowFirstLastIPs` as Cilium reads it. Cilium's default is `Yes` (the first and
/// last address of a cidr block are allocatable): the operator reserves them only when the
/// field is exactly `No` (cilium/cilium operator/pkg/lbipam/lbipam.go, `AllowFirstLastIPs ==
/// AllowFirstLastIPNo`), and the `cilium.io/v2` API documents "`Yes` or undefined means that
/// the first and last IPs of each CIDR will be allocatable" (the older v2alpha1 comment
/// says the opposite; the code is what runs). Even with `No`, blocks of one or two addresses
/// (/32, /31) keep them, and start/stop ranges never reserve anything.
fn allow_first_last_ips(raw: Option<&str>, diagnostics: &mut ObjectDiagnostics<'_>) -> bool {
    match raw {
        None | Some("Yes") => true,
        Some("No") => false,
        Some(other) => {
            diagnostics.warn(
                Reason::InvalidAllowFirstLastIPs,
                "spec.allowFirstLastIPs",
                format!("{other:?} is neither \"Yes\" nor \"No\": read as \"Yes\", as Cilium does"),
            );
            true
        }
    }
}

pub(crate) fn pool(
    raw: &CiliumLoadBalancerIpPool,
    name: String,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> IpPool {
    let allow_first_last =
        allow_first_last_ips(raw.spec.allow_first_last_ips.as_deref(), diagnostics);
    let written = [
        ("spec.blocks", &raw.spec.blocks),
        ("spec.cidrs", &raw.spec.cidrs),
    ];
    let mut blocks = Vec::new();
    for (list, raw_blocks) in written {
        for (i, raw_block) in raw_blocks.iter().flatten().enumerate() {
            let field = format!("{list}[{i}]");
            if let Some(block) = block(raw_block, field, allow_first_last, diagnostics) {
                blocks.push(block);
            }
        }
    }
    let (service_selector, broken) =
        match selector(raw.spec.service_selector.as_ref(), "spec.serviceSelector") {
            Ok(selector) => (selector, None),
            Err(errors) => {
                for error in &errors {
                    diagnostics.warn(
                        Reason::InvalidSelector,
                        &error.field,
                        format!(
                            "{}: the pool allocates nothing new (it keeps what Services hold)",
                            error.message
                        ),
                    );
                }
                let why = format!("{}: {}", errors[0].field, errors[0].message);
                (Selector::default(), Some(why))
            }
        };
    IpPool {
        name,
        created: raw.metadata.creation_timestamp.as_ref().map(|t| t.0),
        blocks,
        service_selector,
        disabled: raw.spec.disabled,
        broken,
    }
}

fn non_empty(text: &Option<String>) -> Option<&str> {
    text.as_deref().map(str::trim).filter(|t| !t.is_empty())
}

/// The block, or `None` with a finding saying why it is skipped.
fn block(
    raw: &IpPoolBlock,
    field: String,
    allow_first_last: bool,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<IpBlock> {
    let result = match (
        non_empty(&raw.cidr),
        non_empty(&raw.start),
        non_empty(&raw.stop),
    ) {
        (Some(cidr), None, None) => cidr_block(cidr, &field, allow_first_last, diagnostics),
        (Some(_), _, _) => Err((
            field.clone(),
            "set either cidr or start/stop, not both".into(),
        )),
        (None, Some(start), stop) => range_block(start, stop, &field, diagnostics),
        (None, None, Some(_)) => Err((format!("{field}.start"), "stop without start".into())),
        (None, None, None) => Err((
            field.clone(),
            "needs a cidr or a start (and optional stop)".into(),
        )),
    };
    match result {
        Ok(block) => block.map(|(first, last, reserved_ends)| IpBlock {
            field,
            first,
            last,
            reserved_ends,
        }),
        Err((at, why)) => {
            diagnostics.warn(
                Reason::InvalidBlock,
                at,
                format!("{why}; the block is skipped"),
            );
            None
        }
    }
}

/// A block read: its first and last address and whether its ends are reserved, or `None`
/// when it is skipped with a finding already made (IPv6).
type Read = Result<Option<(Ipv4Addr, Ipv4Addr, bool)>, (String, String)>;

fn cidr_block(
    text: &str,
    field: &str,
    allow_first_last: bool,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Read {
    let at = format!("{field}.cidr");
    let parsed = text.split_once('/').and_then(|(addr, len)| {
        let addr = addr.parse::<IpAddr>().ok()?;
        let len = len.parse::<u8>().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some((addr, len))
    });
    match parsed {
        None => Err((
            at,
            format!("{text:?} is not a CIDR (address/prefix-length)"),
        )),
        Some((IpAddr::V6(_), _)) => {
            diagnostics.info(
                Reason::IPv6NotServed,
                at,
                format!("IPv6 block {text} skipped: only IPv4 is served"),
            );
            Ok(None)
        }
        Some((IpAddr::V4(addr), len)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            let first = u32::from(addr) & mask;
            let last = first | !mask;
            if first != u32::from(addr) {
                diagnostics.info(
                    Reason::HostBitsSet,
                    at,
                    format!(
                        "{text} has host bits set; the block is {}/{len}",
                        Ipv4Addr::from(first)
                    ),
                );
            }
            // Reserving both ends of a /31 or /32 would leave nothing to allocate.
            let reserved_ends = !allow_first_last && last - first >= 2;
            Ok(Some((first.into(), last.into(), reserved_ends)))
        }
    }
}

fn range_block(
    start: &str,
    stop: Option<&str>,
    field: &str,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Read {
    let parse = |text: &str, name: &str| {
        text.parse::<IpAddr>().map_err(|_| {
            (
                format!("{field}.{name}"),
                format!("{text:?} is not an IP address"),
            )
        })
    };
    let first = parse(start, "start")?;
    let last = match stop {
        Some(stop) => parse(stop, "stop")?,
        None => first,
    };
    match (first, last) {
        (IpAddr::V4(first), IpAddr::V4(last)) if last < first => Err((
            format!("{field}.stop"),
            format!("stop {last} is below start {first}"),
        )),
        (IpAddr::V4(first), IpAddr::V4(last)) => Ok(Some((first, last, false))),
        (IpAddr::V6(_), IpAddr::V6(_)) => {
            diagnostics.info(
                Reason::IPv6NotServed,
                field,
                "IPv6 range skipped: only IPv4 is served",
            );
            Ok(None)
        }
        _ => Err((
            field.to_owned(),
            "start and stop are of different address families".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Severity;
    use super::super::fixtures::*;
    use super::*;

    fn only_pool(spec: &str) -> IpPool {
        IpPool::clone(&parse_ok(&pool_doc("p", spec)).pools[0])
    }

    fn block(field: &str, first: [u8; 4], last: [u8; 4], reserved_ends: bool) -> IpBlock {
        IpBlock {
            field: field.into(),
            first: first.into(),
            last: last.into(),
            reserved_ends,
        }
    }

    #[test]
    fn reads_the_reference_pool() {
        let pool = IpPool::clone(&reference().pools[0]);
        assert_eq!(
            pool.object().to_string(),
            "CiliumLoadBalancerIPPool/first-pool"
        );
        assert_eq!(
            pool.blocks,
            [block(
                "spec.blocks[0]",
                [192, 168, 10, 32],
                [192, 168, 10, 63],
                true
            )]
        );
        // `matchLabels: {}` selects every service.
        assert_eq!(pool.service_selector, Selector::default());
        assert!(!pool.disabled);
    }

    #[test]
    fn block_shapes() {
        let pool = only_pool(
            "  blocks:\n    - cidr: 10.0.0.0/30\n    - start: 10.0.1.10\n      stop: 10.0.1.20\n\
             \x20   - start: 10.0.2.7\n  cidrs:\n    - cidr: 10.0.3.0/24\n  disabled: true\n",
        );
        assert_eq!(
            pool.blocks,
            [
                block("spec.blocks[0]", [10, 0, 0, 0], [10, 0, 0, 3], false),
                block("spec.blocks[1]", [10, 0, 1, 10], [10, 0, 1, 20], false),
                block("spec.blocks[2]", [10, 0, 2, 7], [10, 0, 2, 7], false),
                block("spec.cidrs[0]", [10, 0, 3, 0], [10, 0, 3, 255], false),
            ]
        );
        assert!(pool.disabled);
        assert_eq!(pool.blocks[0].describe(), "10.0.0.0/30");
        assert_eq!(pool.blocks[1].describe(), "10.0.1.10-10.0.1.20");
        assert_eq!(pool.blocks[2].describe(), "10.0.2.7/32");
    }

    /// (allowFirstLastIPs line, block, whether its ends are reserved)
    #[test]
    fn allow_first_last_ips() {
        let cases = [
            // Cilium's default is Yes.
            ("", "cidr: 10.0.0.0/24", false),
            ("  allowFirstLastIPs: \"Yes\"\n", "cidr: 10.0.0.0/24", false),
            ("  allowFirstLastIPs: \"No\"\n", "cidr: 10.0.0.0/24", true),
            // YAML 1.2: an unquoted No is still the string Cilium expects.
            ("  allowFirstLastIPs: No\n", "cidr: 10.0.0.0/24", true),
            ("  allowFirstLastIPs: \"No\"\n", "cidr: 10.0.0.0/30", true),
            ("  allowFirstLastIPs: \"No\"\n", "cidr: 10.0.0.0/31", false),
            ("  allowFirstLastIPs: \"No\"\n", "cidr: 10.0.0.1/32", false),
            (
                "  allowFirstLastIPs: \"No\"\n",
                "start: 10.0.0.0\n      stop: 10.0.0.255",
                false,
            ),
        ];
        for (allow, block, reserved) in cases {
            let pool = only_pool(&format!("{allow}  blocks:\n    - {block}\n"));
            assert_eq!(pool.blocks[0].reserved_ends, reserved, "{allow} {block}");
        }
        let no = only_pool("  allowFirstLastIPs: \"No\"\n  blocks:\n    - cidr: 10.0.0.0/24\n");
        let ends = [Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 255)];
        assert!(ends.iter().all(|a| no.blocks[0].is_reserved(*a)));
        assert!(!no.blocks[0].is_reserved(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!no.blocks[0].is_reserved(Ipv4Addr::new(10, 0, 1, 0)));
    }

    #[test]
    fn block_membership() {
        let pool = IpPool::clone(&reference().pools[0]);
        assert!(pool.block_of(Ipv4Addr::new(192, 168, 10, 32)).is_some());
        assert!(pool.block_of(Ipv4Addr::new(192, 168, 10, 63)).is_some());
        assert!(pool.block_of(Ipv4Addr::new(192, 168, 10, 31)).is_none());
        assert!(pool.block_of(Ipv4Addr::new(192, 168, 10, 64)).is_none());
    }

    #[test]
    fn skipped_and_normalized_blocks_warn() {
        let text = pool_doc(
            "p",
            "  blocks:\n    - cidr: \"2004::/64\"\n    - start: \"2004:1::1\"\n      stop: \"2004:1::9\"\n\
             \x20   - cidr: 10.0.0.7/24\n",
        );
        let pool = IpPool::clone(&parse_ok(&text).pools[0]);
        assert_eq!(
            pool.blocks,
            [block(
                "spec.blocks[2]",
                [10, 0, 0, 0],
                [10, 0, 0, 255],
                false
            )]
        );
        let warnings = parse_findings(&text);
        assert_line(
            &warnings,
            &["CiliumLoadBalancerIPPool/p: spec.blocks[0].cidr: IPv6 block 2004::/64 skipped"],
        );
        assert_line(
            &warnings,
            &["CiliumLoadBalancerIPPool/p: spec.blocks[1]: IPv6 range skipped"],
        );
        assert_line(
            &warnings,
            &["spec.blocks[2].cidr: 10.0.0.7/24 has host bits set; the block is 10.0.0.0/24"],
        );
    }

    #[test]
    fn blocks_that_cannot_be_read_are_skipped_and_the_others_serve() {
        let cases = [
            (
                "    - cidr: 10.0.0.0/33\n",
                "spec.blocks[0].cidr: \"10.0.0.0/33\" is not a CIDR",
            ),
            (
                "    - cidr: 10.0.0.0\n",
                "spec.blocks[0].cidr: \"10.0.0.0\" is not a CIDR",
            ),
            (
                "    - start: 10.0.0.9\n      stop: 10.0.0.1\n",
                "spec.blocks[0].stop: stop 10.0.0.1 is below start 10.0.0.9",
            ),
            (
                "    - start: 10.0.0.x\n",
                "spec.blocks[0].start: \"10.0.0.x\" is not an IP address",
            ),
            (
                "    - start: 10.0.0.1\n      stop: \"2001::1\"\n",
                "spec.blocks[0]: start and stop are of different address families",
            ),
            (
                "    - cidr: 10.0.0.0/24\n      start: 10.0.0.1\n",
                "spec.blocks[0]: set either cidr or start/stop, not both",
            ),
            (
                "    - stop: 10.0.0.1\n",
                "spec.blocks[0].start: stop without start",
            ),
            ("    - {}\n", "spec.blocks[0]: needs a cidr or a start"),
        ];
        for (bad, expected) in cases {
            let text = pool_doc("p", &format!("  blocks:\n{bad}    - cidr: 10.9.0.0/30\n"));
            let pool = IpPool::clone(&parse_ok(&text).pools[0]);
            assert_eq!(
                pool.blocks,
                [block("spec.blocks[1]", [10, 9, 0, 0], [10, 9, 0, 3], false)],
                "{bad}"
            );
            let findings = parse_reasons(&text);
            assert_eq!(findings.len(), 1, "{findings:#?}");
            let (severity, reason, line) = &findings[0];
            assert_eq!(
                (*severity, *reason),
                (Severity::Warning, Reason::InvalidBlock)
            );
            assert_line(
                std::slice::from_ref(line),
                &[
                    &format!("objects.yaml: CiliumLoadBalancerIPPool/p: {expected}"),
                    "; the block is skipped",
                ],
            );
        }
    }

    #[test]
    fn a_pool_with_an_unreadable_selector_is_broken_and_an_odd_allow_first_last_reads_as_yes() {
        let text = pool_doc(
            "p",
            "  allowFirstLastIPs: \"no\"\n  blocks:\n    - cidr: 10.0.0.0/24\n  serviceSelector:\n\
             \x20   matchExpressions:\n      - key: a\n        operator: Equals\n",
        );
        let pool = IpPool::clone(&parse_ok(&text).pools[0]);
        assert!(!pool.blocks[0].reserved_ends);
        assert_eq!(
            pool.broken.as_deref(),
            Some(
                "spec.serviceSelector.matchExpressions[0].operator: unknown operator \"Equals\" (expected In, NotIn, Exists or DoesNotExist)"
            )
        );
        let reasons = parse_severities(&text);
        assert_eq!(
            reasons,
            [
                (Severity::Warning, Reason::InvalidAllowFirstLastIPs),
                (Severity::Warning, Reason::InvalidSelector),
            ]
        );
    }

    #[test]
    fn a_pool_that_does_not_deserialize_refuses_the_file() {
        let errors = parse_errors(&pool_doc("p", "  disabled: \"yes\"\n"));
        assert_eq!(
            errors,
            [
                "objects.yaml: CiliumLoadBalancerIPPool/p: spec.disabled: invalid type: string \"yes\", expected a boolean"
            ]
        );
    }
}
