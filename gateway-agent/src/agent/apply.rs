//! Bringing the maps to a desired state, make-before-break, through the plan's writes; and
//! the one-line summary of a state that the log shows.

use anyhow::Result;
use log::{info, warn};

use super::Agent;
use super::cluster::Announced;
use crate::model::DesiredState;
use crate::plan::{self, Interface, Op};

/// Announcements named in a log line; more are counted (a line naming 10,000 is unreadable).
const NAMED_ANNOUNCEMENTS: usize = 8;

pub(super) fn summary(desired: &DesiredState) -> String {
    let backends: usize = desired.frontends.iter().map(|f| f.backends.len()).sum();
    let announcements = &desired.announcements;
    let mut announced: Vec<String> = announcements
        .iter()
        .take(NAMED_ANNOUNCEMENTS)
        .map(|a| format!("{} on {}", a.vip, a.interface))
        .collect();
    if announcements.len() > NAMED_ANNOUNCEMENTS {
        announced.push(format!(
            "and {} more",
            announcements.len() - NAMED_ANNOUNCEMENTS
        ));
    }
    format!(
        "{} frontends, {} backend slots; announcing {}",
        desired.frontends.len(),
        backends,
        if announced.is_empty() {
            "nothing".into()
        } else {
            announced.join(", ")
        }
    )
}

/// What [`Agent::apply`] did: the number of writes, the announcements that started, and
/// the state planned before, handed back so that freeing it (10,000 services' worth) can
/// wait until the change is reported.
pub(super) struct Applied {
    pub writes: usize,
    pub announced: Vec<Announced>,
    pub previous: Option<DesiredState>,
}

impl Agent {
    /// Brings the maps to `desired`, make-before-break.
    pub(super) fn apply(
        &mut self,
        desired: DesiredState,
        interfaces: &[Interface],
    ) -> Result<Applied> {
        let limits = &self.options.capacity;
        let (mut writes, mut announced, mut gained, mut lost) = (0, Vec::new(), 0, 0);
        let maps = &mut self.datapath.maps;
        let held = &self.state;
        let mut write = |op| {
            maps.apply(&op)?;
            writes += 1;
            match op {
                Op::PutL2(key, mac) => {
                    gained += usize::from(!held.l2.contains_key(&key));
                    announced.push(Announced { key, mac });
                }
                Op::DeleteL2(_) => lost += 1,
                // Flows are cut: say whose.
                Op::EndMemberships(ended) => info!("{}", plan::ended_label(held, &ended)),
                _ => {}
            }
            anyhow::Ok(())
        };
        let result = match &self.planned {
            Some(previous) => {
                let change = plan::change(&self.state, previous, &desired, interfaces, limits)?;
                let result = plan::diff_each(&change.before, &change.after, &mut write);
                if result.is_ok() {
                    self.state.apply(change);
                }
                result
            }
            None => {
                let target = plan::target(&desired, interfaces, &self.state, limits)?;
                let result = plan::diff_each(&self.state, &target, &mut write);
                if result.is_ok() {
                    self.state = target;
                }
                result
            }
        };
        self.metrics.announcements(gained, lost);
        match result {
            Ok(()) => Ok(Applied {
                writes,
                announced,
                previous: self.planned.replace(desired),
            }),
            // Some writes made it: what the maps hold now is the truth, and the flows follow
            // it (the reload's last steps did not run).
            Err(e) => {
                self.planned = None;
                self.state = self.datapath.maps.read_state()?;
                // The reload's own error is the one to report.
                if let Err(settling) = self.settle_flows("a reload that failed") {
                    warn!("settling the flows after a reload that failed: {settling:#}");
                }
                Err(e)
            }
        }
    }

    /// Ends what the flows still hold against the maps' state (see
    /// [`crate::datapath::Maps::settle_flows`]): after a reload that failed half-way, and
    /// when adopting the maps of an agent that may have been killed in the middle of one.
    pub(super) fn settle_flows(&mut self, after: &str) -> Result<()> {
        let rules = self.state.flow_rules();
        let settled = self.datapath.maps.settle_flows(&rules)?;
        if !settled.is_empty() {
            warn!(
                "after {after}: ended {} tracked flows on backends that had left their \
                 service, denied {} from clients outside their service's source ranges, \
                 removed {} affinity entries to backends that take no new flows",
                settled.flows_ended, settled.flows_denied, settled.affinity_ended
            );
        }
        Ok(())
    }
}
