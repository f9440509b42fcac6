//! The model as a whole: the reference on each node, the cluster-wide view, order
//! independence, the cache, and what several services make of one address (shared VIPs,
//! external IPs, ports that clash).

use super::*;
use crate::config::LoadBalancerClasses;
use crate::config::fixtures::*;
use crate::source::file::{FileSource, parse};
use crate::store::Store;

const UPLINKS: [&str; 3] = ["lo", "ens18", "cilium_host"];

fn uplinks() -> Vec<String> {
    UPLINKS.map(String::from).to_vec()
}

fn state(text: &str, node: &str) -> DesiredState {
    desired_state(&parse_ok(text), node, &uplinks())
}

fn internal() -> ObjectRef {
    ObjectRef {
        kind: "Service".into(),
        namespace: "gateway".into(),
        name: "cilium-gateway-gateway-internal".into(),
    }
}

#[test]
fn the_reference_on_worker_2() {
    let state = state(REFERENCE, "worker-2");
    assert_eq!(state.frontends.len(), 4);
    assert!(state.frontends.iter().all(|f| f.backends
        == [BackendAddr {
            addr: Ipv4Addr::new(10, 0, 2, 10),
            port: if f.port == 80 { 10080 } else { 10443 },
            remote: false,
        }]));
    assert_eq!(
        state.announcements,
        [Announcement {
            interface: "ens18".into(),
            vip: Ipv4Addr::new(192, 168, 10, 49),
            service: internal(),
            policy: "l2-policy".into(),
        }]
    );
    assert_eq!(
        state.services[1],
        ServiceStatus {
            service: internal(),
            traffic_policy: TrafficPolicy::Local,
            vips: vec![ServiceVip {
                vip: Ipv4Addr::new(192, 168, 10, 49),
                pool: "first-pool".into(),
                requested: true,
                shared_with: Vec::new(),
                announcer: Some("worker-2".into()),
            }],
            satisfied: true,
            reason: Reason::Satisfied,
            message: String::new(),
        }
    );
    // The /27 without its first and last address, two of them used.
    assert_eq!(
        state.pools,
        [PoolStatus {
            pool: "first-pool".into(),
            disabled: false,
            conflict: None,
            broken: None,
            total: 30,
            used: 2,
            available: 28,
        }]
    );
    assert_eq!(state.findings, []);
}

#[test]
fn every_node_lists_the_same_eligible_nodes_and_its_own_possible_announcements() {
    let config = reference();
    let states: Vec<DesiredState> = ["cp-1", "worker-1", "worker-2"]
        .iter()
        .map(|node| desired_state(&config, node, &uplinks()))
        .collect();
    let both: Vec<Name> = vec!["worker-1".into(), "worker-2".into()];
    let expected = BTreeMap::from([
        (Ipv4Addr::new(192, 168, 10, 49), both.clone()),
        (Ipv4Addr::new(192, 168, 10, 50), both),
    ]);
    for state in &states {
        assert_eq!(state.eligible, expected);
    }
    // The control plane is not selected: it could announce nothing.
    assert!(states[0].announceable.is_empty());
    // Each worker could announce both VIPs on its ens18, and announces the one it wins.
    for state in &states[1..] {
        let vips: Vec<Ipv4Addr> = state.announceable.iter().map(|a| a.vip).collect();
        assert_eq!(
            vips,
            [
                Ipv4Addr::new(192, 168, 10, 49),
                Ipv4Addr::new(192, 168, 10, 50)
            ]
        );
        assert!(state.announceable.iter().all(|a| a.interface == "ens18"));
        assert_eq!(state.announcements.len(), 1);
        assert!(state.announceable.contains(&state.announcements[0]));
    }
    // No interface the policy selects: eligible all the same, but nothing to announce.
    let state = desired_state(&config, "worker-1", &["lo".to_owned()]);
    assert!(state.announceable.is_empty() && state.announcements.is_empty());
    assert_eq!(state.eligible, expected);
}

#[test]
fn cluster_state_matches_every_node_view() {
    let config = reference();
    let cluster = cluster_state(&config);
    for node in ["cp-1", "worker-1", "worker-2"] {
        let state = desired_state(&config, node, &uplinks());
        assert_eq!(state.services, cluster.services, "{node}");
        assert_eq!(state.pools, cluster.pools, "{node}");
    }
}

