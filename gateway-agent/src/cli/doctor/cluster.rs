//! The cluster (failover between nodes), as this node's agent sees it: fewer members alive
//! than the objects list, members never heard from, no key, datagrams refused, and, in place
//! of the score's election, who answers for each VIP: a VIP that no live member can
//! announce is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::finding::{Finding, Severity};
use crate::cli::cluster::{MemberView, MembersView};
use crate::config::ObjectRef;

/// Every cluster finding; `vips`: every VIP with its service, `eligible`: each announced
/// VIP's eligible nodes, from the objects.
pub fn check_cluster(
    view: &MembersView,
    vips: &[(Ipv4Addr, ObjectRef)],
    eligible: &BTreeMap<Ipv4Addr, Vec<String>>,
) -> Vec<Finding> {
    let mut findings = vec![membership(view)];
    findings.extend(view.members.iter().skip(1).filter_map(never_heard));
    findings.extend(key(view));
    findings.extend(refusals(view));
    let alive: BTreeSet<&str> = view
        .members
        .iter()
        .filter(|m| m.state == "alive" || m.holding)
        .map(|m| m.name.as_str())
        .collect();
    for (vip, service) in vips {
        if let Some(nodes) = eligible.get(vip) {
            findings.push(answered(*vip, service, &view.members, nodes, &alive));
        }
    }
    findings
}

/// Members alive against members listed: fewer means failover may not find a node, and a
/// member without an agent counts against the quorum.
fn membership(view: &MembersView) -> Finding {
    let subject = format!("{} members", view.known);
    if view.alive >= view.known {
        return Finding::new(
            Severity::Ok,
            "cluster",
            subject,
            format!("all alive, quorum {}", view.quorum),
            "",
        );
    }
    let severity = if view.alive < view.quorum {
        Severity::Error
    } else {
        Severity::Warning
    };
    Finding::new(
        severity,
        "cluster",
        subject,
        format!(
            "{} of {} alive (quorum {}){}",
            view.alive,
            view.known,
            view.quorum,
            if view.alive < view.quorum {
                ": without a quorum this node makes no new claim and answers for nothing"
            } else {
                ": the others' VIPs move here only while a quorum stays alive"
            }
        ),
        format!(
            "run the agent on every member, with the same --cluster-key-file, and let UDP {} \
             through between the nodes' InternalIPs; or narrow --cluster-members to the nodes \
             that run it",
            view.port
        ),
    )
}

/// A member this node never heard from: no agent there, another key, or the port blocked.
fn never_heard(member: &MemberView) -> Option<Finding> {
    (member.heard_ms_ago.is_none()).then(|| {
        Finding::new(
            Severity::Warning,
            "cluster",
            member.name.clone(),
            format!(
                "never heard from (its agent at {}): it counts against the quorum and is never \
                 given a VIP",
                member.address.as_deref().unwrap_or("?")
            ),
            "start the agent there with the same --cluster-key-file, check the port between the \
             nodes, or leave the node out with --cluster-members",
        )
    })
}

/// Datagrams without the shared key: anyone on the segment could claim a VIP.
fn key(view: &MembersView) -> Option<Finding> {
    (view.cluster && !view.keyed).then(|| {
        Finding::new(
            Severity::Warning,
            "cluster",
            "--cluster-key-file",
            "no key: the cluster's datagrams are not authenticated, anyone on the segment can \
             claim this cluster's VIPs",
            "give every agent the same key file (e.g. `head -c 32 /dev/urandom | base64`)",
        )
    })
}

/// Datagrams refused since the agent started, by reason.
fn refusals(view: &MembersView) -> Option<Finding> {
    let r = &view.refused;
    (r.total > 0 || view.strangers > 0).then(|| {
        Finding::new(
            Severity::Warning,
            "cluster",
            "datagrams refused",
            format!(
                "{} refused (bad tag {}, untagged {}, malformed {}, not for us {}, replayed {}) \
                 and {} from nodes not in the objects",
                r.total,
                r.bad_tag,
                r.untagged,
                r.malformed,
                r.not_for_us,
                r.replayed,
                view.strangers
            ),
            "bad tag or untagged: a node with another key, or none; not for us: a node with \
             another idea of the Nodes' names; replayed: datagrams captured and sent again",
        )
    })
}

