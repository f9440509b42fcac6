//! Objects written twice in one file.

use std::collections::HashMap;

use super::dispatch::Origin;
use crate::config::{Diagnostics, ObjectRef};

/// An object as a document writes it.
pub(super) struct Written<'d> {
    pub object: &'d ObjectRef,
    pub origin: Origin,
}

/// The same kind/namespace/name twice: the API server would have kept only one of them,
/// and which one is a guess we refuse to make.
pub(super) fn duplicates<'d>(
    written: impl Iterator<Item = Written<'d>>,
    diagnostics: &mut Diagnostics,
) {
    let mut first_seen: HashMap<&ObjectRef, Origin> = HashMap::with_capacity(written.size_hint().0);
    for Written { object, origin } in written {
        match first_seen.get(object) {
            Some(first) => diagnostics.fatal(
                Some(object),
                "",
                format!("duplicate object: defined in {first} and again in {origin}"),
            ),
            None => {
                first_seen.insert(object, origin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;

    #[test]
    fn duplicate_objects_are_errors() {
        let errors = parse_errors(&reference_with(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: worker-1\n",
        ));
        assert_eq!(errors.len(), 1);
        assert_line(
            &errors,
            &[
                "objects.yaml: Node/worker-1: duplicate object: defined in the document at line",
                "and again in the document at line",
            ],
        );
    }
}