#[test]
fn cluster_services_go_to_endpoints_anywhere_and_any_selected_node_announces_them() {
    let cluster = edit(
        REFERENCE,
        "  externalTrafficPolicy: Local\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n\
         \x20   clientIP:\n      timeoutSeconds: 10800\n  selector:\n    io.cilium.gateway/owning-gateway: gateway-external",
        "  externalTrafficPolicy: Cluster\n  selector:\n    io.cilium.gateway/owning-gateway: gateway-external",
    );
    let backend = |last, remote| BackendAddr {
        addr: Ipv4Addr::new(10, 0, last, 10),
        port: 10080,
        remote,
    };
    let external = |state: &DesiredState| {
        let f = state
            .frontends
            .iter()
            .find(|f| f.vip == Ipv4Addr::new(192, 168, 10, 50) && f.port == 80)
            .expect("the external gateway's port 80")
            .clone();
        let announced = state.announcements.iter().any(|a| a.vip == f.vip);
        (f.backends, announced)
    };
    let announcer = |state: &DesiredState| {
        let status = state
            .services
            .iter()
            .find(|s| s.service.name == "cilium-gateway-gateway-external")
            .expect("the external gateway");
        assert_eq!(status.traffic_policy, TrafficPolicy::Cluster);
        status.vips[0]
            .announcer
            .as_ref()
            .map(|n| n.as_str().to_owned())
    };
    // Both envoys, the other node's through SNAT; worker-1 announces .50, as for Local.
    let on_worker_1 = state(&cluster, "worker-1");
    assert_eq!(lines(&on_worker_1.findings), Vec::<String>::new());
    assert_eq!(
        external(&on_worker_1),
        (vec![backend(1, false), backend(2, true)], true)
    );
    assert_eq!(
        external(&state(&cluster, "worker-2")),
        (vec![backend(1, true), backend(2, false)], false)
    );
    // worker-1's envoy is gone: worker-1 still announces (a Cluster service needs no local
    // endpoint) and sends everything to worker-2's.
    let slice = "endpoints:\n  - addresses: [\"10.0.1.10\"]\n    nodeName: worker-1\n    conditions:\n      ready: true\n  - addresses: [\"10.0.2.10\"]";
    let remote_only = state(
        &edit(
            &cluster,
            slice,
            "endpoints:\n  - addresses: [\"10.0.2.10\"]",
        ),
        "worker-1",
    );
    assert_eq!(external(&remote_only), (vec![backend(2, true)], true));
    assert_eq!(announcer(&remote_only).as_deref(), Some("worker-1"));
}

#[test]
fn a_node_missing_from_the_file_announces_nothing() {
    let state = state(REFERENCE, "worker-9");
    assert!(state.announcements.is_empty());
    assert_eq!(state.frontends.len(), 4);
    assert!(state.frontends.iter().all(|f| f.backends.is_empty()));
    assert_line(
        &lines(&state.findings),
        &[
            "objects.yaml: Node/worker-9: this node is not among the Node objects: it announces nothing",
        ],
    );
}

#[test]
fn the_source_findings_are_carried() {
    let text = reference_with(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n  namespace: y\n",
    );
    assert_line(
        &lines(&state(&text, "worker-1").findings),
        &["Deployment/y/x: skipped"],
    );
    assert_line(
        &lines(&cluster_state(&parse_ok(&text)).findings),
        &["Deployment/y/x: skipped"],
    );
}

