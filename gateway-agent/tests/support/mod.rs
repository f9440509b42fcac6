//! Shared by the datapath tests, the frame fuzzer and the datapath benchmark: the harness
//! that loads the real programs with private maps programmed by the agent's own plan code,
//! the reference topology's addresses, the frame builder and checksum toolkit (`frame`) and
//! the seeded random generator (`rng`).
#![allow(dead_code)] // each user takes what it needs

pub mod frame;
pub mod netns;
pub mod rng;

pub use frame::*;

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use gateway_agent::{
    capacity::Capacity,
    config::ObjectRef,
    datapath::{Datapath, LoadOptions},
    model::{Announcement, BackendAddr, DesiredState, Frontend, Protocol},
    plan::{self, Interface, MapState},
};
use gateway_common::{Counter, DatapathConfig, cluster::Gate, program_names};

pub const PASS: u32 = -1i32 as u32;
pub const OK: u32 = 0;
pub const SHOT: u32 = 2;
pub const REDIRECT: u32 = 7;

pub const CLIENT: [u8; 4] = [192, 168, 10, 10];
pub const VIP_AFFINITY: [u8; 4] = [192, 168, 10, 49];
pub const VIP_RANDOM: [u8; 4] = [192, 168, 10, 50];
pub const VIP_EMPTY: [u8; 4] = [192, 168, 10, 51];
pub const NODE: [u8; 4] = [192, 168, 10, 111];
pub const POD_A: [u8; 4] = [10, 244, 1, 10];
pub const POD_B: [u8; 4] = [10, 244, 1, 11];
/// A client address the test namespace has no neighbour entry for.
pub const CLIENT_2: [u8; 4] = [192, 168, 10, 11];
/// Another node, and a pod behind it (reached via that node: see `netns`).
pub const REMOTE_NODE: [u8; 4] = [192, 168, 10, 112];
pub const POD_REMOTE: [u8; 4] = [10, 244, 2, 10];
pub const POD_REMOTE_CIDR: &str = "10.244.2.0/24";
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub const REMOTE_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x70];
/// BPF_PROG_TEST_RUN runs TC programs on the loopback device.
pub const TEST_IFINDEX: u32 = 1;

