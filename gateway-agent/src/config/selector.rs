//! Label selectors (`serviceSelector`, `nodeSelector`), validated the way Kubernetes'
//! `LabelSelectorAsSelector` does. Matching lives in `model::selector`.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::error::ObjectDiagnostics;

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

/// Validates `raw` found at `field` (e.g. `spec.serviceSelector`).
pub(crate) fn selector(
    raw: Option<&LabelSelector>,
    field: &str,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Selector {
    let Some(raw) = raw else {
        return Selector::default();
    };
    let mut requirements = Vec::new();
    for (key, value) in raw.match_labels.iter().flatten() {
        if key.is_empty() {
            diagnostics.error(format!("{field}.matchLabels"), "empty label key");
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
            diagnostics.error(format!("{at}.key"), "empty label key");
            continue;
        }
        let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
        let operator = match expression.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                diagnostics.error(
                    format!("{at}.values"),
                    format!("operator {} needs at least one value", expression.operator),
                );
                continue;
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                diagnostics.error(
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
                diagnostics.error(
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
    Selector { requirements }
}