#[test]
fn document_order_does_not_matter() {
    // The reference plus services allocated in every pass, sharing, conflicting pools, a
    // refused request, an external IP, and a skipped kind.
    let extra = [
        service_doc("web", "dyn-a").local().created("2025-01-02T00:00:00Z").yaml(),
        service_doc("web", "dyn-b").local().created("2025-01-01T00:00:00Z").yaml(),
        service_doc("web", "dyn-c").local().yaml(),
        service_doc("api", "held").local().holds("192.168.10.40").yaml(),
        service_doc("api", "cluster").yaml(),
        service_doc("dns", "tcp").sharing("dns").ports(&[(53, "TCP")]).yaml(),
        service_doc("dns", "udp").sharing("dns").ports(&[(53, "UDP")]).yaml(),
        service_doc("web", "taken").requests("192.168.10.40").yaml(),
        service_doc("web", "outside").local().spec("  externalIPs: [192.168.10.90]").yaml(),
        pool_doc("later-pool", "  blocks:\n    - cidr: 192.168.10.56/29\n"),
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: cilium-envoy\n  namespace: kube-system\n"
            .to_owned(),
    ];
    let mut documents: Vec<String> = REFERENCE
        .split("\n---\n")
        .map(|doc| format!("{}\n", doc.trim_end()))
        .collect();
    documents.extend(extra);
    let expected: Vec<DesiredState> = ["cp-1", "worker-1", "worker-2"]
        .iter()
        .map(|node| state(&documents.join("---\n"), node))
        .collect();
    assert_eq!(expected[0].services.len(), 11);
    assert!(expected[0].pools[1].conflict.is_some());

    let mut random = XorShift(0x5eed_1234_abcd_ef01);
    for round in 0..25 {
        for i in (1..documents.len()).rev() {
            documents.swap(i, random.below(i + 1));
        }
        let text = documents.join("---\n");
        for (node, expected) in ["cp-1", "worker-1", "worker-2"].iter().zip(&expected) {
            assert_eq!(&state(&text, node), expected, "round {round}, {node}");
        }
    }
}

/// Each slot of a file: the versions of one document it may hold ("" for none).
fn slots() -> Vec<Vec<String>> {
    let mut slots: Vec<Vec<String>> = REFERENCE
        .split("\n---\n")
        .map(|doc| {
            let doc = format!("{}\n", doc.trim_end());
            let mut versions = vec![doc.clone()];
            for (from, to) in [
                ("status: \"True\"", "status: \"False\""),
                ("    - ^e.*", "    - ^eth1$"),
                ("10.0.1.10", "10.0.1.11"),
                ("ready: true", "ready: false"),
            ] {
                if doc.contains(from) {
                    versions.push(doc.replacen(from, to, 1));
                }
            }
            versions
        })
        .collect();
    for i in 0..4 {
        let name = format!("svc-{i}");
        let service = service_doc("web", &name).local();
        slots.push(vec![
            service.yaml(),
            // The same objects a line further down, and what follows too.
            format!("# moved down\n{}", service.yaml()),
            service_doc("web", &name)
                .local()
                .requests("192.168.10.40")
                .yaml(),
            // Shared with the others of its key (or refused when they clash).
            service_doc("web", &name)
                .local()
                .sharing("k")
                .spec("  selector:\n    app: shared")
                .ports(&[(8000 + i as u16, "TCP")])
                .yaml(),
            service_doc("web", &name)
                .local()
                .spec("  externalIPs: [192.168.10.90]")
                .yaml(),
            service_doc("web", &name).yaml(),
            String::new(),
        ]);
        let slice = |node: &str, ready: bool| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-a\n\
                 \x20 namespace: web\n  labels:\n    kubernetes.io/service-name: {name}\n\
                 addressType: IPv4\nendpoints:\n  - addresses: [10.0.{i}.20]\n    nodeName: {node}\n\
                 \x20   conditions:\n      ready: {ready}\nports:\n  - name: http\n    port: 8080\n"
            )
        };
        slots.push(vec![
            slice("worker-1", true),
            // One more endpoint: the usual edit, which moves every line after it.
            slice("worker-1", true).replace(
                "endpoints:\n",
                &format!("endpoints:\n  - addresses: [10.0.{i}.21]\n    nodeName: worker-1\n"),
            ),
            slice("worker-2", true),
            slice("worker-1", false),
            String::new(),
        ]);
    }
    slots.push(vec![
        String::new(),
        "apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: ext\n\
         spec:\n  externalIPs: true\n  interfaces: [eth1]\n"
            .to_owned(),
    ]);
    slots
}