/// The start of a `struct __sk_buff` for BPF_PROG_TEST_RUN, up to and with `ifindex`: the
/// kernel runs the program on a frame of that device (the other fields it takes stay 0).
pub fn skb_ctx(ifindex: u32) -> [u8; 44] {
    const IFINDEX_AT: usize = 40;
    let mut ctx = [0u8; 44];
    ctx[IFINDEX_AT..].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// `f` as a Cluster service's frontend on this node: its backends in 10.244.2.0/24 run on
/// the other node.
pub fn cluster(mut f: Frontend) -> Frontend {
    for b in &mut f.backends {
        b.remote = b.addr.octets()[2] == POD_REMOTE[2];
    }
    f
}

pub fn svc(name: &str) -> ObjectRef {
    ObjectRef {
        kind: "Service".into(),
        namespace: "gateway".into(),
        name: name.into(),
    }
}

pub fn frontend(
    name: &str,
    vip: [u8; 4],
    port: u16,
    protocol: Protocol,
    affinity: Option<u32>,
    backends: &[([u8; 4], u16)],
) -> Frontend {
    Frontend {
        service: svc(name),
        port_name: "http".into(),
        vip: vip.into(),
        port,
        protocol,
        affinity_timeout_secs: affinity,
        backends: backends
            .iter()
            .map(|&(a, p)| BackendAddr {
                addr: a.into(),
                port: p,
                remote: false,
            })
            .collect(),
        draining: Vec::new(),
        source_ranges: None,
    }
}

pub fn reference_state() -> DesiredState {
    DesiredState {
        frontends: vec![
            frontend(
                "internal",
                VIP_AFFINITY,
                80,
                Protocol::Tcp,
                Some(10800),
                &[(POD_A, 8080), (POD_B, 8080)],
            ),
            frontend(
                "internal",
                VIP_AFFINITY,
                53,
                Protocol::Udp,
                None,
                &[(POD_A, 5353)],
            ),
            frontend(
                "external",
                VIP_RANDOM,
                80,
                Protocol::Tcp,
                None,
                &[(POD_A, 8080), (POD_B, 8080)],
            ),
            frontend("empty", VIP_EMPTY, 80, Protocol::Tcp, None, &[]),
        ],
        announcements: vec![Announcement {
            interface: "lo".into(),
            vip: VIP_AFFINITY.into(),
            service: svc("internal"),
            policy: "l2-policy".into(),
        }],
        ..Default::default()
    }
}

pub struct Harness {
    pub dp: Datapath,
    pub state: MapState,
    capacity: Capacity,
    /// The ifindex of the test namespace's uplink (see `netns`).
    pub uplink: u32,
}

impl Harness {
    /// The programs with the reference's services.
    pub fn new() -> Self {
        Self::with(&reference_state(), Capacity::default())
    }

    /// The programs with maps of `capacity`, serving `desired`.
    pub fn with(desired: &DesiredState, capacity: Capacity) -> Self {
        Self::with_kern_ctx(
            desired,
            capacity,
            gateway_agent::datapath::running_kern_ctx(),
        )
    }

    /// As [`Harness::with`], with the datapath reading `ip_summed` as `kern_ctx` says
    /// (`None`: L4 checksums through the kernel's helpers only).
    pub fn with_kern_ctx(
        desired: &DesiredState,
        capacity: Capacity,
        kern_ctx: Option<gateway_agent::datapath::KernCtx>,
    ) -> Self {
        let uplink = netns::enter();
        let dp = Datapath::load(&LoadOptions {
            capacity,
            pin_dir: None,
            log_level: log::LevelFilter::Off,
            kern_ctx,
        })
        .expect("load datapath (run as root)");
        let mut h = Harness {
            dp,
            state: MapState::default(),
            capacity,
            uplink,
        };
        h.dp.maps
            .write_config(DatapathConfig::from_secs(21600, 3600, h.dp.clock))
            .unwrap();
        // A single node's: ARP is answered whatever the clock says.
        h.dp.maps.write_gate(Gate::OPEN).unwrap();
        // The empty program the benchmark measures against; the agent never loads it.
        h.dp.program(program_names::FLOOR).unwrap().load().unwrap();
        h.program(desired);
        h
    }

    pub fn program(&mut self, desired: &DesiredState) {
        self.program_but(desired, |_| false);
    }

    /// Like [`Harness::program`], leaving out the writes `skipped` picks: a reload whose
    /// agent was killed before making them. The state is then read back from the maps, as
    /// the next agent adopts it.
    pub fn program_but(&mut self, desired: &DesiredState, skipped: impl Fn(&plan::Op) -> bool) {
        // The announcements' interface, and the uplink flows to other nodes leave by.
        let interfaces = [
            Interface {
                name: "lo".into(),
                index: TEST_IFINDEX,
                mac: NODE_MAC,
                addr: None,
            },
            Interface {
                name: netns::UPLINK.into(),
                index: self.uplink,
                mac: NODE_MAC,
                addr: Some(NODE.into()),
            },
        ];
        let target = plan::target(desired, &interfaces, &self.state, &self.capacity).unwrap();
        let mut interrupted = false;
        for op in plan::diff(&self.state, &target) {
            if skipped(&op) {
                interrupted = true;
            } else {
                self.dp.maps.apply(&op).unwrap();
            }
        }
        self.state = if interrupted {
            self.dp.maps.read_state().unwrap()
        } else {
            target
        };
    }

    /// Runs `frame` through a program once; returns the verdict and the output frame.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let (verdict, out, _) = self.run_timed(program, frame);
        (verdict, out)
    }

    /// Like [`Harness::run`], with the kernel's measure of the program's run time (ns).
    pub fn run_timed(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>, u64) {
        self.try_run(program, frame).unwrap()
    }

    /// Like [`Harness::run_timed`], or the kernel's refusal to make an skb of `frame`
    /// (BPF_PROG_TEST_RUN refuses, for one, IPv4 frames too short for an IPv4 header).
    pub fn try_run(
        &mut self,
        program: &str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>, u64), ProgramError> {
        self.try_run_on(program, TEST_IFINDEX, frame)
    }

    /// Like [`Harness::try_run`], with the frame arriving on (ingress) or leaving by
    /// (egress) interface `ifindex` of the test namespace.
    pub fn try_run_on(
        &mut self,
        program: &str,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>, u64), ProgramError> {
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = skb_ctx(ifindex);
        let prog = self.dp.program(program).unwrap();
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            // Loopback is the kernel's default device: no context needed.
            ctx_in: (ifindex != TEST_IFINDEX).then_some(&ctx[..]),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration.as_nanos() as u64))
    }

    pub fn ingress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_names::INGRESS, frame)
    }

    /// Ingress of the uplink, whose address flows to other nodes are SNATed to.
    pub fn uplink_ingress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let uplink = self.uplink;
        let (verdict, out, _) = self
            .try_run_on(program_names::INGRESS, uplink, frame)
            .unwrap();
        (verdict, out)
    }

    pub fn uplink_egress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let uplink = self.uplink;
        let (verdict, out, _) = self
            .try_run_on(program_names::EGRESS, uplink, frame)
            .unwrap();
        (verdict, out)
    }

    pub fn egress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_names::EGRESS, frame)
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.dp
            .maps
            .counters()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == c)
            .unwrap()
            .1
    }
}
