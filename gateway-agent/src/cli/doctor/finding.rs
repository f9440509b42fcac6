//! A finding: what the doctor looked at, how bad it is, what it means and how to fix it.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Error,
}

impl Severity {
    /// The doctor's exit status when this is the worst finding: 0 fine, 1 warning, 2 error.
    pub fn exit_status(self) -> u8 {
        match self {
            Severity::Ok | Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub check: &'static str,
    pub subject: String,
    pub finding: String,
    pub fix: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        check: &'static str,
        subject: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            check,
            subject: subject.into(),
            finding: finding.into(),
            fix: fix.into(),
        }
    }
}