#[test]
fn reusing_earlier_results_is_the_same_as_starting_over() {
    let slots = slots();
    let interfaces = ["ens18".to_owned(), "eth1".to_owned()];
    let mut random = XorShift(0x0dd_ba11_c0ff_ee00);
    let path = std::path::Path::new(FILE);
    let mut source = FileSource::new(path, LoadBalancerClasses::default());
    let mut store = Store::new(FILE);
    let mut caches = ModelCache::default();
    let mut chosen = vec![0; slots.len()];
    for round in 0..400 {
        // Mostly one document changes, as in a reload; sometimes several.
        for _ in 0..1 + 3 * usize::from(random.chance(5)) {
            let slot = random.below(slots.len());
            chosen[slot] = random.below(slots[slot].len());
        }
        let text: String = chosen
            .iter()
            .zip(&slots)
            .map(|(&v, versions)| versions[v].as_str())
            .filter(|doc| !doc.is_empty())
            .collect::<Vec<_>>()
            .join("---\n");
        let node = ["worker-1", "worker-2"][random.below(2)];
        let update = source.read_text(&text);
        let fresh = parse(FILE, &text);
        let (Ok(update), Ok(fresh)) = (update, fresh) else {
            panic!("round {round}: the file does not parse:\n{text}");
        };
        store.apply(update.batch);
        source.accept(update.documents);
        let cached = desired_state_cached(store.config(), node, &interfaces, &mut caches);
        // Only this run's services are remembered.
        assert_eq!(
            caches.services.len(),
            cached.services.len(),
            "round {round}"
        );
        let expected = desired_state(&fresh, node, &interfaces);
        assert_eq!(cached, expected, "round {round} on {node}:\n{text}");
    }
}

/// The reference's nodes and pool, its L2 policy (announcing external IPs too), and
/// `services`, with an envoy-like endpoint on worker-1 for each.
fn with_services(services: &[ServiceDoc]) -> String {
    let mut docs: Vec<String> = REFERENCE
        .split("\n---\n")
        .map(|doc| format!("{}\n", doc.trim_end()))
        .filter(|doc| !doc.contains("kind: Service\n") && !doc.contains("kind: EndpointSlice\n"))
        .map(|doc| {
            doc.replace(
                "  loadBalancerIPs: true\n",
                "  loadBalancerIPs: true\n  externalIPs: true\n",
            )
        })
        .collect();
    for (i, service) in services.iter().enumerate() {
        let yaml = service.yaml();
        let name = yaml
            .lines()
            .find_map(|l| l.strip_prefix("  name: "))
            .expect("a name");
        let namespace = yaml
            .lines()
            .find_map(|l| l.strip_prefix("  namespace: "))
            .expect("a namespace");
        docs.push(yaml.clone());
        docs.push(format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n\
             \x20 namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\n\
             addressType: IPv4\nendpoints:\n  - addresses: [10.0.1.{}]\n    nodeName: worker-1\n",
            100 + i
        ));
    }
    docs.join("---\n")
}

/// `namespace/name` -> its VIPs, each with the services it shares them with.
fn vips(state: &ClusterState) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    (state.services.iter())
        .map(|s| {
            let vips = (s.vips.iter())
                .map(|v| {
                    let shared = v.shared_with.iter().map(|o| o.name.to_string()).collect();
                    (v.vip.to_string(), shared)
                })
                .collect();
            (format!("{}/{}", s.service.namespace, s.service.name), vips)
        })
        .collect()
}

#[test]
fn the_dns_pair_shares_one_vip_served_and_announced_once() {
    let tcp = service_doc("dns", "dns-tcp")
        .local()
        .sharing("dns")
        .spec("  selector:\n    app: coredns")
        .ports(&[(53, "TCP")])
        .created("2025-01-01T00:00:00Z");
    let udp = service_doc("dns", "dns-udp")
        .local()
        .sharing("dns")
        .spec("  selector:\n    app: coredns")
        .ports(&[(53, "UDP")])
        .created("2025-01-02T00:00:00Z");
    let text = with_services(&[tcp, udp]);
    let cluster = cluster_state(&parse_ok(&text));
    assert_eq!(
        vips(&cluster),
        BTreeMap::from([
            (
                "dns/dns-tcp".into(),
                vec![("192.168.10.33".into(), vec!["dns-udp".into()])]
            ),
            (
                "dns/dns-udp".into(),
                vec![("192.168.10.33".into(), vec!["dns-tcp".into()])]
            ),
        ])
    );
    assert_eq!(cluster.pools[0].used, 1, "a shared VIP counts once");
    assert!(cluster.services.iter().all(|s| s.satisfied));
    // Both services' endpoints run on worker-1 only: it announces the VIP, once.
    let state = state(&text, "worker-1");
    let frontends: Vec<String> = (state.frontends.iter())
        .map(|f| format!("{}:{}/{} {}", f.vip, f.port, f.protocol, f.service.name))
        .collect();
    assert_eq!(
        frontends,
        [
            "192.168.10.33:53/TCP dns-tcp",
            "192.168.10.33:53/UDP dns-udp"
        ]
    );
    let announced: Vec<String> = (state.announcements.iter())
        .map(|a| format!("{} {}", a.vip, a.interface))
        .collect();
    assert_eq!(announced, ["192.168.10.33 ens18"]);
}

