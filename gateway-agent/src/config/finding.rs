//! What the agent found about one object (or about the source): a [`Finding`], with how much
//! it costs the object ([`Severity`]), a machine [`Reason`] and a message naming the field.
//!
//! Findings never refuse a file: they stay with their object. The object is served, served
//! in part (a port skipped), or not at all (a Service without a VIP), and the finding says
//! which. What refuses a whole file is a [`super::ConfigError`].

use std::fmt;

use super::ObjectRef;

/// How much a finding costs its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing the object asks for is lost (a Service of another
    /// loadBalancerClass left alone, the IPv6 half of a dual-stack Service).
    Info,
    /// The object is served, but part of it is skipped or worked around (a port of an
    /// unsupported protocol, a stale status address replaced, a pool conflicting).
    Warning,
    /// The object, or one of its requests, is not served (a Service without a VIP, a
    /// requested address not granted, an L2 policy that cannot be read).
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Why: one word in CamelCase, usable as a Kubernetes condition or Event reason.
        /// Where Cilium's LB-IPAM has a reason for the same case, this is its CamelCase
        /// spelling (`no_pool` is [`Reason::NoPool`], `out_of_ips` [`Reason::OutOfIPs`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    // The source.
    /// A kind the agent does not read (a Deployment in a `kubectl get -o yaml` export).
    KindNotRead,
    /// A kind the agent reads, in an `apiVersion` whose shape it does not know.
    ApiVersionNotRead,
    /// A Service whose `spec.loadBalancerClass` belongs to another controller.
    LoadBalancerClassNotServed,
    /// An object the API server returned that does not deserialize into its kind's shape
    /// (in a file, this refuses the file): the object is skipped, the others serve.
    ObjectNotRead,
    /// The API server does not serve a kind (no CRD for a Cilium kind): it reads as empty.
    KindNotServed,

    // A Service's own fields.
    /// A port of another protocol than TCP or UDP (SCTP): the port is skipped.
    UnsupportedProtocol,
    /// A port number outside 1..=65535 (or missing): the port is skipped.
    InvalidPort,
    /// The same port and protocol twice: the later one is skipped.
    DuplicatePort,
    /// `spec.externalTrafficPolicy` is neither Local nor Cluster: the Service is not served.
    InvalidTrafficPolicy,
    /// `spec.sessionAffinity` or its timeout is not one Kubernetes accepts: the Service is
    /// not served.
    InvalidSessionAffinity,
    /// A requested address that is not an IP address: the Service is not served.
    InvalidRequestedIP,
    /// An address in `status.loadBalancer.ingress` or `spec.externalIPs` that is not an IP
    /// address: the entry is skipped.
    InvalidAddress,
    /// A `spec.loadBalancerSourceRanges` entry that is not a CIDR: the Service is not served.
    InvalidSourceRange,
    /// IPv6 is not served yet: an IPv6-only Service gets no VIP; the IPv6 half of a
    /// dual-stack one (or an IPv6 block, slice or address) is skipped.
    IPv6NotServed,

    // LB-IPAM, as Cilium's `cilium.io/IPAMRequestSatisfied` condition says it.
    /// Every requested VIP and family is granted.
    Satisfied,
    /// No enabled, non-conflicting pool selects the Service (Cilium: `no_pool`).
    NoPool,
    /// Every pool that selects the Service is full (Cilium: `out_of_ips`).
    OutOfIPs,
    /// A requested address lies in no pool (Cilium: `no_pool`).
    RequestedIPNotInPool,
    /// A requested address lies in a pool whose serviceSelector does not select the Service
    /// (Cilium: `pool_selector_mismatch`).
    PoolSelectorMismatch,
    /// A requested address is the first or last of a CIDR block with `allowFirstLastIPs: No`.
    RequestedIPReserved,
    /// A requested address lies in a disabled pool.
    PoolDisabled,
    /// A requested address is another Service's, and there is no sharing key (Cilium:
    /// `already_allocated`).
    AlreadyAllocated,
    /// A requested or shared address is held by Services this one cannot share with
    /// (Cilium: `already_allocated_incompatible_service`).
    IncompatibleSharing,
    /// A status address that is no longer allocatable to the Service: another is allocated.
    StaleStatusIP,

    // Pools.
    /// A pool's blocks overlap another, older pool's (or each other): it allocates nothing
    /// new (Cilium's `cilium.io/PoolConflict`).
    PoolConflict,
    /// A block that is not a CIDR or a start/stop range: the block is skipped.
    InvalidBlock,
    /// A CIDR with host bits set: the block is the prefix it names.
    HostBitsSet,
    /// `allowFirstLastIPs` is neither Yes nor No: treated as Yes, as Cilium does.
    InvalidAllowFirstLastIPs,
    /// A label selector Kubernetes would reject: a pool allocates nothing new, a policy
    /// announces nothing.
    InvalidSelector,

    // L2 announcement policies.
    /// An interface regex that does not compile: the policy announces nothing.
    InvalidInterfaceRegex,
    /// Neither `loadBalancerIPs` nor `externalIPs` is true: the policy announces nothing.
    AnnouncesNothing,
    /// No L2 policy announces the address: no node answers ARP for it.
    NoAnnouncementPolicy,
    /// No node is Ready, selected by a policy and (for Local) running a ready endpoint.
    NoEligibleNode,

    // Frontends and backends.
    /// A named targetPort that a slice does not resolve: its endpoints do not back the port.
    NamedPortUnresolved,
    /// An address and port another Service already serves: the port is skipped there.
    PortConflict,
    /// A slice of an address type that is not served, or without a service name.
    SliceNotServed,

    // Nodes.
    /// This node is not among the Node objects: it announces nothing.
    NodeNotFound,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something found about an object, or about the source when `object` is `None`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Finding {
    pub file: String,
    pub object: Option<ObjectRef>,
    /// JSON-path-like location inside the object, e.g. `spec.ports[1].protocol`; empty when
    /// the finding concerns the whole object.
    pub field: String,
    pub message: String,
    pub reason: Reason,
    pub severity: Severity,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::error::write_finding(
            f,
            &self.file,
            self.object.as_ref(),
            &self.field,
            &self.message,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_their_camel_case_names() {
        assert_eq!(Reason::OutOfIPs.as_str(), "OutOfIPs");
        assert_eq!(Reason::IPv6NotServed.to_string(), "IPv6NotServed");
        assert_eq!(
            serde_json::to_string(&Reason::PoolConflict).unwrap(),
            "\"PoolConflict\""
        );
    }

    #[test]
    fn findings_display_like_errors() {
        let finding = Finding {
            file: "objects.yaml".into(),
            object: Some(ObjectRef {
                kind: "Service".into(),
                namespace: "web".into(),
                name: "dns".into(),
            }),
            field: "spec.ports[1].protocol".into(),
            message: "unsupported protocol \"SCTP\"".into(),
            reason: Reason::UnsupportedProtocol,
            severity: Severity::Warning,
        };
        assert_eq!(
            finding.to_string(),
            "objects.yaml: Service/web/dns: spec.ports[1].protocol: unsupported protocol \"SCTP\""
        );
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Error);
    }
}
