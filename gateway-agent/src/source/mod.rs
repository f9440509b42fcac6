//! Sources: where the objects come from. A source reads objects in the API's shapes, turns
//! each into a validated object with the kind's conversion in `crate::config`, and hands
//! the store (`crate::store`) batches of events keyed by `ObjectRef`: what was added or
//! changed, what is gone, or every object of a kind at once (a relist).
//!
//! `file`: one YAML file (the demo, the tests, nodes without API access), read whole on
//! every change, checked before anything is applied.

pub mod file;
