//! Test fixtures: the reference's objects, and helpers to write variations of them.

use super::{Config, Finding, Reason, Severity};
use crate::source::file::parse;

/// The reference's pool, L2 policy, two gateway services, three nodes and envoy slices.
pub(crate) const REFERENCE: &str = include_str!("../../testdata/reference.yaml");

/// The file name findings are reported against in tests.
pub(crate) const FILE: &str = "objects.yaml";

pub(crate) fn parse_ok(text: &str) -> Config {
    parse(FILE, text).unwrap_or_else(|errors| panic!("unexpected errors:\n{errors}"))
}

/// The errors of `text`, one line each.
pub(crate) fn parse_errors(text: &str) -> Vec<String> {
    match parse(FILE, text) {
        Ok(_) => panic!("expected errors, got none"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// The source's findings about `text`, one line each.
pub(crate) fn parse_findings(text: &str) -> Vec<String> {
    parse_ok(text)
        .findings
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The source's findings about `text` as (severity, reason, line).
pub(crate) fn parse_reasons(text: &str) -> Vec<(Severity, Reason, String)> {
    parse_ok(text)
        .findings
        .iter()
        .map(|f| (f.severity, f.reason, f.to_string()))
        .collect()
}

/// The source's findings about `text` as (severity, reason).
pub(crate) fn parse_severities(text: &str) -> Vec<(Severity, Reason)> {
    parse_reasons(text)
        .into_iter()
        .map(|(s, r, _)| (s, r))
        .collect()
}

/// Findings one line each.
pub(crate) fn lines(findings: &[Finding]) -> Vec<String> {
    findings.iter().map(ToString::to_string).collect()
}

pub(crate) fn reference() -> Config {
    parse_ok(REFERENCE)
}

/// The reference with more documents appended.
pub(crate) fn reference_with(extra: &str) -> String {
    format!("{REFERENCE}\n---\n{extra}")
}

/// `text` with the first `from` replaced; fails if `from` is not there, so a fixture edit
/// cannot silently stop applying.
pub(crate) fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture has no {from:?}");
    text.replacen(from, to, 1)
}

/// A LoadBalancer service with one TCP port 80, plus `extra` lines under `spec:`
/// (indented by 2).
pub(crate) fn lb_service(namespace: &str, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  type: LoadBalancer\n  ports:\n    - port: 80\n{extra}"
    )
}

/// A `CiliumLoadBalancerIPPool` with the given `spec:` lines (indented by 2).
pub(crate) fn pool_doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: {name}\n\
         spec:\n{spec}"
    )
}

/// A LoadBalancer service with TCP ports 80 and 443 (unless told otherwise), built up for
/// IPAM and election tests.
#[derive(Clone)]
pub(crate) struct ServiceDoc {
    namespace: String,
    name: String,
    metadata: Vec<String>,
    annotations: Vec<String>,
    labels: Vec<String>,
    spec: Vec<String>,
    ports: Option<String>,
    status_ips: Vec<String>,
}

pub(crate) fn service_doc(namespace: &str, name: &str) -> ServiceDoc {
    ServiceDoc {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        metadata: Vec::new(),
        annotations: Vec::new(),
        labels: Vec::new(),
        spec: Vec::new(),
        ports: None,
        status_ips: Vec::new(),
    }
}

impl ServiceDoc {
    pub(crate) fn created(mut self, timestamp: &str) -> Self {
        self.metadata
            .push(format!("  creationTimestamp: \"{timestamp}\""));
        self
    }

    /// Requests `ip` (a comma-separated list) through the LB-IPAM annotation.
    pub(crate) fn requests(self, ip: &str) -> Self {
        self.annotate("lbipam.cilium.io/ips", ip)
    }

    /// Shares its VIPs under `key`.
    pub(crate) fn sharing(self, key: &str) -> Self {
        self.annotate("lbipam.cilium.io/sharing-key", key)
    }

    pub(crate) fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.push(format!("    {key}: \"{value}\""));
        self
    }

    /// Carries `ip` in its status, as a previous allocation (once per call, in order).
    pub(crate) fn holds(mut self, ip: &str) -> Self {
        self.status_ips.push(ip.to_owned());
        self
    }

    /// `spec:` lines (indented by 2).
    pub(crate) fn spec(mut self, lines: &str) -> Self {
        self.spec.push(lines.trim_end().to_owned());
        self
    }

    /// Its ports instead of 80 and 443: (port, protocol) pairs.
    pub(crate) fn ports(mut self, ports: &[(u16, &str)]) -> Self {
        let lines: Vec<String> = (ports.iter())
            .map(|(port, protocol)| format!("    - port: {port}\n      protocol: {protocol}"))
            .collect();
        self.ports = Some(format!("  ports:\n{}", lines.join("\n")));
        self
    }

    pub(crate) fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push(format!("    {key}: \"{value}\""));
        self
    }

    pub(crate) fn local(mut self) -> Self {
        self.spec.push("  externalTrafficPolicy: Local".to_owned());
        self
    }

    pub(crate) fn yaml(&self) -> String {
        let mut lines = vec![
            "apiVersion: v1".to_owned(),
            "kind: Service".to_owned(),
            "metadata:".to_owned(),
            format!("  name: {}", self.name),
            format!("  namespace: {}", self.namespace),
        ];
        lines.extend(self.metadata.iter().cloned());
        if !self.annotations.is_empty() {
            lines.push("  annotations:".to_owned());
            lines.extend(self.annotations.iter().cloned());
        }
        if !self.labels.is_empty() {
            lines.push("  labels:".to_owned());
            lines.extend(self.labels.iter().cloned());
        }
        lines.push("spec:".to_owned());
        lines.push("  type: LoadBalancer".to_owned());
        lines.extend(self.spec.iter().cloned());
        lines.push(self.ports.clone().unwrap_or_else(|| {
            "  ports:\n    - name: http\n      port: 80\n    - name: https\n      port: 443"
                .to_owned()
        }));
        if !self.status_ips.is_empty() {
            lines.push("status:\n  loadBalancer:\n    ingress:".to_owned());
            lines.extend(self.status_ips.iter().map(|ip| format!("      - ip: {ip}")));
        }
        lines.join("\n") + "\n"
    }
}

/// Asserts that one of `lines` contains every one of `parts`.
#[track_caller]
pub(crate) fn assert_line(lines: &[String], parts: &[&str]) {
    assert!(
        lines
            .iter()
            .any(|line| parts.iter().all(|part| line.contains(part))),
        "no line contains all of {parts:?} in:\n{}",
        lines.join("\n")
    );
}

/// A small deterministic generator: a randomized test must fail the same way every run.
pub(crate) struct XorShift(pub u64);

impl XorShift {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    pub(crate) fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}
