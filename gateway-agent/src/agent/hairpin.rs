//! Hairpin in the run loop: `gw_hairpin` follows the VIPs this node answers ARP for (alone,
//! what the model elects; with a cluster, what the cluster gives it), and the hairpin
//! programs go on `--cgroup` at start. A cgroup that cannot take them turns hairpin off with
//! a warning (`status` and `doctor` say why): the TC datapath serves as before.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use gateway_common::{AGENT_F_HAIRPIN, AgentState, HairpinVip, L2Key, VipKey, write_text};
use log::{info, warn};

use crate::datapath::{Datapath, Maps, hairpin, interfaces};
use crate::plan;

pub struct Hairpin {
    /// `--cgroup`; `None` with `--no-hairpin`.
    cgroup: Option<PathBuf>,
    /// What `gw_hairpin` holds.
    held: BTreeMap<VipKey, HairpinVip>,
    /// The announcements `held` was computed from: the loop syncs after every cluster
    /// event, and asks netlink for addresses only when they changed.
    synced: Option<BTreeSet<L2Key>>,
}

impl Hairpin {
    pub fn new(cgroup: Option<PathBuf>, maps: &Maps) -> Result<Self> {
        Ok(Self {
            cgroup,
            held: maps.read_hairpin()?,
            synced: None,
        })
    }

    /// Brings `gw_hairpin` to the VIPs of `l2` (as `gw_l2` holds them); `refresh` re-reads
    /// the interfaces' addresses even when the announcements did not change (a reload).
    pub fn sync<V>(
        &mut self,
        maps: &mut Maps,
        l2: &BTreeMap<L2Key, V>,
        refresh: bool,
    ) -> Result<()> {
        let announced: BTreeSet<L2Key> = l2.keys().copied().collect();
        if !refresh && self.synced.as_ref() == Some(&announced) {
            return Ok(());
        }
        let wanted = plan::hairpin_entries(l2, &interfaces::ipv4_by_index()?);
        for (vip, entry) in &wanted {
            if self.held.get(vip) != Some(entry) {
                maps.put_hairpin(*vip, *entry)?;
                self.held.insert(*vip, *entry);
            }
        }
        let gone: Vec<VipKey> = self
            .held
            .keys()
            .filter(|vip| !wanted.contains_key(vip))
            .copied()
            .collect();
        for vip in gone {
            maps.remove_hairpin(&vip)?;
            self.held.remove(&vip);
        }
        self.synced = Some(announced);
        Ok(())
    }

    /// Attaches the programs to the cgroup (replacing a previous run's), or detaches what a
    /// previous run left when hairpin is off or the cgroup refuses them; records which in
    /// `record`.
    pub fn attach(
        &self,
        datapath: &mut Datapath,
        bpffs: &Path,
        record: &mut AgentState,
    ) -> Result<()> {
        let off = |why: String, record: &mut AgentState| -> Result<()> {
            for line in hairpin::detach_all(bpffs)? {
                info!("hairpin off: detached {line}");
            }
            record.flags &= !AGENT_F_HAIRPIN;
            write_text(&mut record.hairpin, &why);
            Ok(())
        };
        let Some(cgroup) = &self.cgroup else {
            return off("off (--no-hairpin)".into(), record);
        };
        match hairpin::attach_all(datapath, bpffs, cgroup) {
            Ok(()) => {
                info!(
                    "hairpin: connections from cgroup {} to the VIPs this node announces go \
                     straight to a backend",
                    cgroup.display()
                );
                record.flags |= AGENT_F_HAIRPIN;
                write_text(&mut record.hairpin, &cgroup.display().to_string());
                Ok(())
            }
            Err(e) => {
                warn!(
                    "hairpin off: this node's own connections to the VIPs it announces are not \
                     served: {e:#}"
                );
                off(format!("off: {e:#}"), record)
            }
        }
    }
}
