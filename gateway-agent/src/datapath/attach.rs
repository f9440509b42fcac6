//! Attaching the programs with tcx links, pinned under `<bpffs>/links/` so that the
//! datapath outlives the agent, a restarted agent can swap programs in place (atomically,
//! with no moment without a program), and `teardown` can find them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::{
    SchedClassifier,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
};
use log::{info, warn};

use crate::{
    datapath::{Datapath, tcx::Direction},
    plan::Interface,
};

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// `<bpffs>/links/<interface>@<ifindex>-<direction>`: the index tells a re-created interface
/// of the same name from the one the link was made for. bpffs refuses dots in names
/// (reserved), so a dot in an interface name (a VLAN like `ens18.100`) is written as `%`.
pub fn link_pin(bpffs: &Path, iface: &Interface, direction: Direction) -> PathBuf {
    let name = iface.name.replace('.', "%");
    links_dir(bpffs).join(format!("{name}@{}-{direction}", iface.index))
}

/// The interface name and direction of a link pin's file name.
pub fn parse_link_pin(file_name: &str) -> Option<(String, Direction)> {
    let (rest, direction) = file_name.rsplit_once('-')?;
    let (name, _ifindex) = rest.rsplit_once('@')?;
    Some((name.replace('%', "."), Direction::from_name(direction)?))
}

/// Attaches ingress and egress programs to every interface, replacing the programs of
/// links pinned by a previous run in place, and detaches pinned links of interfaces that
/// are no longer selected.
pub fn attach_all(datapath: &mut Datapath, bpffs: &Path, interfaces: &[Interface]) -> Result<()> {
    fs::create_dir_all(links_dir(bpffs)).context("creating the links directory")?;
    let mut wanted = BTreeSet::new();
    for direction in Direction::ALL {
        let program = datapath.program(direction.program())?;
        for iface in interfaces {
            let pin = link_pin(bpffs, iface, direction);
            wanted.insert(pin.clone());
            if pin.exists() {
                match replace(program, &pin) {
                    Ok(()) => {
                        info!("{direction} program replaced in place on {}", iface.name);
                        continue;
                    }
                    Err(e) => {
                        warn!(
                            "pinned link {} is unusable ({e:#}); attaching afresh",
                            pin.display()
                        );
                        let _ = fs::remove_file(&pin);
                    }
                }
            }
            let id = program
                .attach(&iface.name, direction.attach_type())
                .with_context(|| format!("attaching {direction} program to {}", iface.name))?;
            let link: FdLink = program.take_link(id)?.try_into().context("tcx link")?;
            link.pin(&pin)
                .with_context(|| format!("pinning link {}", pin.display()))?;
            info!("{direction} program attached to {}", iface.name);
        }
    }
    for stale in pinned_links(bpffs)?
        .into_iter()
        .filter(|p| !wanted.contains(p))
    {
        detach(&stale)?;
        info!(
            "detached {} (interface no longer selected)",
            stale.display()
        );
    }
    Ok(())
}

/// Swaps the program behind a pinned link (BPF_LINK_UPDATE): atomic for the packets.
fn replace(program: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let link = FdLink::from(PinnedLink::from_pin(pin)?);
    program.attach_to_link(SchedClassifierLink::try_from(link)?)?;
    Ok(())
}

/// Every pinned link file.
pub fn pinned_links(bpffs: &Path) -> Result<Vec<PathBuf>> {
    let dir = links_dir(bpffs);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut links = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        links.push(entry?.path());
    }
    links.sort();
    Ok(links)
}

/// Unpins a link: the last reference goes and the kernel detaches the program.
pub(super) fn detach(pin: &Path) -> Result<()> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => drop(
            link.unpin()
                .with_context(|| format!("unpinning {}", pin.display()))?,
        ),
        Err(_) => fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?,
    }
    Ok(())
}

/// Detaches every pinned link under `bpffs`; returns a line per link removed.
pub fn detach_all(bpffs: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for pin in pinned_links(bpffs)? {
        detach(&pin)?;
        removed.push(format!(
            "link {}",
            pin.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    let dir = links_dir(bpffs);
    if dir.exists() {
        fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_have_no_dots_and_parse_back() {
        let vlan = Interface {
            name: "ens18.100".into(),
            index: 7,
            mac: [0; 6],
            addr: None,
        };
        let pin = link_pin(Path::new("/b"), &vlan, Direction::Egress);
        let file = pin.file_name().unwrap().to_str().unwrap();
        assert_eq!(file, "ens18%100@7-egress");
        assert_eq!(
            parse_link_pin(file),
            Some(("ens18.100".into(), Direction::Egress))
        );
        let dashed = Interface {
            name: "br-lan".into(),
            index: 3,
            mac: [0; 6],
            addr: None,
        };
        let pin = link_pin(Path::new("/b"), &dashed, Direction::Ingress);
        assert_eq!(
            parse_link_pin(pin.file_name().unwrap().to_str().unwrap()),
            Some(("br-lan".into(), Direction::Ingress))
        );
        assert_eq!(parse_link_pin("ens18@2-sideways"), None);
    }
}
