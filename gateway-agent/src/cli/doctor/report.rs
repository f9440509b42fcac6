//! The findings for people (a table, worst first) or for scripts (JSON, in the order found).

use anyhow::Result;
use serde::Serialize;

use super::finding::{Finding, Severity};
use crate::cli::table::Table;

/// The worst severity found; `Ok` when nothing was.
pub fn worst(findings: &[Finding]) -> Severity {
    findings
        .iter()
        .map(|x| x.severity)
        .max()
        .unwrap_or(Severity::Ok)
}

pub fn json(findings: &[Finding]) -> Result<String> {
    #[derive(Serialize)]
    struct Report<'a> {
        worst: Severity,
        findings: &'a [Finding],
    }
    Ok(serde_json::to_string_pretty(&Report {
        worst: worst(findings),
        findings,
    })?)
}

pub fn table(findings: &[Finding]) -> String {
    let mut t = Table::new(vec!["SEVERITY", "CHECK", "SUBJECT", "FINDING", "FIX"]);
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for x in sorted {
        t.row(vec![
            format!("{:?}", x.severity).to_uppercase(),
            x.check.into(),
            x.subject.clone(),
            x.finding.clone(),
            x.fix.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings() -> Vec<Finding> {
        vec![
            Finding::new(Severity::Ok, "agent", "pid 7", "running", ""),
            Finding::new(
                Severity::Warning,
                "conntrack",
                "95 of 100 entries",
                "no flow evicted",
                "raise --ct-max before it fills",
            ),
            Finding::new(Severity::Info, "drops", "drop_no_backend", "3: none", ""),
            Finding::new(
                Severity::Warning,
                "affinity",
                "1 of 1 entries",
                "ClientIP affinity entries",
                "raise --affinity-max",
            ),
        ]
    }

    #[test]
    fn the_table_puts_the_worst_first_and_keeps_the_order_found_among_equals() {
        assert_eq!(
            table(&findings()),
            "SEVERITY  CHECK      SUBJECT            FINDING                    FIX\n\
             WARNING   conntrack  95 of 100 entries  no flow evicted            raise --ct-max before it fills\n\
             WARNING   affinity   1 of 1 entries     ClientIP affinity entries  raise --affinity-max\n\
             INFO      drops      drop_no_backend    3: none                    \n\
             OK        agent      pid 7              running                    \n"
        );
    }

    #[test]
    fn json_gives_the_worst_and_every_finding_in_the_order_found() {
        let report: serde_json::Value = serde_json::from_str(&json(&findings()).unwrap()).unwrap();
        assert_eq!(report["worst"], "warning");
        let checks: Vec<&str> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["check"].as_str().unwrap())
            .collect();
        assert_eq!(checks, ["agent", "conntrack", "drops", "affinity"]);
        assert_eq!(
            report["findings"][1],
            serde_json::json!({
                "severity": "warning",
                "check": "conntrack",
                "subject": "95 of 100 entries",
                "finding": "no flow evicted",
                "fix": "raise --ct-max before it fills",
            })
        );
    }

    #[test]
    fn the_exit_status_is_the_worst_finding() {
        assert_eq!(worst(&[]), Severity::Ok);
        assert_eq!(worst(&findings()).exit_status(), 1);
        let statuses = [
            Severity::Ok,
            Severity::Info,
            Severity::Warning,
            Severity::Error,
        ]
        .map(Severity::exit_status);
        assert_eq!(statuses, [0, 0, 1, 2]);
    }
}
