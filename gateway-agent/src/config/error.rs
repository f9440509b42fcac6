//! Errors and warnings about the objects of one source. Every finding names the file, the
//! object (when there is one) and the field, so `check` output points at what to fix.

use std::fmt;

use super::ObjectRef;

/// One problem that makes the file unusable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub file: String,
    pub object: Option<ObjectRef>,
    /// JSON-path-like location inside the object, e.g. `spec.ports[1].protocol`; empty when
    /// the error concerns the whole file or object.
    pub field: String,
    pub message: String,
}

/// Something the agent works around (skips, ignores or defaults) but the operator should know.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ConfigWarning {
    pub file: String,
    pub object: Option<ObjectRef>,
    pub field: String,
    pub message: String,
}

/// Every error found in a file, in the order found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// `FILE: Kind/ns/name: field: message`, leaving out the parts that are absent.
fn write_finding(
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

impl fmt::Display for ConfigWarning {
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

/// Collects the findings of one pass over a file, so that all of them are reported at once
/// rather than only the first.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    file: String,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl Diagnostics {
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn error(
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

    pub(crate) fn warn(
        &mut self,
        object: Option<&ObjectRef>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.warnings.push(ConfigWarning {
            file: self.file.clone(),
            object: object.cloned(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Adds findings made in another pass (a document parsed on its own).
    pub(crate) fn absorb(
        &mut self,
        errors: impl IntoIterator<Item = ConfigError>,
        warnings: impl IntoIterator<Item = ConfigWarning>,
    ) {
        self.errors.extend(errors);
        self.warnings.extend(warnings);
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors, when there are any (see [`Self::has_errors`]).
    pub(crate) fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }

    /// The findings as they are, errors and warnings.
    pub(crate) fn into_parts(self) -> (Vec<ConfigError>, Vec<ConfigWarning>) {
        (self.errors, self.warnings)
    }

    /// Findings about one object; `ObjectDiagnostics::finish` tells whether it was valid.
    pub(crate) fn object<'a>(&'a mut self, object: &'a ObjectRef) -> ObjectDiagnostics<'a> {
        let errors_before = self.errors.len();
        ObjectDiagnostics {
            diagnostics: self,
            object,
            errors_before,
        }
    }

    /// The warnings sorted and deduplicated, so that they do not depend on document order.
    pub(crate) fn into_result(self) -> Result<Vec<ConfigWarning>, ConfigErrors> {
        if self.errors.is_empty() {
            let mut warnings = self.warnings;
            warnings.sort();
            warnings.dedup();
            Ok(warnings)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// The findings about one object, with a way to know whether any of them was an error.
pub(crate) struct ObjectDiagnostics<'a> {
    diagnostics: &'a mut Diagnostics,
    object: &'a ObjectRef,
    errors_before: usize,
}

impl ObjectDiagnostics<'_> {
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.error(Some(self.object), field, message);
    }

    pub(crate) fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.warn(Some(self.object), field, message);
    }

    /// `value` if no error was recorded for this object since it was opened.
    pub(crate) fn finish<T>(&self, value: T) -> Option<T> {
        (self.diagnostics.errors.len() == self.errors_before).then_some(value)
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
        diagnostics.error(Some(&service("a")), "spec", "first");
        diagnostics.error(None, "", "second");
        let errors = diagnostics.into_result().unwrap_err();
        assert_eq!(
            errors.to_string(),
            "f.yaml: Service/gateway/a: spec: first\nf.yaml: second"
        );
    }

    #[test]
    fn object_finish_is_none_after_an_error_and_warnings_do_not_count() {
        let mut diagnostics = Diagnostics::new("f.yaml");
        let a = service("a");
        let mut object = diagnostics.object(&a);
        object.warn("spec", "just so you know");
        assert_eq!(object.finish(1), Some(1));
        let mut object = diagnostics.object(&a);
        object.error("spec", "broken");
        assert_eq!(object.finish(2), None);
    }
}
