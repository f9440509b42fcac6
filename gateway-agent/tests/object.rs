//! The embedded eBPF objects: their maps are the map table's; the default one opens and
//! loads with libbpf (bpftool), so libbpf-based tools can work with it; the logging one
//! carries aya-log's ring buffer. Needs root; loads into a private bpffs that is unmounted
//! afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_agent::datapath::{Datapath, LoadOptions, object};
use gateway_common::{capacity::Capacity, maps::MAPS};

/// Both objects define exactly the table's maps, each as the table says: kind and flags, key
/// and value sizes (from the BTF of the key and value types), and the entries of the default
/// capacity.
#[test]
fn the_objects_maps_are_those_of_the_map_table() {
    for (what, elf) in [
        ("default", object::OBJECT),
        ("logging", object::OBJECT_WITH_LOG),
    ] {
        let parsed = aya_obj::Object::parse(elf).unwrap();
        let mut btf_maps: BTreeMap<&str, &aya_obj::Map> = parsed
            .maps
            .iter()
            .filter(|(_, m)| matches!(m, aya_obj::Map::Btf(_)))
            .map(|(name, m)| (name.as_str(), m))
            .collect();
        for def in MAPS {
            let m = btf_maps
                .remove(def.name)
                .unwrap_or_else(|| panic!("the {what} object has no BTF map {}", def.name));
            assert_eq!(
                (
                    m.map_type(),
                    m.map_flags(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries()
                ),
                (
                    def.kind.map_type(),
                    def.kind.flags(),
                    def.key_size as u32,
                    def.value_size as u32,
                    def.size.entries(&Capacity::DEFAULT)
                ),
                "{what} object, map {} (type, flags, key, value, entries)",
                def.name
            );
        }
        assert!(
            btf_maps.is_empty(),
            "the {what} object has maps the table does not list: {:?}",
            btf_maps.keys()
        );
    }
}

/// A bpf filesystem mounted on a fresh directory, unmounted (freeing every pin) on drop.
struct PrivateBpffs(PathBuf);

impl PrivateBpffs {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gateway-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a bpffs at {}", dir.display());
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn libbpf_opens_and_loads_the_default_object() {
    let fs = PrivateBpffs::new("libbpf");
    let file = fs
        .path()
        .parent()
        .unwrap()
        .join(format!("gateway-object-{}.o", std::process::id()));
    std::fs::write(&file, object::OBJECT).unwrap();
    let out = Command::new("bpftool")
        .args(["prog", "loadall"])
        .arg(&file)
        .arg(fs.path().join("progs"))
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut progs: Vec<String> = std::fs::read_dir(fs.path().join("progs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    progs.sort();
    assert_eq!(
        progs,
        [
            "gw_clock",
            "gw_connect4",
            "gw_egress",
            "gw_floor",
            "gw_getpeername4",
            "gw_ingress",
            "gw_recvmsg4",
            "gw_sendmsg4"
        ]
    );
}

#[test]
fn only_the_logging_object_carries_aya_log() {
    let plain = Datapath::load(&LoadOptions {
        capacity: Default::default(),
        pin_dir: None,
        log_level: log::LevelFilter::Info,
        kern_ctx: gateway_agent::datapath::running_kern_ctx(),
    })
    .unwrap();
    assert!(plain.ebpf.map("AYA_LOGS").is_none());
    assert!(plain.logger.is_none());
    let logging = Datapath::load(&LoadOptions {
        capacity: Default::default(),
        pin_dir: None,
        log_level: log::LevelFilter::Debug,
        kern_ctx: gateway_agent::datapath::running_kern_ctx(),
    })
    .unwrap();
    assert!(logging.logger.is_some());
}

/// Pins an empty map at `path` with these sizes, as another version of the agent would have.
fn pin_map(path: &Path, kind: &str, key: u32, value: u32) {
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args([
            "type",
            kind,
            "key",
            &key.to_string(),
            "value",
            &value.to_string(),
        ])
        .args(["entries", "1", "name", "old"])
        .status()
        .unwrap();
    assert!(status.success(), "bpftool map create {}", path.display());
}

fn value_size(path: &Path) -> u32 {
    aya::maps::MapInfo::from_pin(path).unwrap().value_size()
}

#[test]
fn pinned_settings_of_another_layout_are_replaced_but_pinned_state_is_refused() {
    let fs = PrivateBpffs::new("layouts");
    let load = || {
        Datapath::load(&LoadOptions {
            capacity: Default::default(),
            pin_dir: Some(fs.path()),
            log_level: log::LevelFilter::Off,
            kern_ctx: None,
        })
    };
    let (config, affinity) = (fs.path().join("gw_config"), fs.path().join("gw_affinity"));
    // gw_config as the previous version had it: timeouts only, 32 bytes.
    pin_map(&config, "array", 4, 32);
    pin_map(&affinity, "hash", 4, 8);
    let refused = format!("{:#}", load().err().expect("a state map of another layout"));
    assert!(
        refused.contains("gw_affinity") && refused.contains("teardown"),
        "{refused}"
    );
    // Refused before anything was replaced.
    assert_eq!(value_size(&config), 32);

    std::fs::remove_file(&affinity).unwrap();
    // gw_counters from a version that counted other things (one counter here).
    let counters = fs.path().join("gw_counters");
    pin_map(&counters, "percpu_array", 4, 8);
    let dp = load().unwrap();
    let size = std::mem::size_of::<gateway_common::DatapathConfig>() as u32;
    assert_eq!(value_size(&config), size);
    assert_eq!(
        aya::maps::MapInfo::from_pin(&counters)
            .unwrap()
            .max_entries(),
        gateway_common::Counter::COUNT
    );
    drop(dp);
}
