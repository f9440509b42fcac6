//! What refuses a whole file ([`ConfigError`]), and the collector of a pass's errors and
//! findings ([`Diagnostics`]). Every error and finding names the file, the object (when
//! there is one) and the field, so `check` output points at what to fix.
//!
//! The rule of what refuses the file: only what leaves the agent unable to tell which
//! object is meant or what it says. A YAML syntax error; a document that is not a mapping,
//! or has no `apiVersion`, `kind` or (for a kind the agent reads) `metadata.name`; an object
//! that does not deserialize into its API shape (`port: eighty`); the same object written
//! twice; a file that cannot be read. Everything else (values of the right type that the
//! agent cannot serve, or that the API server would reject) is a [`Finding`] on its object,
//! and the rest of the file serves.

use std::fmt;

use super::{Finding, ObjectRef, Reason, Severity};

/// One problem that makes the file unusable: the whole file is refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub file: String,
    pub object: Option<ObjectRef>,
    /// JSON-path-like location inside the object, e.g. `spec.ports[1].protocol`; empty when
    /// the error concerns the whole file or object.
    pub field: String,
    pub message: String,
}

/// Every error found in a file, in the order found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// `FILE: Kind/ns/name: field: message`, leaving out the parts that are absent.
pub(super) fn write_finding(
    f: &mut fmt::Formatter<'_>,
    file: &str,
    object: Option<&ObjectRef>,
    field: &str,
    message: &str,
) -> fmt::Result {
    write!(f, "{file}: ")?;
    if let Some(object) = object {
        write!(f, "{object}: ")?;
    }
    if !field.is_empty() {
        write!(f, "{field}: ")?;
    }
    f.write_str(message)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_finding(
            f,
            &self.file,
            self.object.as_ref(),
            &self.field,
            &self.message,
        )
    }
}

impl std::error::Error for ConfigError {}

/// One error per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects the errors and findings of one pass over a source, so that all of them are
/// reported at once rather than only the first.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    file: String,
    errors: Vec<ConfigError>,
    findings: Vec<Finding>,
}

impl Diagnostics {
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            errors: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// An error that refuses the whole file (see the module's rule).
    pub(crate) fn fatal(
        &mut self,
        object: Option<&ObjectRef>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            object: object.cloned(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// A finding about `object` (or about the source, when `None`).
    pub(crate) fn find(
        &mut self,
        severity: Severity,
        reason: Reason,
        object: Option<&ObjectRef>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            file: self.file.clone(),
            object: object.cloned(),
            field: field.into(),
            message: message.into(),
            reason,
            severity,
        });
    }

    /// Adds errors and findings made in another pass (a document parsed on its own).
    pub(crate) fn absorb(
        &mut self,
        errors: impl IntoIterator<Item = ConfigError>,
        findings: impl IntoIterator<Item = Finding>,
    ) {
        self.errors.extend(errors);
        self.findings.extend(findings);
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors, when there are any (see [`Self::has_errors`]).
    pub(crate) fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }

    /// The errors and findings as they are.
    pub(crate) fn into_parts(self) -> (Vec<ConfigError>, Vec<Finding>) {
        (self.errors, self.findings)
    }

    /// The findings, sorted and deduplicated so that they do not depend on the order the
    /// objects came in; the caller knows there were no errors.
    pub(crate) fn into_findings(self) -> Vec<Finding> {
        debug_assert!(self.errors.is_empty(), "{:?}", self.errors);
        let mut findings = self.findings;
        findings.sort();
        findings.dedup();
        findings
    }

    /// Errors and findings about one object.
    pub(crate) fn object<'a>(&'a mut self, object: &'a ObjectRef) -> ObjectDiagnostics<'a> {
        ObjectDiagnostics {
            diagnostics: self,
            object,
        }
    }
}

/// The errors and findings about one object, as its kind's conversion makes them.
pub(crate) struct ObjectDiagnostics<'a> {
    diagnostics: &'a mut Diagnostics,
    object: &'a ObjectRef,
}

impl ObjectDiagnostics<'_> {
    /// The object does not deserialize into its shape: the file is refused.
    pub(crate) fn fatal(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.fatal(Some(self.object), field, message);
    }

    pub(crate) fn info(
        &mut self,
        reason: Reason,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        (self.diagnostics).find(Severity::Info, reason, Some(self.object), field, message);
    }

    pub(crate) fn warn(
        &mut self,
        reason: Reason,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        (self.diagnostics).find(Severity::Warning, reason, Some(self.object), field, message);
    }

    /// The object, or what `field` asks for, is not served.
    pub(crate) fn refuse(
        &mut self,
        reason: Reason,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        (self.diagnostics).find(Severity::Error, reason, Some(self.object), field, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "Service".into(),
            namespace: "gateway".into(),
            name: name.into(),
        }
    }

    #[test]
    fn display_names_file_object_field_and_message() {
        let error = ConfigError {
            file: "objects.yaml".into(),
            object: Some(service("web")),
            field: "spec.ports[1].protocol".into(),
            message: "unsupported protocol \"SCTP\"".into(),
        };
        assert_eq!(
            error.to_string(),
            "objects.yaml: Service/gateway/web: spec.ports[1].protocol: unsupported protocol \"SCTP\""
        );
    }

    #[test]
    fn display_leaves_out_absent_object_and_field() {
        let error = ConfigError {
            file: "objects.yaml".into(),
            object: None,
            field: String::new(),
            message: "YAML syntax error".into(),
        };
        assert_eq!(error.to_string(), "objects.yaml: YAML syntax error");
    }

    #[test]
    fn errors_display_one_per_line() {
        let mut diagnostics = Diagnostics::new("f.yaml");
        diagnostics.fatal(Some(&service("a")), "spec", "first");
        diagnostics.fatal(None, "", "second");
        let errors = diagnostics.into_errors();
        assert_eq!(
            errors.to_string(),
            "f.yaml: Service/gateway/a: spec: first\nf.yaml: second"
        );
    }

    #[test]
    fn findings_are_sorted_and_deduplicated() {
        let mut diagnostics = Diagnostics::new("f.yaml");
        let (a, b) = (service("a"), service("b"));
        diagnostics
            .object(&b)
            .warn(Reason::InvalidPort, "spec.ports[0].port", "bad");
        diagnostics
            .object(&a)
            .info(Reason::IPv6NotServed, "spec", "later");
        diagnostics
            .object(&b)
            .warn(Reason::InvalidPort, "spec.ports[0].port", "bad");
        diagnostics.find(Severity::Info, Reason::KindNotRead, None, "", "skipped");
        let findings: Vec<String> = (diagnostics.into_findings().iter())
            .map(|f| format!("{} {} {f}", f.severity, f.reason))
            .collect();
        assert_eq!(
            findings,
            [
                "info KindNotRead f.yaml: skipped",
                "info IPv6NotServed f.yaml: Service/gateway/a: spec: later",
                "warning InvalidPort f.yaml: Service/gateway/b: spec.ports[0].port: bad",
            ]
        );
    }
}
