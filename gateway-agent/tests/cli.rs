//! The command line as an operator runs it: `check` exit codes and messages (0 valid, 1
//! served in part, 2 refused), and the read-only views refusing clearly when nothing is
//! pinned. No kernel state is touched.

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
    assert_eq!(json.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["verdict"], "valid");
    assert_eq!(report["services"].as_array().unwrap().len(), 2);
    assert_eq!(report["pools"][0]["available"], 28);
    assert_eq!(report["findings"], serde_json::json!([]));
}

/// A file of its own under the temporary directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gateway-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("objects.yaml");
        std::fs::write(&file, text).unwrap();
        Self(file)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn check_reports_each_objects_trouble_and_serves_the_rest() {
    let reference = std::fs::read_to_string(REFERENCE).unwrap();
    // Two services on one VIP, and an unsupported protocol: the older keeps the VIP.
    let bad = reference
        .replace("192.168.10.50", "192.168.10.49")
        .replacen("protocol: TCP", "protocol: SCTP", 1);
    let file = TempFile::new("findings", &bad);
    let out = agent(&["check", "--config", file.path()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("warning: ")
            && l.contains("objects.yaml: Service/gateway/")
            && l.contains("spec.ports[0].protocol")
            && l.contains("SCTP")
            && l.ends_with("(UnsupportedProtocol)")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("error: ")
            && l.contains("requested VIP 192.168.10.49 is held by Service/gateway/")
            && l.ends_with("(AlreadyAllocated)")),
        "{stderr}"
    );
    assert!(
        stdout.starts_with(&format!(
            "{}: served in part: 1 errors, 1 warnings",
            file.path()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("192.168.10.49 (requested)"), "{stdout}");
    assert!(
        stdout.contains("AlreadyAllocated: requested VIP 192.168.10.49"),
        "{stdout}"
    );
    let json = agent(&["check", "--config", file.path(), "--output", "json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["verdict"], "served-in-part");
    let reasons: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.contains(&"AlreadyAllocated") && reasons.contains(&"UnsupportedProtocol"));
}

#[test]
fn check_refuses_a_file_that_does_not_parse_with_2() {
    let reference = std::fs::read_to_string(REFERENCE).unwrap();
    let file = TempFile::new(
        "refused",
        &reference.replacen("port: 80", "port: eighty", 1),
    );
    let out = agent(&["check", "--config", file.path()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("objects.yaml: Service/gateway/")
            && stderr.contains("spec.ports[0].port: invalid type: string \"eighty\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("refused: nothing of it is served"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a refused file"
    );
}

#[test]
fn check_refuses_what_does_not_fit_the_maps_as_run_would() {
    let out = agent(&["check", "--config", REFERENCE, "--services-max", "4"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("4 services needed but the datapath holds at most 3"),
        "{stderr}"
    );
}

#[test]
fn check_leaves_other_load_balancer_classes_alone_unless_told() {
    let reference = std::fs::read_to_string(REFERENCE).unwrap();
    let classed = reference.replacen(
        "  type: LoadBalancer\n",
        "  type: LoadBalancer\n  loadBalancerClass: example.com/other\n",
        1,
    );
    let file = TempFile::new("class", &classed);
    let out = agent(&["check", "--config", file.path(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["services"].as_array().unwrap().len(), 1);
    assert_eq!(
        report["findings"][0]["reason"],
        "LoadBalancerClassNotServed"
    );
    assert_eq!(report["findings"][0]["severity"], "info");
    let out = agent(&[
        "check",
        "--config",
        file.path(),
        "--load-balancer-class",
        "example.com/other",
        "--output",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["services"].as_array().unwrap().len(), 2);
}

#[test]
fn check_names_a_missing_file() {
    let out = agent(&["check", "--config", "/nonexistent/objects.yaml"]);
    assert_eq!(out.status.code(), Some(2));
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
