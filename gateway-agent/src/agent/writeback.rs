//! The run loop's side of the write-back (cluster mode only): after every read that
//! serves, the status the objects should show goes to the writer task, which writes it if
//! this agent holds the Lease. A read the maps refuse changes nothing: what serves keeps
//! its status.

use super::Agent;
use crate::writeback;

impl Agent {
    /// Hands the writer what the status should say now: the model's answer for what serves.
    pub(super) fn publish_status(&self) {
        let (Some(writer), Some(planned)) = (&self.status, &self.planned) else {
            return;
        };
        writer.publish(writeback::desired(
            &planned.services,
            &planned.pools,
            &planned.findings,
        ));
    }
}
