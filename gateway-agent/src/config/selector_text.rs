//! Label selectors written as `kubectl -l` takes them (`--cluster-members`):
//! `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`,
//! `!key`, joined by commas; every requirement must hold, as in Kubernetes' `labels.Parse`.

use std::collections::BTreeSet;
use std::str::FromStr;

use anyhow::{Result, bail, ensure};

use super::selector::{Operator, Requirement, Selector};

impl FromStr for Selector {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            ensure!(
                !part.is_empty(),
                "label selector {text:?}: an empty requirement"
            );
            requirements.push(
                requirement(part)
                    .map_err(|e| anyhow::anyhow!("label selector {text:?}: {part:?}: {e}"))?,
            );
        }
        Ok(Selector { requirements })
    }
}

/// The requirements, split at the commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                ensure!(depth > 0, "label selector {text:?}: unbalanced ')'");
                depth -= 1;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    ensure!(depth == 0, "label selector {text:?}: unbalanced '('");
    if !text.trim().is_empty() {
        parts.push(&text[start..]);
    }
    Ok(parts)
}

fn requirement(part: &str) -> Result<Requirement> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement {
            key: key_of(key)?,
            operator: Operator::DoesNotExist,
        });
    }
    for (symbol, negated) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((key, value)) = part.split_once(symbol) {
            let values = BTreeSet::from([value.trim().to_owned()]);
            return Ok(Requirement {
                key: key_of(key)?,
                operator: if negated {
                    Operator::NotIn(values)
                } else {
                    Operator::In(values)
                },
            });
        }
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = key_of(words.next().unwrap_or_default())?;
    let Some(rest) = words.next().map(str::trim) else {
        return Ok(Requirement {
            key,
            operator: Operator::Exists,
        });
    };
    let (negated, list) = if let Some(list) = rest.strip_prefix("notin") {
        (true, list)
    } else if let Some(list) = rest.strip_prefix("in") {
        (false, list)
    } else {
        bail!("expected =, ==, !=, in or notin after the key");
    };
    let Some(list) = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
    else {
        bail!("the values of in/notin go in parentheses: key in (a,b)");
    };
    let values: BTreeSet<String> = list
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    ensure!(!values.is_empty(), "in/notin needs at least one value");
    Ok(Requirement {
        key,
        operator: if negated {
            Operator::NotIn(values)
        } else {
            Operator::In(values)
        },
    })
}

fn key_of(text: &str) -> Result<String> {
    let key = text.trim();
    ensure!(!key.is_empty(), "empty label key");
    ensure!(
        !key.contains(char::is_whitespace) && !key.contains(['(', ')', '!', '=']),
        "{key:?} is not a label key"
    );
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn every_kubectl_form_parses() {
        let selector: Selector =
            "role=gw, zone==a,tier!=dev,gpu,!spot, rack in (r1, r2),env notin (test)"
                .parse()
                .unwrap_or_else(|e| panic!("{e:#}"));
        let expected = [
            ("role", Operator::In(set(&["gw"]))),
            ("zone", Operator::In(set(&["a"]))),
            ("tier", Operator::NotIn(set(&["dev"]))),
            ("gpu", Operator::Exists),
            ("spot", Operator::DoesNotExist),
            ("rack", Operator::In(set(&["r1", "r2"]))),
            ("env", Operator::NotIn(set(&["test"]))),
        ]
        .map(|(key, operator)| Requirement {
            key: key.into(),
            operator,
        });
        assert_eq!(selector.requirements, expected);
        // Nothing: everything.
        assert_eq!("".parse::<Selector>().unwrap(), Selector::default());
    }

    #[test]
    fn it_selects_nodes_by_their_labels() {
        let selector: Selector = "node-role.kubernetes.io/control-plane notin (true),!spot"
            .parse()
            .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector.matches(&labels(&[("kubernetes.io/hostname", "w1")])));
        assert!(!selector.matches(&labels(&[("spot", "")])));
        assert!(!selector.matches(&labels(&[(
            "node-role.kubernetes.io/control-plane",
            "true"
        )])));
    }

    #[test]
    fn malformed_selectors_say_what_is_wrong() {
        for (text, expected) in [
            ("a=b,,c", "an empty requirement"),
            ("a in (x", "unbalanced '('"),
            ("a in x", "parentheses"),
            ("a in ()", "at least one value"),
            ("a b", "expected =, ==, !=, in or notin"),
            ("=b", "empty label key"),
        ] {
            let error = format!("{:#}", text.parse::<Selector>().unwrap_err());
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
