//! Label selectors (`serviceSelector`, `nodeSelector`), validated the way Kubernetes'
//! `LabelSelectorAsSelector` does. Matching lives in `model::selector`.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A validated label selector: every requirement must hold. No requirement selects
/// everything, which is what Cilium does for an absent or empty pool or policy selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label is present with one of the values (`matchLabels` entries are `In` with one
    /// value, exactly as in Kubernetes).
    In(BTreeSet<String>),
    /// The label is absent or has none of the values.
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// Why a selector is not valid: the field and the message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SelectorError {
    pub field: String,
    pub message: String,
}

/// Validates `raw` found at `field` (e.g. `spec.serviceSelector`): every invalid
/// requirement, or the selector. A selector with an invalid requirement selects nothing
/// reliably, so what it was meant for decides what happens (the caller's finding).
pub(crate) fn selector(
    raw: Option<&LabelSelector>,
    field: &str,
) -> Result<Selector, Vec<SelectorError>> {
    let Some(raw) = raw else {
        return Ok(Selector::default());
    };
    let mut errors = Vec::new();
    let mut error = |field: String, message: String| errors.push(SelectorError { field, message });
    let mut requirements = Vec::new();
    for (key, value) in raw.match_labels.iter().flatten() {
        if key.is_empty() {
            error(format!("{field}.matchLabels"), "empty label key".into());
            continue;
        }
        requirements.push(Requirement {
            key: key.clone(),
            operator: Operator::In(BTreeSet::from([value.clone()])),
        });
    }
    for (i, expression) in raw.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        if expression.key.is_empty() {
            error(format!("{at}.key"), "empty label key".into());
            continue;
        }
        let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
        let operator = match expression.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                error(
                    format!("{at}.values"),
                    format!("operator {} needs at least one value", expression.operator),
                );
                continue;
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                error(
                    format!("{at}.values"),
                    format!("operator {} takes no values", expression.operator),
                );
                continue;
            }
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                error(
                    format!("{at}.operator"),
                    format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                );
                continue;
            }
        };
        requirements.push(Requirement {
            key: expression.key.clone(),
            operator,
        });
    }
    if errors.is_empty() {
        Ok(Selector { requirements })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn validate(raw: Option<&LabelSelector>) -> (Selector, Vec<String>) {
        match selector(raw, "spec.serviceSelector") {
            Ok(selector) => (selector, Vec::new()),
            Err(errors) => (
                Selector::default(),
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect(),
            ),
        }
    }

    #[test]
    fn absent_and_empty_selectors_have_no_requirements() {
        assert_eq!(validate(None), (Selector::default(), vec![]));
        assert_eq!(
            validate(Some(&LabelSelector::default())),
            (Selector::default(), vec![])
        );
    }

    #[test]
    fn match_labels_and_expressions_become_requirements() {
        let raw = LabelSelector {
            match_labels: Some([("app".to_owned(), "envoy".to_owned())].into()),
            match_expressions: Some(vec![
                expression("tier", "In", &["edge", "core"]),
                expression("env", "NotIn", &["dev"]),
                expression("gpu", "Exists", &[]),
                expression("spot", "DoesNotExist", &[]),
            ]),
        };
        let (selector, errors) = validate(Some(&raw));
        assert_eq!(errors, Vec::<String>::new());
        let set = |values: &[&str]| values.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            selector.requirements,
            [
                Requirement {
                    key: "app".into(),
                    operator: Operator::In(set(&["envoy"]))
                },
                Requirement {
                    key: "tier".into(),
                    operator: Operator::In(set(&["core", "edge"]))
                },
                Requirement {
                    key: "env".into(),
                    operator: Operator::NotIn(set(&["dev"]))
                },
                Requirement {
                    key: "gpu".into(),
                    operator: Operator::Exists
                },
                Requirement {
                    key: "spot".into(),
                    operator: Operator::DoesNotExist
                },
            ]
        );
    }

    #[test]
    fn invalid_requirements_name_their_field() {
        let raw = LabelSelector {
            match_labels: Some([(String::new(), "x".to_owned())].into()),
            match_expressions: Some(vec![
                expression("a", "in", &["x"]),
                expression("b", "NotIn", &[]),
                expression("c", "DoesNotExist", &["x"]),
                expression("", "Exists", &[]),
            ]),
        };
        let (_, errors) = validate(Some(&raw));
        let prefix = "spec.serviceSelector";
        assert_eq!(
            errors,
            [
                format!("{prefix}.matchLabels: empty label key"),
                format!(
                    "{prefix}.matchExpressions[0].operator: unknown operator \"in\" (expected In, NotIn, Exists or DoesNotExist)"
                ),
                format!(
                    "{prefix}.matchExpressions[1].values: operator NotIn needs at least one value"
                ),
                format!(
                    "{prefix}.matchExpressions[2].values: operator DoesNotExist takes no values"
                ),
                format!("{prefix}.matchExpressions[3].key: empty label key"),
            ]
        );
    }
}
