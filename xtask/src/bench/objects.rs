//! What the benchmarks load: many services as Kubernetes-shaped objects for the agent, and
//! the same services as kube-proxy's iptables mode would program them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The VIP of filler service `i`: 10.96.0.0/16, from 10.96.0.1 on.
pub fn filler_vip(i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(10, 96, (n >> 8) as u8, n as u8)
}

/// Backend `k` of filler service `i`: addresses in 10.128.0.0/10 that nothing answers (the
/// filler services exist to fill the maps and the chains, not to be called).
fn filler_backend(i: usize, k: usize, per_service: usize) -> Ipv4Addr {
    let n = (i * per_service + k) as u32 + 1;
    Ipv4Addr::new(10, 128 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// A pool for the filler VIPs, to append to the lab's objects.
pub fn filler_pool() -> String {
    "---
apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata:
  name: bench-pool
spec:
  blocks:
  - cidr: 10.96.0.0/16
"
    .to_owned()
}

/// `count` LoadBalancer services (Local, port 80 -> 8080), each with `per_service` ready
/// endpoints on `node`, as YAML documents to append to the lab's objects.
pub fn filler_services(count: usize, per_service: usize, node: &str) -> String {
    let mut yaml = String::with_capacity(count * (600 + per_service * 90));
    for i in 0..count {
        let _ = write!(
            yaml,
            "---
apiVersion: v1
kind: Service
metadata:
  name: bench-{i}
  namespace: bench
  annotations:
    lbipam.cilium.io/ips: {vip}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bench-{i}-1
  namespace: bench
  labels:
    kubernetes.io/service-name: bench-{i}
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
",
            vip = filler_vip(i)
        );
        for k in 0..per_service {
            let _ = write!(
                yaml,
                "- addresses: [{}]\n  nodeName: {node}\n  conditions: {{ready: true}}\n",
                filler_backend(i, k, per_service)
            );
        }
    }
    yaml
}

/// `yaml` (from [`filler_services`]) with one more ready endpoint on `node`, `addr`, at the
/// head of the first EndpointSlice's list: the edit adds lines, so every document after it
/// starts further down the file.
pub fn with_added_endpoint(yaml: &str, addr: Ipv4Addr, node: &str) -> Option<String> {
    let at = yaml.find("\nendpoints:\n")? + "\nendpoints:\n".len();
    let mut changed = yaml.to_owned();
    changed.insert_str(
        at,
        &format!("- addresses: [{addr}]\n  nodeName: {node}\n  conditions: {{ready: true}}\n"),
    );
    Some(changed)
}

/// One service for [`kube_proxy_rules`]: where it listens and its endpoints.
pub struct ChainService {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// How kube-proxy treats traffic from outside the cluster to a load balancer's address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum External {
    /// externalTrafficPolicy Local: DNAT only, the client's address kept.
    Local,
    /// externalTrafficPolicy Cluster: marked in KUBE-MARK-MASQ and masqueraded to the node's
    /// address in KUBE-POSTROUTING (`--random-fully`, as kube-proxy does), so replies from an
    /// endpoint on another node come back through this one.
    Cluster,
}

/// The nat table kube-proxy's iptables mode builds for `services`, as iptables-restore input:
/// a KUBE-SERVICES chain matching every service, a KUBE-SVC chain per service choosing an
/// endpoint with `-m statistic --mode random`, and a KUBE-SEP chain per endpoint with the
/// DNAT; with [`External::Cluster`], a KUBE-EXT chain per service marking the connection
/// for masquerading first. Like kube-proxy's, the first packet of a connection walks
/// KUBE-SERVICES in order.
pub fn kube_proxy_rules(services: &[ChainService], external: External) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n");
    if external == External::Cluster {
        chains.push_str(":KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
        rules.push_str(
            "-A POSTROUTING -j KUBE-POSTROUTING\n\
             -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
             -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
             -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
        );
    }
    for (i, svc) in services.iter().enumerate() {
        let _ = writeln!(chains, ":KUBE-SVC-{i} - [0:0]");
        let target = match external {
            External::Local => format!("KUBE-SVC-{i}"),
            External::Cluster => {
                let _ = writeln!(chains, ":KUBE-EXT-{i} - [0:0]");
                let _ = writeln!(rules, "-A KUBE-EXT-{i} -j KUBE-MARK-MASQ");
                let _ = writeln!(rules, "-A KUBE-EXT-{i} -j KUBE-SVC-{i}");
                format!("KUBE-EXT-{i}")
            }
        };
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport {} -j {target}",
            svc.vip, svc.port
        );
        let n = svc.endpoints.len();
        for (k, (addr, port)) in svc.endpoints.iter().enumerate() {
            let _ = writeln!(chains, ":KUBE-SEP-{i}-{k} - [0:0]");
            // kube-proxy: endpoint k of n is taken with probability 1/(n-k), the last always.
            if k + 1 < n {
                let _ = writeln!(
                    rules,
                    "-A KUBE-SVC-{i} -m statistic --mode random --probability {:.11} -j KUBE-SEP-{i}-{k}",
                    1.0 / (n - k) as f64
                );
            } else {
                let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{k}");
            }
            let _ = writeln!(
                rules,
                "-A KUBE-SEP-{i}-{k} -p tcp -m tcp -j DNAT --to-destination {addr}:{port}"
            );
        }
    }
    chains + &rules + "COMMIT\n"
}

/// Filler services in kube-proxy shape (one endpoint each).
pub fn filler_chain_services(count: usize) -> Vec<ChainService> {
    (0..count)
        .map(|i| ChainService {
            vip: filler_vip(i),
            port: 80,
            endpoints: vec![(filler_backend(i, 0, 1), 8080)],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use gateway_tests::lab::{ENVOY_W1A, ENVOY_W1B, HTTP_PORT, VIP_INTERNAL};

    use super::*;

    #[test]
    fn kube_proxy_chains_choose_endpoints_like_kube_proxy() {
        let services = [ChainService {
            vip: VIP_INTERNAL,
            port: 80,
            endpoints: vec![(ENVOY_W1A, HTTP_PORT), (ENVOY_W1B, HTTP_PORT)],
        }];
        let rules = kube_proxy_rules(&services, External::Local);
        assert!(
            !rules.contains("MASQUERADE"),
            "Local keeps the client's address"
        );
        assert!(rules.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"));
        assert!(rules.contains(&format!(
            "-A KUBE-SERVICES -d {VIP_INTERNAL}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-0\n"
        )));
        assert!(rules.contains(
            "-A KUBE-SVC-0 -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-0-0\n"
        ));
        assert!(rules.contains("-A KUBE-SVC-0 -j KUBE-SEP-0-1\n"));
        assert!(rules.contains(&format!(
            "-A KUBE-SEP-0-1 -p tcp -m tcp -j DNAT --to-destination {ENVOY_W1B}:{HTTP_PORT}\n"
        )));
        assert!(rules.ends_with("COMMIT\n"));

        // Cluster: the connection is marked on its way to the service's chain, and
        // masqueraded on its way out.
        let rules = kube_proxy_rules(&services, External::Cluster);
        assert!(rules.contains(&format!(
            "-A KUBE-SERVICES -d {VIP_INTERNAL}/32 -p tcp -m tcp --dport 80 -j KUBE-EXT-0\n"
        )));
        assert!(rules.contains("-A KUBE-EXT-0 -j KUBE-MARK-MASQ\n-A KUBE-EXT-0 -j KUBE-SVC-0\n"));
        assert!(rules.contains("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n"));
        assert!(rules.contains(":KUBE-EXT-0 - [0:0]\n"));
        assert!(rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn filler_addresses_are_distinct() {
        let vips: std::collections::BTreeSet<_> = (0..10_000).map(filler_vip).collect();
        assert_eq!(vips.len(), 10_000);
        let backends: std::collections::BTreeSet<_> = (0..10_000)
            .flat_map(|i| (0..8).map(move |k| filler_backend(i, k, 8)))
            .collect();
        assert_eq!(backends.len(), 80_000);
        let yaml = filler_services(2, 3, "w1");
        assert_eq!(yaml.matches("kind: Service\n").count(), 2);
        assert_eq!(yaml.matches("nodeName: w1").count(), 6);
        let changed = with_added_endpoint(&yaml, Ipv4Addr::new(10, 127, 0, 1), "w1").unwrap();
        assert_eq!(changed.lines().count(), yaml.lines().count() + 3);
        assert_eq!(changed.matches("nodeName: w1").count(), 7);
        let first_slice = &changed[changed.find("kind: EndpointSlice").unwrap()..];
        let first_slice = &first_slice[..first_slice.find("\n---").unwrap()];
        assert!(first_slice.contains("- addresses: [10.127.0.1]\n  nodeName: w1\n"));
    }
}
