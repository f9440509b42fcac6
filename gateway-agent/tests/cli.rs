//! The command line as an operator runs it: `check` exit codes and messages, and the
//! read-only views refusing clearly when nothing is pinned. No kernel state is touched.

use std::path::Path;
use std::process::{Command, Output};

const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/reference.yaml");

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_reference_objects_and_shows_the_allocation() {
    let out = agent(&["check", "--config", REFERENCE, "--node-name", "worker-1"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for expected in [
        "gateway/cilium-gateway-gateway-internal  192.168.10.49 (requested)  first-pool  Local",
        "gateway/cilium-gateway-gateway-external  192.168.10.50 (requested)  first-pool  Local",
        "node worker-1 serves:",
        "192.168.10.49:443/TCP",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let json = agent(&["check", "--config", REFERENCE, "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["allocations"].as_array().unwrap().len(), 2);
}

#[test]
fn check_rejects_a_bad_file_naming_file_object_and_field() {
    let dir = std::env::temp_dir().join(format!("gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    let reference = std::fs::read_to_string(REFERENCE).unwrap();
    // Two services on one VIP, and an unsupported protocol.
    let bad = reference
        .replace("192.168.10.50", "192.168.10.49")
        .replacen("protocol: TCP", "protocol: SCTP", 1);
    std::fs::write(&file, bad).unwrap();
    let out = agent(&["check", "--config", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("bad.yaml: Service/gateway/")
                && l.contains("spec.ports[0].protocol")
                && l.contains("SCTP")),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for an invalid file"
    );
}

#[test]
fn check_names_a_missing_file() {
    let out = agent(&["check", "--config", "/nonexistent/objects.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/objects.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn views_explain_when_no_datapath_is_pinned() {
    let dir = std::env::temp_dir().join("gateway-cli-nothing-pinned");
    assert!(!Path::new(&dir).join("gw_services").exists());
    for args in [
        &["status"][..],
        &["lb", "list"],
        &["ct", "list"],
        &["affinity", "list"],
        &["l2", "list"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--bpffs", dir.to_str().unwrap()]);
        let out = agent(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("no gateway datapath is pinned under"),
            "{args:?}: {stderr}"
        );
    }
}
