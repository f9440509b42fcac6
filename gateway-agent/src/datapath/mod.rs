//! The thin layer that touches the kernel: load the embedded object with its maps pinned
//! under `--bpffs` (adopting maps a previous run left there, checked against the map table),
//! attach the programs with tcx links that are pinned too (and the hairpin programs to a
//! cgroup, see `hairpin`), and remove all of it on `teardown`.

pub mod attach;
pub mod bpffs;
pub mod clock;
pub mod garp;
pub mod hairpin;
pub mod interfaces;
pub mod kern_ctx;
pub mod maps;
pub mod object;
pub mod tcx;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, EbpfLoader, maps::MapInfo, programs::SchedClassifier};
use aya_log::EbpfLogger;
use gateway_common::{
    Clock, kern_ctx as kern_ctx_names,
    maps::{MAPS, map_names},
    program_names,
};

pub use clock::monotonic_ns;
pub use kern_ctx::KernCtx;
pub use maps::Maps;

use crate::capacity::{Capacity, map_sizes};

pub struct LoadOptions<'a> {
    /// Map sizes.
    pub capacity: Capacity,
    /// Pin every map under this directory, adopting the maps already pinned there. `None`
    /// creates private maps (datapath tests).
    pub pin_dir: Option<&'a Path>,
    /// Level of the datapath's own log events. Below `Debug` the object without any
    /// logging code is loaded, so logging costs the hot path nothing.
    pub log_level: log::LevelFilter,
    /// Where the datapath learns `ip_summed` from (and then updates L4 checksums itself);
    /// `None`: the kernel's checksum helpers for every rewrite.
    pub kern_ctx: Option<KernCtx>,
}

/// Reading `skb->ip_summed` as the running kernel allows, or `None` (with the reason
/// logged once) where it cannot: the datapath then uses the kernel's checksum helpers.
pub fn running_kern_ctx() -> Option<KernCtx> {
    static FOUND: std::sync::OnceLock<Option<KernCtx>> = std::sync::OnceLock::new();
    *FOUND.get_or_init(
        || match KernCtx::from_btf_file(Path::new(kern_ctx::VMLINUX_BTF)) {
            Ok(found) => Some(found),
            Err(e) => {
                log::warn!(
                    "L4 checksums through the kernel's helpers (about 50 ns more per rewrite): {e:#}"
                );
                None
            }
        },
    )
}

/// The loaded object: programs (loaded, not yet attached) and typed maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub maps: Maps,
    /// Owns aya-log's ring buffer reader; must live as long as the programs.
    pub logger: Option<EbpfLogger<&'static dyn log::Log>>,
    /// The datapath's clock on this machine, for `gw_config`.
    pub clock: Clock,
    /// How the loaded datapath reads `ip_summed` (`None`: it does not, and leaves L4
    /// checksums to the kernel's helpers).
    pub kern_ctx: Option<KernCtx>,
    /// The maps this load made rather than adopted from a pin (all of them without pins):
    /// with pins, the ones the previous version did not have, or had another layout of.
    pub fresh: Vec<&'static str>,
}

impl Datapath {
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let fresh = match options.pin_dir {
            Some(dir) => check_pinned_layouts(dir, &options.capacity)?,
            None => MAPS.iter().map(|m| m.name).collect(),
        };
        let (mut ebpf, kern_ctx) = match load_object(options, options.kern_ctx) {
            Ok(ebpf) => (ebpf, options.kern_ctx),
            // A kernel whose verifier does not take the kfunc call or the read of ip_summed
            // still gets a datapath: the same one with the kernel's checksum helpers.
            Err(e) if options.kern_ctx.is_some() => {
                log::warn!(
                    "L4 checksums through the kernel's helpers: the datapath that updates them \
                     in place was refused: {e:#}"
                );
                (load_object(options, None)?, None)
            }
            Err(e) => return Err(e),
        };
        let with_log = options.log_level >= log::LevelFilter::Debug;
        let logger = if with_log {
            Some(EbpfLogger::init(&mut ebpf).context("setting up datapath logging")?)
        } else {
            None
        };
        let clock = clock::measure(&mut ebpf)?;
        let maps = Maps::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            logger,
            clock,
            kern_ctx,
            fresh,
        })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        program(&mut self.ebpf, name)
    }

    /// A hairpin program (see `program_names::HAIRPIN`), loaded.
    pub fn hairpin_program(&mut self, name: &str) -> Result<&mut aya::programs::CgroupSockAddr> {
        hairpin::program(&mut self.ebpf, name)
    }
}

