//! Where each kind is read from on the API server. Services, EndpointSlices and Nodes are
//! built in; the two Cilium kinds are custom resources whose served versions depend on the
//! CRDs installed (Cilium's own, or `deploy/crds.yaml`): the newest served version the
//! agent understands is read (every served version holds the same objects).

use kube::Client;
use kube::core::ApiResource;

use crate::config::Kind;

/// The API group of the Cilium kinds.
pub(crate) const CILIUM_GROUP: &str = "cilium.io";

fn api(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The resource of a built-in kind; `None` for a custom one (see [`served`]).
pub(crate) fn built_in(kind: Kind) -> Option<ApiResource> {
    match kind {
        Kind::Service => Some(api("", "v1", "Service", "services")),
        Kind::EndpointSlice => Some(api(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
        )),
        Kind::Node => Some(api("", "v1", "Node", "nodes")),
        Kind::IpPool | Kind::L2Policy => None,
    }
}

/// The versions of a Cilium kind the agent understands, newest first, and its plural.
fn cilium(kind: Kind) -> (&'static [&'static str], &'static str) {
    match kind {
        Kind::IpPool => (&["v2", "v2alpha1"], "ciliumloadbalancerippools"),
        Kind::L2Policy => (&["v2", "v2alpha1"], "ciliuml2announcementpolicies"),
        Kind::Service | Kind::EndpointSlice | Kind::Node => (&[], ""),
    }
}

/// The resource a custom kind is read from: its newest version the API server serves.
/// `Ok(None)` when it serves none (the CRD is not installed).
pub(crate) async fn served(client: &Client, kind: Kind) -> kube::Result<Option<ApiResource>> {
    let (versions, plural) = cilium(kind);
    for version in versions {
        let group_version = format!("{CILIUM_GROUP}/{version}");
        match client.list_api_group_resources(&group_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == plural) => {
                return Ok(Some(api(CILIUM_GROUP, version, kind.name(), plural)));
            }
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

/// What the API server must serve for `kind`, for the finding about a kind it does not.
pub(crate) fn wanted(kind: Kind) -> String {
    let (versions, plural) = cilium(kind);
    format!(
        "{plural}.{CILIUM_GROUP} ({})",
        versions
            .iter()
            .map(|v| format!("{CILIUM_GROUP}/{v}"))
            .collect::<Vec<_>>()
            .join(" or ")
    )
}
