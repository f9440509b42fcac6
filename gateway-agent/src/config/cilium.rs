//! Serde shapes of the two Cilium CRDs' specs, as `kubectl get -o yaml` prints them. Unknown
//! fields (status, ...) are ignored like the API server's clients do; the kind and name are
//! read before these shapes are.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;

/// `cilium.io/v2alpha1` or `cilium.io/v2` `CiliumLoadBalancerIPPool`.
#[derive(Debug, Deserialize)]
pub(crate) struct CiliumLoadBalancerIpPool {
    /// Its creation time decides which of two overlapping pools conflicts.
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IpPoolSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IpPoolSpec {
    pub blocks: Option<Vec<IpPoolBlock>>,
    /// Deprecated spelling of `blocks` (v2alpha1), still read.
    pub cidrs: Option<Vec<IpPoolBlock>>,
    #[serde(rename = "allowFirstLastIPs")]
    pub allow_first_last_ips: Option<String>,
    pub service_selector: Option<LabelSelector>,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct IpPoolBlock {
    pub cidr: Option<String>,
    pub start: Option<String>,
    pub stop: Option<String>,
}

/// `cilium.io/v2alpha1` `CiliumL2AnnouncementPolicy`.
#[derive(Debug, Deserialize)]
pub(crate) struct CiliumL2AnnouncementPolicy {
    #[serde(default)]
    pub spec: L2PolicySpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct L2PolicySpec {
    pub interfaces: Option<Vec<String>>,
    /// Cilium's default is false: a policy that does not say so announces no LB IPs.
    #[serde(default, rename = "loadBalancerIPs")]
    pub load_balancer_ips: bool,
    /// Cilium's default is false: `spec.externalIPs` are announced only when a policy says so.
    #[serde(default, rename = "externalIPs")]
    pub external_ips: bool,
    pub node_selector: Option<LabelSelector>,
    pub service_selector: Option<LabelSelector>,
}
