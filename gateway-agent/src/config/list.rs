//! A sorted list of objects of one kind, each behind its own `Arc`.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// The objects of one kind in the order [`super::Config`] documents for it. Only the store
/// changes it, one object at a time by binary search, so an object that does not change
/// keeps its `Arc` (and its place) through every batch.
#[derive(Clone, PartialEq)]
pub struct SortedList<T>(Vec<Arc<T>>);

impl<T> SortedList<T> {
    /// `objects`, which are sorted by `order` already.
    pub(crate) fn from_sorted(objects: Vec<Arc<T>>, order: fn(&T, &T) -> Ordering) -> Self {
        debug_assert!(objects.is_sorted_by(|a, b| order(a, b) != Ordering::Greater));
        Self(objects)
    }

    /// Where the object that `probe` finds equal is, or where it would go: `probe` says how
    /// each object compares with the one looked for.
    pub(crate) fn search(&self, mut probe: impl FnMut(&T) -> Ordering) -> Result<usize, usize> {
        self.0.binary_search_by(|held| probe(held))
    }

    /// Puts `object` at `at` in place of the one there, which is returned.
    pub(crate) fn replace(&mut self, at: usize, object: Arc<T>) -> Arc<T> {
        std::mem::replace(&mut self.0[at], object)
    }

    /// Puts `object` at `at`, where [`Self::search`] said it goes.
    pub(crate) fn insert(&mut self, at: usize, object: Arc<T>) {
        self.0.insert(at, object);
    }

    pub(crate) fn remove(&mut self, at: usize) -> Arc<T> {
        self.0.remove(at)
    }

    pub(crate) fn into_vec(self) -> Vec<Arc<T>> {
        self.0
    }
}

impl<T> Default for SortedList<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> std::ops::Deref for SortedList<T> {
    type Target = [Arc<T>];

    fn deref(&self) -> &[Arc<T>] {
        &self.0
    }
}

impl<'o, T> IntoIterator for &'o SortedList<T> {
    type Item = &'o Arc<T>;
    type IntoIter = std::slice::Iter<'o, Arc<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for SortedList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
