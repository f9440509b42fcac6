//! The lab itself: wired as specified, and gone without a trace afterwards, also when the
//! test using it panics. Needs root (network namespaces, mounts).

use std::fs;
use std::panic;
use std::path::Path;

use anyhow::Result;
use gateway_tests::lab::{
    self, CLIENT, CLIENT_2, HTTP_PORT, HTTPS_PORT, Lab, LabSpec, NODE_HTTP_PORT, VIP_EXTERNAL,
};
use gateway_tests::netns::{self, Netns};

/// Asserts that nothing of lab `prefix` is left: no namespace, no bpffs mount, no run dir.
fn assert_gone(prefix: &str) {
    let left: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let run_dir = lab::run_dir(prefix);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(run_dir.to_str().unwrap()),
        "mounts left below {}:\n{mountinfo}",
        run_dir.display()
    );
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

#[test]
fn reference_lab_is_wired_as_specified_and_leaves_nothing_behind() -> Result<()> {
    let prefix = lab::unique_prefix("gwt");
    let lab = Lab::up(LabSpec::reference(&prefix).with_client_addr(CLIENT_2))?;
    assert!(lab::is_mount_point(&lab.run_dir().join("bpffs"))?);
    let client = lab.client();

    for node in lab.nodes() {
        client.ping(node.addr())?;
        // The node's own server sees the client's own address, from either client address.
        let url = format!("http://{}:{NODE_HTTP_PORT}/", node.addr());
        assert_eq!(
            client.curl(&url, None)?,
            format!("node={} client={CLIENT}\n", node.name())
        );
        assert_eq!(
            client.curl(&url, Some(CLIENT_2))?,
            format!("node={} client={CLIENT_2}\n", node.name())
        );
    }

    // ARP answers come from the deterministic uplink MACs; nobody answers for a VIP yet.
    let expected_macs = [
        ("cp1", "02:00:00:00:00:6e"),
        ("w1", "02:00:00:00:00:6f"),
        ("w2", "02:00:00:00:00:70"),
    ];
    for (name, mac) in expected_macs {
        let node = lab.node(name);
        assert_eq!(node.mac(), mac);
        assert_eq!(client.arping(node.addr())?, [mac], "ARP reply for {name}");
    }
    assert_eq!(client.arping(VIP_EXTERNAL)?, Vec::<String>::new());
    client.flush_neigh()?;

    for pod in lab.pods() {
        let node = lab.node(pod.node());
        for port in [HTTP_PORT, HTTPS_PORT] {
            let url = format!("http://{}:{port}/", pod.addr());
            let body = node
                .ns()
                .run(["curl", "-sS", "--max-time", "5", url.as_str()])?;
            let prefix = format!("backend={} client={}:", pod.name(), pod.gateway());
            let suffix = format!(" local={}:{port}\n", pod.addr());
            assert!(
                body.starts_with(&prefix) && body.ends_with(&suffix),
                "{url} from {} answered {body:?}",
                node.name()
            );
        }
        // Pods are reachable only through a node: the client has no route to them.
        let unreachable = client.ping(pod.addr()).unwrap_err();
        assert!(
            format!("{unreachable:#}").contains("Network is unreachable"),
            "{unreachable:#}"
        );
    }

    // Two nodes claiming one address (an ARP conflict) show up as two replies.
    let vip = VIP_EXTERNAL;
    for name in ["w1", "w2"] {
        let node = lab.node(name);
        node.ns()
            .ip(&["addr", "add", &format!("{vip}/32"), "dev", lab::NODE_UPLINK])?;
    }
    let mut claimants = client.arping(vip)?;
    claimants.sort();
    assert_eq!(claimants, [lab.node("w1").mac(), lab.node("w2").mac()]);

    drop(lab);
    assert_gone(&prefix);
    Ok(())
}

#[test]
fn a_panicking_test_still_tears_the_lab_down() {
    let prefix = lab::unique_prefix("gwt");
    let spec = LabSpec::reference(&prefix);
    let outcome = panic::catch_unwind(|| {
        let lab = Lab::up(spec).expect("lab up");
        assert!(lab::is_mount_point(&lab.run_dir().join("bpffs")).unwrap());
        let _agent_like = lab
            .spawn(lab.node("w1").ns(), "sleeper", ["sleep", "600"])
            .expect("spawn");
        panic!("the test body failed");
    });
    assert!(outcome.is_err());
    assert_gone(&prefix);
}

#[test]
fn a_failing_lab_up_removes_what_it_built() {
    let prefix = lab::unique_prefix("gwt");
    let mut spec = LabSpec::reference(&prefix);
    // A valid Kubernetes pod name, but too long for a namespace name: `up` fails at the
    // last pod, after the segment, client, nodes, other pods and their servers exist.
    let long_name = format!("envoy-{}", "x".repeat(250));
    for service in &mut spec.services {
        service.backends.retain(|b| b != "envoy-w2a");
    }
    spec.pod_mut("envoy-w2a").name = long_name;
    let err = Lab::up(spec).err().expect("lab up must fail");
    assert!(format!("{err:#}").contains("Invalid netns name"), "{err:#}");
    assert_gone(&prefix);
}

#[test]
fn teardown_by_prefix_works_from_scratch_and_twice() -> Result<()> {
    let prefix = lab::unique_prefix("gwt");
    Lab::up(LabSpec::reference(&prefix))?.persist();
    assert!(Path::new(&lab::run_dir(&prefix)).exists());
    Lab::down_by_prefix(&prefix, None)?;
    assert_gone(&prefix);
    Lab::down_by_prefix(&prefix, None)?;
    Ok(())
}

#[test]
fn a_namespace_guard_kills_its_processes_and_deletes_itself() -> Result<()> {
    let ns = Netns::new("gwt")?;
    let name = ns.name().to_owned();
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let mut sleeper = ns.spawn(["sleep", "600"], "sleeper", &log)?;
    assert_eq!(ns.pids()?, [sleeper.pid() as i32]);
    ns.sysctl(&[("net.ipv4.ip_forward", "1")])?;
    assert_eq!(ns.run(["sysctl", "-n", "net.ipv4.ip_forward"])?.trim(), "1");
    let err = ns.run(["ip", "link", "show", "nonexistent0"]).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");

    // The namespace goes first: its processes must die with it even while their guard lives.
    drop(ns);
    assert!(!netns::list()?.contains(&name));
    assert!(
        sleeper.exit_status()?.is_some(),
        "sleep survived its namespace"
    );
    drop(sleeper);
    fs::remove_file(&log)?;
    Ok(())
}
