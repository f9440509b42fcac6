//! Service and backend ids: a survivor keeps its id, a newcomer takes the lowest free one.

use super::PlanError;

/// Lowest ids in `1..max` not in `used`, handed out in order. `used` comes in increasing
/// order and is read only as far as the ids handed out: a map's keys serve without being
/// collected first (a reload that adds one backend to 80,000 reads the ids up to the first
/// free one instead of copying all of them).
pub(super) struct IdAllocator<I: Iterator<Item = u32>> {
    used: std::iter::Peekable<I>,
    next: u32,
    max: u32,
    what: &'static str,
}

impl<I: Iterator<Item = u32>> IdAllocator<I> {
    pub(super) fn new(used: impl IntoIterator<IntoIter = I>, max: u32, what: &'static str) -> Self {
        Self {
            used: used.into_iter().peekable(),
            next: 1,
            max,
            what,
        }
    }

    pub(super) fn take(&mut self, needed: usize) -> Result<u32, PlanError> {
        while let Some(id) = self.used.next_if(|&id| id <= self.next) {
            if id == self.next {
                self.next += 1;
            }
        }
        if self.next >= self.max {
            return Err(PlanError::Capacity {
                what: self.what,
                needed,
                max: self.max - 1,
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}
