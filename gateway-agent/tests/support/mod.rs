//! Shared by the datapath tests and the datapath benchmark: crafted frames, checksum
//! verification, and a harness that loads the real programs with private maps programmed by
//! the agent's own plan code.
#![allow(dead_code)] // each user takes what it needs

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use gateway_agent::{
    capacity::Capacity,
    config::ObjectRef,
    datapath::{Datapath, LoadOptions},
    model::{Announcement, BackendAddr, DesiredState, Frontend, Protocol},
    plan::{self, Interface, MapState},
};
use gateway_common::{Counter, DatapathConfig, program_names, proto};

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
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
/// BPF_PROG_TEST_RUN runs TC programs on the loopback device.
pub const TEST_IFINDEX: u32 = 1;

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
            })
            .collect(),
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
        };
        h.dp.maps
            .write_config(DatapathConfig::from_secs(21600, 3600, h.dp.clock))
            .unwrap();
        // The empty program the benchmark measures against; the agent never loads it.
        h.dp.program(program_names::FLOOR).unwrap().load().unwrap();
        h.program(desired);
        h
    }

    pub fn program(&mut self, desired: &DesiredState) {
        let lo = [Interface {
            name: "lo".into(),
            index: TEST_IFINDEX,
            mac: NODE_MAC,
        }];
        let target = plan::target(desired, &lo, &self.state, &self.capacity).unwrap();
        for op in plan::diff(&self.state, &target) {
            self.dp.maps.apply(&op).unwrap();
        }
        self.state = target;
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
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dp.program(program).unwrap();
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration.as_nanos() as u64))
    }

    pub fn ingress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(program_names::INGRESS, frame)
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

#[derive(Clone, Copy)]
pub enum Tcp {
    Syn,
    Ack,
    Fin,
}

pub fn tcp_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, 1000, 65535);
    let b = match flags {
        Tcp::Syn => b.syn(),
        Tcp::Ack => b.ack(1),
        Tcp::Fin => b.ack(1).fin(),
    };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut v, payload)
        .unwrap();
    v
}

pub fn icmp_echo_request(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut v, b"ping")
        .unwrap();
    v
}

pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&sender);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target);
    v
}

/// One's complement sum over 16-bit words.
pub fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Asserts that the IPv4 header checksum and the TCP/UDP checksum of `frame` verify.
pub fn assert_checksums(frame: &[u8]) {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(ones_sum(&ip[..ihl], 0), 0xffff, "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    if ip[9] == proto::UDP && l4[6..8] == [0, 0] {
        return; // no checksum
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    assert_eq!(ones_sum(l4, ones_sum(&pseudo, 0)), 0xffff, "L4 checksum");
}

pub fn ip_dst(frame: &[u8]) -> ([u8; 4], u16) {
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    (
        frame[30..34].try_into().unwrap(),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

pub fn ip_src(frame: &[u8]) -> ([u8; 4], u16) {
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    (
        frame[26..30].try_into().unwrap(),
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
    )
}