/// The object with its maps (pinned as `options` says) and the datapath programs loaded,
/// reading `ip_summed` through `kern_ctx` where given.
fn load_object(options: &LoadOptions, kern_ctx: Option<KernCtx>) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (name, size) in map_sizes(&options.capacity) {
        loader.map_max_entries(name, size);
    }
    let pins: Vec<(&str, PathBuf)> = match options.pin_dir {
        Some(dir) => MAPS.iter().map(|m| (m.name, dir.join(m.name))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let level = options.log_level as u8;
    loader.override_global(aya_log::LEVEL, &level, false);
    let object = if options.log_level >= log::LevelFilter::Debug {
        object::OBJECT_WITH_LOG
    } else {
        object::OBJECT
    };
    let patched;
    let object = match &kern_ctx {
        Some(k) => {
            loader.override_global(kern_ctx_names::IP_SUMMED_AT, &k.ip_summed_at, true);
            patched = kern_ctx::patch_object(object, k.cast_btf_id)?;
            &patched[..]
        }
        None => object,
    };
    let mut ebpf = loader.load(object).context("loading the eBPF object")?;
    for name in [program_names::INGRESS, program_names::EGRESS] {
        verified(name, || {
            program(&mut ebpf, name)?.load().map_err(Into::into)
        })?;
    }
    for name in program_names::HAIRPIN {
        verified(name, || {
            hairpin::program(&mut ebpf, name)?
                .load()
                .map_err(Into::into)
        })?;
    }
    Ok(ebpf)
}

/// Loads program `name` with `load`, again when the verifier gave up because a signal came
/// (EAGAIN: it stops at a pending signal, a reload's SIGHUP for one), as libbpf does, up to
/// five attempts.
fn verified(name: &str, mut load: impl FnMut() -> Result<()>) -> Result<()> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(e) if attempt < ATTEMPTS && interrupted(&e) => attempt += 1,
            done => return done.with_context(|| format!("loading program {name} (verifier)")),
        }
    }
}

fn interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<aya::programs::ProgramError>(),
        Some(aya::programs::ProgramError::LoadError { io_error, .. })
            if io_error.raw_os_error() == Some(nix::errno::Errno::EAGAIN as i32)
    )
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

/// Maps the agent writes whole at every start (settings and its own record): one pinned
/// by a version with another layout is replaced rather than refused. Every other map holds
/// state (services, flows, affinity, counters) and is never reinterpreted.
const REWRITTEN_AT_START: [&str; 2] = [map_names::CONFIG, map_names::AGENT];

/// A pinned map from an agent with another layout must be refused, never reinterpreted.
/// Returns the maps the load will make: those without a pin, and those replaced.
fn check_pinned_layouts(dir: &Path, capacity: &Capacity) -> Result<Vec<&'static str>> {
    let mut replace: Vec<PathBuf> = Vec::new();
    let mut fresh = Vec::new();
    for map in MAPS {
        let (name, key, value) = (map.name, map.key_size, map.value_size);
        let path = dir.join(name);
        if !path.exists() {
            fresh.push(name);
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("inspecting pinned map {}", path.display()))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            if REWRITTEN_AT_START.contains(&name) {
                log::info!(
                    "pinned map {} has key/value sizes {}/{} (another version): replacing it \
                     with one of {key}/{value}",
                    path.display(),
                    info.key_size(),
                    info.value_size()
                );
                replace.push(path);
                fresh.push(name);
                continue;
            }
            bail!(
                "pinned map {} has key/value sizes {}/{} but this agent uses {key}/{value}: it \
                 was left by an incompatible version; run `gateway-agent teardown --bpffs {}` \
                 (this drops tracked connections) and start again",
                path.display(),
                info.key_size(),
                info.value_size(),
                dir.display()
            );
        }
        let wanted = map.size.entries(capacity);
        // A version with other counters (this one added `hairpin`): they restart from zero
        // rather than the agent refusing to start.
        if name == map_names::COUNTERS && info.max_entries() != wanted {
            log::info!(
                "pinned map {} holds {} counters, this agent counts {wanted}: replacing it \
                 (the datapath's counters restart from zero)",
                path.display(),
                info.max_entries()
            );
            replace.push(path);
            fresh.push(name);
            continue;
        }
        if info.max_entries() != wanted {
            bail!(
                "pinned map {} holds {} entries but the --*-max flags ask for {wanted}: keep the \
                 previous sizes, or resize with `gateway-agent teardown --bpffs {}` (this drops \
                 tracked connections) and start again",
                path.display(),
                info.max_entries(),
                dir.display()
            );
        }
    }
    // Only once every map that holds state was found usable: nothing in these to keep, a
    // new one is made and filled. Programs still attached from the previous version hold
    // the old one until they are replaced.
    for path in replace {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(fresh)
}

/// Detaches every pinned link and removes every pin under `dir`; returns what it removed.
pub fn teardown(dir: &Path) -> Result<Vec<String>> {
    let mut removed = attach::detach_all(dir)?;
    removed.extend(hairpin::detach_all(dir)?);
    for name in MAPS.iter().map(|m| m.name) {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(format!("map {name}"));
        }
    }
    if dir.exists() {
        std::fs::remove_dir(dir).with_context(|| {
            format!(
                "removing {} (it holds pins that are not ours?)",
                dir.display()
            )
        })?;
    }
    Ok(removed)
}
