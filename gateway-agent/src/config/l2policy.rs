//! `CiliumL2AnnouncementPolicy`: which services' VIPs are answered for in ARP, by which
//! nodes, on which interfaces.

use regex::Regex;

use super::ObjectRef;
use super::cilium::CiliumL2AnnouncementPolicy;
use super::error::ObjectDiagnostics;
use super::selector::{Selector, selector};

#[derive(Clone, Debug)]
pub struct L2Policy {
    pub name: String,
    /// `spec.interfaces`: an interface is used if any regex matches anywhere in its name (Go's
    /// `regexp.MatchString`, unanchored). Empty means every interface.
    pub interfaces: Vec<Regex>,
    /// `spec.loadBalancerIPs`; false (Cilium's default) announces no VIP at all.
    pub load_balancer_ips: bool,
    pub node_selector: Selector,
    pub service_selector: Selector,
}

impl L2Policy {
    pub const KIND: &str = "CiliumL2AnnouncementPolicy";

    pub fn object(&self) -> ObjectRef {
        ObjectRef::cluster_scoped(Self::KIND, &self.name)
    }
}

pub(crate) fn l2_policy(
    raw: &CiliumL2AnnouncementPolicy,
    name: String,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<L2Policy> {
    let mut interfaces = Vec::new();
    for (i, pattern) in raw.spec.interfaces.iter().flatten().enumerate() {
        match Regex::new(pattern) {
            Ok(regex) => interfaces.push(regex),
            Err(error) => diagnostics.error(
                format!("spec.interfaces[{i}]"),
                format!("bad regex {pattern:?}: {}", last_line(&error.to_string())),
            ),
        }
    }
    if !raw.spec.load_balancer_ips {
        diagnostics.warn(
            "spec.loadBalancerIPs",
            "not true: this policy announces no LoadBalancer VIP",
        );
    }
    let node_selector = selector(
        raw.spec.node_selector.as_ref(),
        "spec.nodeSelector",
        diagnostics,
    );
    let service_selector = selector(
        raw.spec.service_selector.as_ref(),
        "spec.serviceSelector",
        diagnostics,
    );
    diagnostics.finish(L2Policy {
        name,
        interfaces,
        load_balancer_ips: raw.spec.load_balancer_ips,
        node_selector,
        service_selector,
    })
}

/// regex's syntax errors draw a caret diagram over several lines and end with
/// `error: <what>`; findings are one per line, so keep only the what.
fn last_line(message: &str) -> &str {
    message
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .unwrap_or_else(|| message.trim())
}
