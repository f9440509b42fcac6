//! L2 announcement policies: which one announces a service's VIP, and on which of this
//! node's interfaces.

use crate::config::{Config, Diagnostics, L2Policy, Service};

use super::selector::service_labels;

/// The policy that announces `service`'s VIP: the one with `loadBalancerIPs: true` whose
/// serviceSelector selects it. More than one is an error (the reference: "Only ONE policy
/// should exist. Having multiple policies causes ARP conflicts"), reported naming them all.
pub(crate) fn policy_for<'c>(
    config: &'c Config,
    service: &Service,
    diagnostics: &mut Diagnostics,
) -> Option<&'c L2Policy> {
    let labels = service_labels(service);
    let selecting: Vec<&L2Policy> = config
        .l2_policies
        .iter()
        .filter(|policy| policy.load_balancer_ips && policy.service_selector.matches(&labels))
        .collect();
    match selecting.as_slice() {
        [] => None,
        [policy] => Some(policy),
        many => {
            let names: Vec<String> = many.iter().map(|p| p.object().to_string()).collect();
            diagnostics.error(
                Some(&service.object),
                "metadata.labels",
                format!(
                    "selected by {} L2 announcement policies ({}): only one may select a \
                     service, or nodes answer ARP for its VIP in conflict",
                    many.len(),
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// The interfaces among `interfaces` that `policy` announces on, sorted and deduplicated.
pub(crate) fn interfaces<'i>(
    policy: &L2Policy,
    interfaces: &'i [String],
) -> impl Iterator<Item = &'i str> {
    let mut matched: Vec<&str> = interfaces
        .iter()
        .map(String::as_str)
        .filter(|name| {
            policy.interfaces.is_empty() || policy.interfaces.iter().any(|re| re.is_match(name))
        })
        .collect();
    matched.sort_unstable();
    matched.dedup();
    matched.into_iter()
}