/// Who answers for a VIP in this node's view (live members only: a dead one's last claims
/// are still listed); none, and no live eligible member, is an error.
fn answered(
    vip: Ipv4Addr,
    service: &ObjectRef,
    members: &[MemberView],
    eligible: &[String],
    alive: &BTreeSet<&str>,
) -> Finding {
    let subject = format!("{vip} ({service})");
    let answering: Vec<&str> = members
        .iter()
        .filter(|m| alive.contains(m.name.as_str()) && m.answering.contains(&vip))
        .map(|m| m.name.as_str())
        .collect();
    match answering.as_slice() {
        [one] => Finding::new(
            Severity::Ok,
            "announcement",
            subject,
            format!("answered by {one}"),
            "",
        ),
        [] if eligible.iter().any(|n| alive.contains(n.as_str())) => Finding::new(
            Severity::Warning,
            "announcement",
            subject,
            "no member answers for it yet, though a live member may: a takeover under way, or \
             no quorum",
            "look again in a second; if it stays, see the cluster findings above",
        ),
        [] => Finding::new(
            Severity::Error,
            "announcement",
            subject,
            if eligible.is_empty() {
                "no node is eligible (Ready, selected by the L2 policy, with a ready endpoint)"
                    .to_owned()
            } else {
                format!(
                    "no live member can announce it: eligible are {}, none alive",
                    eligible.join(", ")
                )
            },
            "start the agent on an eligible node, or make a live node eligible",
        ),
        many => Finding::new(
            Severity::Error,
            "announcement",
            subject,
            format!(
                "{} answer for it in this node's view (it lasts at most a lease while the \
                 claims settle)",
                many.join(" and ")
            ),
            "look again in a second; if it stays, compare `gateway-agent members` on those nodes",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::cluster::Refused;

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);

    fn member(name: &str, state: &'static str, answering: &[Ipv4Addr]) -> MemberView {
        MemberView {
            name: name.into(),
            address: Some(format!("192.168.10.1{}:7951", name.len())),
            state,
            draining: false,
            holding: false,
            incarnation: 1,
            heard_ms_ago: (state != "unknown").then_some(10),
            vips: answering.to_vec(),
            answering: answering.to_vec(),
        }
    }

    fn view(members: Vec<MemberView>) -> MembersView {
        MembersView {
            cluster: true,
            agent_running: true,
            updated_ms_ago: Some(5),
            known: members.len() as u32,
            alive: members.iter().filter(|m| m.state == "alive").count() as u32,
            quorum: (members.len() / 2 + 1) as u32,
            takeover_on_silence: true,
            keyed: true,
            draining: false,
            port: 7951,
            refused: Refused {
                malformed: 0,
                untagged: 0,
                bad_tag: 0,
                not_for_us: 0,
                replayed: 0,
                total: 0,
            },
            strangers: 0,
            sent: 100,
            received: 100,
            send_errors: 0,
            members,
        }
    }

    fn allocation() -> (Ipv4Addr, ObjectRef) {
        let service = ObjectRef {
            kind: "Service".into(),
            namespace: "gateway".into(),
            name: "internal".into(),
        };
        (VIP, service)
    }

    fn severities(findings: &[Finding]) -> Vec<(Severity, &str)> {
        findings
            .iter()
            .map(|f| (f.severity, f.subject.as_str()))
            .collect()
    }

    #[test]
    fn a_healthy_cluster_is_all_ok() {
        let v = view(vec![
            member("w1", "alive", &[]),
            member("w2", "alive", &[VIP]),
            member("w3", "alive", &[]),
        ]);
        let eligible = BTreeMap::from([(VIP, vec!["w1".into(), "w2".into()])]);
        let findings = check_cluster(&v, &[allocation()], &eligible);
        assert_eq!(
            severities(&findings),
            [
                (Severity::Ok, "3 members"),
                (Severity::Ok, "192.168.10.49 (Service/gateway/internal)")
            ]
        );
        assert_eq!(findings[1].finding, "answered by w2");
    }

    #[test]
    fn silent_members_missing_keys_and_refusals_are_flagged() {
        let mut v = view(vec![
            member("w1", "alive", &[VIP]),
            member("w2", "unknown", &[]),
            member("w3", "down", &[]),
        ]);
        v.keyed = false;
        v.refused.bad_tag = 7;
        v.refused.total = 7;
        let findings = check_cluster(&v, &[], &BTreeMap::new());
        assert_eq!(
            severities(&findings),
            [
                (Severity::Error, "3 members"),
                (Severity::Warning, "w2"),
                (Severity::Warning, "--cluster-key-file"),
                (Severity::Warning, "datagrams refused"),
            ]
        );
        assert!(
            findings[0]
                .finding
                .starts_with("1 of 3 alive (quorum 2): without a quorum")
        );
        assert!(findings[3].finding.contains("bad tag 7"));
    }

    #[test]
    fn a_vip_no_live_member_can_announce_is_an_error() {
        let v = view(vec![
            member("w1", "alive", &[]),
            member("w2", "down", &[]),
            member("w3", "alive", &[]),
        ]);
        let only_w2 = BTreeMap::from([(VIP, vec!["w2".into()])]);
        let f = &check_cluster(&v, &[allocation()], &only_w2)[1];
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(
            f.finding,
            "no live member can announce it: eligible are w2, none alive"
        );
        // A live eligible member that does not answer yet: a takeover under way.
        let w3_too = BTreeMap::from([(VIP, vec!["w2".into(), "w3".into()])]);
        assert_eq!(
            check_cluster(&v, &[allocation()], &w3_too)[1].severity,
            Severity::Warning
        );
        // Two answering in this view.
        let both = view(vec![
            member("w1", "alive", &[VIP]),
            member("w3", "alive", &[VIP]),
        ]);
        let f = &check_cluster(&both, &[allocation()], &w3_too)[1];
        assert_eq!(f.severity, Severity::Error);
        assert!(f.finding.starts_with("w1 and w3 answer for it"));
        // A dead member's last claims do not count.
        let moved = view(vec![
            member("w1", "down", &[VIP]),
            member("w3", "alive", &[VIP]),
        ]);
        let findings = check_cluster(&moved, &[allocation()], &w3_too);
        let f = findings
            .iter()
            .find(|f| f.check == "announcement")
            .expect("an announcement finding");
        assert_eq!(
            (f.severity, f.finding.as_str()),
            (Severity::Ok, "answered by w3")
        );
    }
}