#[test]
fn services_that_cannot_share_get_vips_of_their_own_or_their_request_refused() {
    let base = || {
        service_doc("web", "a")
            .local()
            .sharing("k")
            .spec("  selector:\n    app: a")
    };
    // Same key, same port and protocol: the newer one gets another VIP.
    let clash = with_services(&[
        base().created("2025-01-01T00:00:00Z"),
        service_doc("web", "b")
            .local()
            .sharing("k")
            .spec("  selector:\n    app: a")
            .created("2025-01-02T00:00:00Z"),
    ]);
    let cluster = cluster_state(&parse_ok(&clash));
    assert_eq!(
        vips(&cluster),
        BTreeMap::from([
            ("web/a".into(), vec![("192.168.10.33".into(), vec![])]),
            ("web/b".into(), vec![("192.168.10.34".into(), vec![])]),
        ])
    );
    // Requested onto another's VIP: refused on that service, with Cilium's reasons.
    let cases = [
        (
            service_doc("web", "b").requests("192.168.10.40"),
            Reason::AlreadyAllocated,
            "requested VIP 192.168.10.40 is held by Service/web/a, which it cannot share: no \
             lbipam.cilium.io/sharing-key on both",
        ),
        (
            service_doc("web", "b")
                .local()
                .sharing("k")
                .spec("  selector:\n    app: other")
                .ports(&[(81, "TCP")])
                .requests("192.168.10.40"),
            Reason::IncompatibleSharing,
            "externalTrafficPolicy Local, but they do not select the same pods (spec.selector)",
        ),
        (
            service_doc("other", "b")
                .local()
                .sharing("k")
                .spec("  selector:\n    app: a")
                .ports(&[(81, "TCP")])
                .requests("192.168.10.40"),
            Reason::IncompatibleSharing,
            "namespaces web and other are not both allowed by lbipam.cilium.io/sharing-cross-namespace",
        ),
        (
            service_doc("web", "b")
                .local()
                .sharing("k")
                .spec("  selector:\n    app: a")
                .requests("192.168.10.40"),
            Reason::IncompatibleSharing,
            "both serve 80/TCP",
        ),
        (
            service_doc("web", "b")
                .sharing("k")
                .spec("  selector:\n    app: a")
                .ports(&[(81, "TCP")])
                .requests("192.168.10.40"),
            Reason::IncompatibleSharing,
            "different externalTrafficPolicy",
        ),
    ];
    for (second, reason, message) in cases {
        // `a` is older: it takes the address first.
        let first = base()
            .requests("192.168.10.40")
            .created("2025-01-01T00:00:00Z");
        let text = with_services(&[first, second]);
        let cluster = cluster_state(&parse_ok(&text));
        let b = cluster
            .services
            .iter()
            .find(|s| s.service.name == "b")
            .unwrap();
        assert!(b.vips.is_empty() && !b.satisfied, "{b:?}");
        assert_eq!(b.reason, reason, "{}", b.message);
        assert!(b.message.contains(message), "{}", b.message);
        let a = cluster
            .services
            .iter()
            .find(|s| s.service.name == "a")
            .unwrap();
        assert_eq!(
            a.vips[0].vip,
            Ipv4Addr::new(192, 168, 10, 40),
            "the holder keeps it"
        );
        let errors: Vec<&Finding> = (cluster.findings.iter())
            .filter(|f| f.severity == Severity::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{:#?}", cluster.findings);
        assert_eq!(errors[0].object.as_ref(), Some(&b.service));
        assert_eq!(
            errors[0].field,
            "metadata.annotations[\"lbipam.cilium.io/ips\"]"
        );
    }
    // Allowed across namespaces when both say so.
    let across = |namespace: &str, allowed: &str| {
        service_doc(namespace, namespace)
            .sharing("k")
            .annotate("lbipam.cilium.io/sharing-cross-namespace", allowed)
    };
    let text = with_services(&[
        across("a", "b").ports(&[(80, "TCP")]),
        across("b", "*").ports(&[(81, "TCP")]),
    ]);
    let shared = vips(&cluster_state(&parse_ok(&text)));
    assert_eq!(
        shared["a/a"],
        [("192.168.10.33".to_owned(), vec!["b".to_owned()])]
    );
}

#[test]
fn sharing_survives_a_restart_through_status() {
    // Both carry the VIP in status (as a previous leader wrote it): they keep it, shared,
    // whatever service is added, older or not.
    let pair = |name: &str, port: u16| {
        service_doc("dns", name)
            .sharing("dns")
            .ports(&[(port, "TCP")])
            .holds("192.168.10.50")
    };
    let text = with_services(&[
        pair("a", 53),
        pair("b", 54),
        service_doc("dns", "ancient")
            .sharing("dns")
            .ports(&[(55, "TCP")])
            .created("1999-01-01T00:00:00Z"),
    ]);
    let shared = vips(&cluster_state(&parse_ok(&text)));
    assert_eq!(shared["dns/a"][0].0, "192.168.10.50");
    assert_eq!(shared["dns/b"][0].0, "192.168.10.50");
    // The newcomer joins them: the lowest address of its key it can share.
    assert_eq!(
        shared["dns/ancient"],
        [(
            "192.168.10.50".to_owned(),
            vec!["a".to_owned(), "b".to_owned()]
        )]
    );
}

#[test]
fn several_requested_vips_are_each_served_and_announced() {
    let text = with_services(&[service_doc("web", "multi")
        .local()
        .requests("192.168.10.41,192.168.10.42")]);
    let state = state(&text, "worker-1");
    let vips: Vec<String> = state.services[0]
        .vips
        .iter()
        .map(|v| v.vip.to_string())
        .collect();
    assert_eq!(vips, ["192.168.10.41", "192.168.10.42"]);
    assert_eq!(state.frontends.len(), 4);
    let announced: BTreeSet<String> = state
        .announcements
        .iter()
        .map(|a| a.vip.to_string())
        .collect();
    assert_eq!(announced.len(), 2);
    // One of them outside every pool: the other is served, the condition says which failed.
    let text = with_services(&[service_doc("web", "multi")
        .local()
        .requests("192.168.10.41,10.9.9.9")]);
    let status = &cluster_state(&parse_ok(&text)).services[0];
    assert_eq!(status.vips.len(), 1);
    assert!(!status.satisfied);
    assert_eq!(status.reason, Reason::RequestedIPNotInPool);
    assert_eq!(
        status.message,
        "requested VIP 10.9.9.9 is outside every CiliumLoadBalancerIPPool"
    );
}

#[test]
fn external_ips_are_served_where_a_policy_announces_them() {
    let service = service_doc("web", "ext")
        .local()
        .requests("192.168.10.41")
        .spec("  externalIPs: [192.168.10.90]");
    let text = with_services(std::slice::from_ref(&service));
    let state = state(&text, "worker-1");
    let frontends: BTreeSet<String> = (state.frontends.iter())
        .map(|f| format!("{}:{}", f.vip, f.port))
        .collect();
    assert!(frontends.contains("192.168.10.90:80") && frontends.contains("192.168.10.41:443"));
    assert!(
        state
            .announcements
            .iter()
            .any(|a| a.vip == Ipv4Addr::new(192, 168, 10, 90))
    );
    // Not in the status: external IPs are the service author's, not LB-IPAM's.
    assert_eq!(state.services[0].vips.len(), 1);
    // Without a policy that says externalIPs: true, neither served nor announced.
    let without = text.replace("  externalIPs: true\n", "");
    let state = desired_state(&parse_ok(&without), "worker-1", &uplinks());
    assert!(
        state
            .frontends
            .iter()
            .all(|f| f.vip != Ipv4Addr::new(192, 168, 10, 90))
    );
    assert!(
        state
            .announcements
            .iter()
            .all(|a| a.vip != Ipv4Addr::new(192, 168, 10, 90))
    );
    let finding = (state.findings.iter())
        .find(|f| f.reason == Reason::NoAnnouncementPolicy)
        .expect("told");
    assert_eq!(finding.field, "spec.externalIPs[0]");
}

#[test]
fn a_port_of_an_external_ip_another_service_serves_is_skipped_there() {
    // `web/ext` has the other's VIP as an external IP: port 80 clashes, 443 does not
    // (the owner serves only 80).
    let owner = service_doc("web", "owner")
        .local()
        .requests("192.168.10.41")
        .ports(&[(80, "TCP")]);
    let ext = service_doc("web", "ext")
        .local()
        .spec("  externalIPs: [192.168.10.41]");
    let state = state(&with_services(&[owner, ext]), "worker-1");
    let on_41: Vec<String> = (state.frontends.iter())
        .filter(|f| f.vip == Ipv4Addr::new(192, 168, 10, 41))
        .map(|f| format!("{} {}", f.port, f.service.name))
        .collect();
    assert_eq!(on_41, ["80 owner", "443 ext"]);
    let finding = (state.findings.iter())
        .find(|f| f.reason == Reason::PortConflict)
        .expect("told");
    assert_eq!(
        finding.to_string(),
        "objects.yaml: Service/web/ext: 192.168.10.41:80/TCP is already served by Service/web/owner: \
         the port is skipped on 192.168.10.41"
    );
}

#[test]
fn one_objects_trouble_stays_with_that_object() {
    // The list, all at once, next to the reference: a requested IP outside every
    // pool, a full pool, an SCTP port on an unrelated service, two L2 policies selecting
    // one service, overlapping pools.
    let tiny = pool_doc(
        "tiny",
        "  blocks:\n    - cidr: 10.7.0.0/32\n  serviceSelector:\n    matchLabels:\n      pool: tiny\n",
    );
    // The reference's pool leaves the tiny pool's services to it.
    let reference = edit(
        REFERENCE,
        "  serviceSelector:\n    matchLabels: {}\n",
        "  serviceSelector:\n    matchExpressions:\n      - key: pool\n        operator: DoesNotExist\n",
    );
    let text = [
        reference,
        tiny,
        service_doc("web", "outside").requests("10.9.9.9").yaml(),
        service_doc("web", "full-1").label("pool", "tiny").created("2025-01-01T00:00:00Z").yaml(),
        service_doc("web", "full-2").label("pool", "tiny").created("2025-01-02T00:00:00Z").yaml(),
        lb_service("web", "sctp", "    - port: 9\n      protocol: SCTP\n"),
        "apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: second\n\
         spec:\n  loadBalancerIPs: true\n  interfaces: [^ens]\n"
            .to_owned(),
        pool_doc("overlapping", "  blocks:\n    - cidr: 192.168.10.48/28\n"),
    ]
    .join("\n---\n");
    let config = parse_ok(&text);
    let reference_state = state(REFERENCE, "worker-2");
    let state = desired_state(&config, "worker-2", &uplinks());
    // The reference's services are served exactly as without the others.
    for (a, b) in reference_state.services.iter().zip(&state.services[..2]) {
        assert_eq!(a, b);
    }
    for f in &reference_state.frontends {
        assert!(state.frontends.contains(f), "{f:?}");
    }
    assert_eq!(state.announcements, reference_state.announcements);
    let by_name = |name: &str| {
        state
            .services
            .iter()
            .find(|s| s.service.name == name)
            .unwrap()
    };
    assert_eq!(by_name("outside").reason, Reason::RequestedIPNotInPool);
    assert_eq!(by_name("full-1").vips[0].vip, Ipv4Addr::new(10, 7, 0, 0));
    assert_eq!(by_name("full-2").reason, Reason::OutOfIPs);
    assert!(by_name("full-2").vips.is_empty());
    let sctp = by_name("sctp");
    assert!(sctp.satisfied);
    let reasons: BTreeSet<(String, Reason)> = (state.findings.iter())
        .map(|f| {
            (
                f.object
                    .as_ref()
                    .map_or(String::new(), |o| o.name.to_string()),
                f.reason,
            )
        })
        .collect();
    for expected in [
        ("outside", Reason::RequestedIPNotInPool),
        ("full-2", Reason::OutOfIPs),
        ("sctp", Reason::UnsupportedProtocol),
        ("overlapping", Reason::PoolConflict),
    ] {
        assert!(
            reasons.contains(&(expected.0.to_owned(), expected.1)),
            "{expected:?} in {reasons:?}"
        );
    }
    assert!(
        !reasons
            .iter()
            .any(|(name, _)| name.starts_with("cilium-gateway"))
    );
    let overlapping = state
        .pools
        .iter()
        .find(|p| p.pool == "overlapping")
        .unwrap();
    assert!(overlapping.conflict.is_some());
    assert!(
        state
            .pools
            .iter()
            .all(|p| p.pool == "overlapping" || p.conflict.is_none())
    );
}

/// Every object of `config` as an event that applies it.
fn applies(config: &crate::config::Config) -> Vec<crate::store::Event> {
    use crate::config::Object;
    use crate::store::{Entry, Event};
    let mut events = Vec::new();
    let objects = (config
        .services
        .iter()
        .map(|s| Object::Service(Arc::clone(s))))
    .chain(
        config
            .endpoint_slices
            .iter()
            .map(|s| Object::EndpointSlice(Arc::clone(s))),
    )
    .chain(config.nodes.iter().map(|n| Object::Node(Arc::clone(n))))
    .chain(config.pools.iter().map(|p| Object::IpPool(Arc::clone(p))))
    .chain(
        config
            .l2_policies
            .iter()
            .map(|p| Object::L2Policy(Arc::clone(p))),
    );
    for object in objects {
        events.push(Event::Apply(Entry::new(object)));
    }
    events
}

#[test]
fn allocation_is_a_function_of_the_objects_not_of_the_order_they_arrive_in() {
    // Requests, holders, dynamic services of equal and different ages, a sharing group, a
    // conflicting pool and a refused request: every pass of LB-IPAM.
    let text = [
        REFERENCE.to_owned(),
        pool_doc("newer", "  blocks:\n    - cidr: 192.168.10.40/30\n"),
        service_doc("web", "old")
            .created("2025-01-01T00:00:00Z")
            .yaml(),
        service_doc("web", "twin-a")
            .created("2025-01-02T00:00:00Z")
            .yaml(),
        service_doc("web", "twin-b")
            .created("2025-01-02T00:00:00Z")
            .yaml(),
        service_doc("web", "undated").yaml(),
        service_doc("web", "held").holds("192.168.10.45").yaml(),
        service_doc("web", "thief").requests("192.168.10.45").yaml(),
        service_doc("dns", "tcp")
            .sharing("dns")
            .ports(&[(53, "TCP")])
            .yaml(),
        service_doc("dns", "udp")
            .sharing("dns")
            .ports(&[(53, "UDP")])
            .yaml(),
    ]
    .join("\n---\n");
    let config = parse_ok(&text);
    let expected = cluster_state(&config);
    assert!(expected.pools.iter().any(|p| p.conflict.is_some()));
    assert!(
        expected
            .services
            .iter()
            .any(|s| !s.vips.is_empty() && !s.vips[0].shared_with.is_empty())
    );
    assert!(
        expected
            .services
            .iter()
            .any(|s| s.reason == Reason::AlreadyAllocated)
    );

    let events = applies(&config);
    let mut random = XorShift(0x0a11_0ca7_e5ee_d5ed);
    for round in 0..20 {
        let mut order = events.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, random.below(i + 1));
        }
        let mut store = Store::new(FILE);
        // One object at a time, as watches deliver them, or all at once.
        if round % 2 == 0 {
            for event in order {
                store.apply(crate::store::Batch {
                    events: vec![event],
                    source_findings: None,
                });
            }
        } else {
            store.apply(crate::store::Batch {
                events: order,
                source_findings: None,
            });
        }
        assert_eq!(cluster_state(store.config()), expected, "round {round}");
    }
}
