//! The reference topology, built entirely inside network namespaces:
//!
//! ```text
//!  {p}-client  cl0 192.168.10.10/24 (+ secondaries)
//!       |
//!  {p}-seg     br0: the flat L2 segment 192.168.10.0/24
//!       |-- {p}-cp1  ens18 .110  (control plane, no pods)
//!       |-- {p}-w1   ens18 .111  lxc… -- {p}-envoy-w1a 10.244.1.10, {p}-envoy-w1b 10.244.1.11
//!       `-- {p}-w2   ens18 .112  lxc… -- {p}-envoy-w2a 10.244.2.10
//! ```
//!
//! Each node routes the other nodes' pod /24s via their addresses, as a CNI routing pods
//! directly would. A lab may also have a client on another network, behind routers on the
//! segment (`LabSpec::with_routed_client`: `{p}-router` .1, `{p}-farrt`, `{p}-far`
//! 10.99.0.10).
//!
//! These addresses, the pool's and the VIPs are named once, as constants in `spec.rs`
//! (re-exported here); tests and xtask use those names. [`LabSpec::failover`] is the
//! failover lab: workers w1, w2, w3 (.111-.113), one pod each (10.244.{1,2,3}.10) of the
//! internal gateway's service, Nodes listing their InternalIP so the agents form a cluster.
//! [`Lab::split`] cuts nodes off from the others on the segment (not from the client);
//! [`Lab::set_uplink`] takes a node off the segment altogether.
//!
//! Each pod runs nginx on 8080 and 8443 answering `backend=POD client=IP:PORT
//! local=IP:PORT`, and serving the files of the run directory's `files/` under `/files/`;
//! each node runs nginx on its own address port 80 answering `node=NODE client=IP`. One
//! bpffs is mounted under the run directory; each node's agent gets its own directory below
//! it, and a cgroup of its own (its agent's `--cgroup`, see `cgroup.rs`). Dropping a [`Lab`]
//! removes all of it, also after a panic or a half-finished [`Lab::up`].

mod cgroup;
mod client;
mod nginx;
mod objects;
mod spec;
mod teardown;
mod wiring;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, ensure};

pub use client::Client;
pub use objects::{config_json, config_yaml, objects};
pub use spec::{
    CLIENT, CLIENT_2, CONTROL_PLANE_LABEL, CP1_ADDR, ENVOY_W1A, ENVOY_W1B, ENVOY_W2A, ENVOY_W3A,
    FAR_CLIENT, FAR_GATEWAY, FAR_NET, HOSTNAME_LABEL, HTTP_PORT, HTTPS_PORT, KUBE_API_ADDR,
    L2PolicySpec, LabSpec, LabelSelector, NodeSpec, OWNING_GATEWAY_LABEL, Operator, POD_CIDR,
    POOL_CIDR, PodSpec, PoolSpec, PortSpec, Protocol, ROUTER_ADDR, Requirement, RoutedClientSpec,
    SEGMENT, SEGMENT_PREFIX_LEN, SPARE_POD_W1, SPARE_VIPS, ServiceSpec, SessionAffinity,
    TRANSIT_FAR, TRANSIT_ROUTER, TrafficPolicy, UNUSED_ADDR, VIP_EXTERNAL, VIP_INTERNAL, W1_ADDR,
    W2_ADDR, W3_ADDR,
};
pub use teardown::{RUN_ROOT, is_mount_point, run_dir};
pub use wiring::{BRIDGE, CLIENT_IFACE, FAR_IFACE, NODE_UPLINK, POD_IFACE};

use crate::netns::Netns;
use crate::process::Process;
use nginx::Site;

/// The port of the nginx on each node's own address.
pub const NODE_HTTP_PORT: u16 = 80;

/// The nftables table of [`Lab::split`], in the segment's namespace.
const SPLIT_TABLE: &str = "gateway_split";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A lab prefix unique across parallel tests and processes: `{base}{pid}n{counter}`.
pub fn unique_prefix(base: &str) -> String {
    let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
    format!("{base}{}n{n}", std::process::id())
}

/// A running lab. Dropping it tears everything down unless [`Lab::persist`] was called.
pub struct Lab {
    spec: LabSpec,
    segment: Netns,
    client: Client,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    routed: Option<wiring::RoutedClient>,
    servers: Vec<Process>,
    /// Last, so that the servers above are killed and reaped before it removes the rest.
    teardown: teardown::Guard,
}

#[derive(Debug)]
pub struct Node {
    name: String,
    ns: Netns,
    addr: Ipv4Addr,
    mac: String,
    bpffs_dir: PathBuf,
    /// The node's own cgroup, where its agent attaches the hairpin programs.
    cgroup: PathBuf,
}

#[derive(Debug)]
pub struct Pod {
    name: String,
    node: String,
    ns: Netns,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
    host_iface: String,
}

impl Lab {
    /// Builds the topology of `spec` and returns once every server answers. On any error,
    /// what was built is removed again before the error is returned.
    pub fn up(spec: LabSpec) -> Result<Self> {
        spec.validate()?;
        let prefix = spec.prefix.as_str();
        // Checked before the guard exists: a failed `up` must not remove someone else's lab.
        ensure!(
            !teardown::exists(prefix)?,
            "lab {prefix} already exists (`cargo xtask lab down --prefix {prefix}` removes it)"
        );
        let teardown = teardown::Guard::arm(prefix, spec.teardown_agent.clone());
        let run_dir = run_dir(prefix);
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let node_names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        teardown::record_nodes(prefix, &node_names)?;
        teardown::mount_bpffs(prefix)?;

        // Declared after the guard, so on error the servers drop (die) before it runs.
        let mut servers = Vec::new();
        let segment = wiring::segment(&teardown::namespace(prefix, "seg"))?;
        let client = Client::new(
            wiring::client(
                &segment,
                &teardown::namespace(prefix, "client"),
                &spec.client_addrs,
                &spec.client_mac(),
            )?,
            spec.client_addrs.clone(),
            spec.client_mac(),
        );
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for node_spec in &spec.nodes {
            let ns = wiring::node(
                &segment,
                &teardown::namespace(prefix, &node_spec.name),
                node_spec,
            )?;
            servers.push(serve_node(&ns, &run_dir, node_spec)?);
            for pod_spec in &node_spec.pods {
                let pod_ns =
                    wiring::pod(&ns, &teardown::namespace(prefix, &pod_spec.name), pod_spec)?;
                servers.push(serve_pod(&pod_ns, &run_dir, pod_spec)?);
                pods.push(Pod {
                    name: pod_spec.name.clone(),
                    node: node_spec.name.clone(),
                    ns: pod_ns,
                    addr: pod_spec.addr,
                    gateway: pod_spec.gateway(),
                    host_iface: pod_spec.host_iface(),
                });
            }
            nodes.push(Node {
                name: node_spec.name.clone(),
                ns,
                addr: node_spec.addr,
                mac: node_spec.mac(),
                bpffs_dir: teardown::bpffs_root(prefix).join(&node_spec.name),
                cgroup: cgroup::create(prefix, &node_spec.name)?,
            });
        }
        let routed: Vec<(&Netns, &NodeSpec)> = nodes
            .iter()
            .map(|n: &Node| &n.ns)
            .zip(&spec.nodes)
            .collect();
        wiring::pod_routes(&routed)?;
        let routed = match &spec.routed_client {
            Some(routed_spec) => {
                let name = |role: &str| teardown::namespace(prefix, role);
                let routed = wiring::routed_client(&segment, name, routed_spec)?;
                wiring::far_routes(&nodes.iter().map(|n| &n.ns).collect::<Vec<_>>())?;
                Some(routed)
            }
            None => None,
        };
        Ok(Self {
            spec,
            segment,
            client,
            nodes,
            pods,
            routed,
            servers,
            teardown,
        })
    }

    /// Removes everything of lab `prefix` (see [`Lab::up`]); works from a fresh process and
    /// when nothing is left. With `agent`, first runs `AGENT teardown --bpffs DIR` in every
    /// node, ignoring its failures.
    pub fn down_by_prefix(prefix: &str, agent: Option<&Path>) -> Result<()> {
        teardown::down(prefix, agent)
    }

    /// Leaves the lab and its servers running after this value is gone (`cargo xtask lab up`).
    pub fn persist(self) {
        for server in self.servers {
            server.detach();
        }
        self.teardown.disarm();
    }

    pub fn prefix(&self) -> &str {
        &self.spec.prefix
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// Where the lab keeps configs, logs and the bpffs: `/run/gateway-lab/{prefix}`.
    pub fn run_dir(&self) -> PathBuf {
        run_dir(&self.spec.prefix)
    }

    /// The namespace holding the segment's bridge, e.g. for `tcpdump -i br0`.
    pub fn segment(&self) -> &Netns {
        &self.segment
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client behind the routers (`FAR_CLIENT`), when the spec has one.
    pub fn far_client(&self) -> Option<&Netns> {
        self.routed.as_ref().map(|r| &r.client)
    }

    /// The router on the segment in front of the far client, when the spec has one.
    pub fn router(&self) -> Option<&Netns> {
        self.routed.as_ref().map(|r| &r.router)
    }

    /// The far client's own router, when the spec has one.
    pub fn far_router(&self) -> Option<&Netns> {
        self.routed.as_ref().map(|r| &r.far_router)
    }

    /// Where the pods' `/files/` are served from: `run_dir/files`.
    pub fn files_dir(&self) -> PathBuf {
        self.run_dir().join("files")
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// # Panics
    /// When the lab has no node `name` (a bug in the test).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("lab {} has no node {name}", self.spec.prefix))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// # Panics
    /// When the lab has no pod `name` (a bug in the test).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("lab {} has no pod {name}", self.spec.prefix))
    }

    /// The agent's `--bpffs` directory on node `name` (the agent creates it).
    pub fn bpffs_dir(&self, node: &str) -> &Path {
        self.node(node).bpffs_dir()
    }

    /// Cuts the segment in two: `nodes` reach each other and the client, the other nodes
    /// reach each other and the client, and nothing crosses between the two groups. A
    /// bridge filter in the segment's namespace (nftables, family bridge) drops the frames
    /// between the groups' ports; [`Lab::heal`] removes it.
    pub fn split(&self, nodes: &[&str]) -> Result<()> {
        let ports = |inside: bool| -> String {
            self.nodes
                .iter()
                .filter(|n| nodes.contains(&n.name.as_str()) == inside)
                .map(|n| format!("\"{}\"", wiring::node_port(&n.name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (cut, rest) = (ports(true), ports(false));
        ensure!(
            !cut.is_empty() && !rest.is_empty(),
            "a split needs nodes on both sides"
        );
        let rules = format!(
            "table bridge {SPLIT_TABLE} {{\n\
             \x20 chain forward {{\n\
             \x20   type filter hook forward priority 0; policy accept;\n\
             \x20   iifname {{ {cut} }} oifname {{ {rest} }} drop\n\
             \x20   iifname {{ {rest} }} oifname {{ {cut} }} drop\n\
             \x20 }}\n\
             }}\n"
        );
        self.heal()?;
        let file = self.run_dir().join("split.nft");
        fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
        self.segment
            .run(["nft", "-f", &file.display().to_string()])?;
        Ok(())
    }

    /// Joins the segment again after [`Lab::split`].
    pub fn heal(&self) -> Result<()> {
        let tables = self.segment.run(["nft", "list", "tables"])?;
        if tables.contains(SPLIT_TABLE) {
            self.segment
                .run(["nft", "delete", "table", "bridge", SPLIT_TABLE])?;
        }
        Ok(())
    }

    /// Takes node `name`'s uplink off the segment (down) or puts it back (up), as a cable
    /// pulled or a node powered off: its frames reach nobody.
    pub fn set_uplink(&self, name: &str, up: bool) -> Result<()> {
        self.node(name)
            .ns()
            .ip(&["link", "set", NODE_UPLINK, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// The lab's objects as the agent reads them (see [`config_yaml`] for variations).
    pub fn config_yaml(&self) -> Result<String> {
        config_yaml(&self.spec)
    }

    /// Starts a long-lived command in `ns`, logging to `run_dir/logs/NAME.log`; it is killed
    /// when the returned guard drops, and at the latest when the lab goes.
    pub fn spawn<I>(&self, ns: &Netns, name: &str, args: I) -> Result<Process>
    where
        I: IntoIterator,
        I::Item: AsRef<std::ffi::OsStr>,
    {
        let log = self.run_dir().join("logs").join(format!("{name}.log"));
        ns.spawn(args, name, &log)
    }
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The address of the node's uplink `ens18`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The MAC of the node's uplink `ens18`, deterministic per address.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    /// The node's cgroup (v2): the agent's `--cgroup` in the lab, so its hairpin programs
    /// never apply to the machine's own processes.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// `args` in namespace `ns` (the node's own, or a pod's on this node) as a process of
    /// the node's cgroup: what hairpin serves, as the node's processes and pods on a real
    /// node.
    pub fn command_in_cgroup<I>(&self, ns: &Netns, args: I) -> std::process::Command
    where
        I: IntoIterator,
        I::Item: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.cgroup.join("cgroup.procs"))
            .args(["ip", "netns", "exec", ns.name()])
            .args(args);
        cmd
    }
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the node the pod runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The node-side address the pod routes through; the source the pod sees for
    /// connections the node itself opens.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The pod's veth on the node (`lxc…`).
    pub fn host_iface(&self) -> &str {
        &self.host_iface
    }
}

/// nginx on the node's own address, to show that the node's own traffic is unaffected.
fn serve_node(ns: &Netns, run_dir: &Path, node: &NodeSpec) -> Result<Process> {
    let listen = format!("{}:{NODE_HTTP_PORT}", node.addr);
    nginx::serve(
        ns,
        run_dir,
        &Site {
            name: &node.name,
            files: None,
            listen: std::slice::from_ref(&listen),
            body: &format!("node={} client=$remote_addr", node.name),
            probes: &[format!("http://{listen}/")],
        },
    )
}

/// The envoy-like backend: tells which pod answered and which client address it saw.
fn serve_pod(ns: &Netns, run_dir: &Path, pod: &PodSpec) -> Result<Process> {
    let ports = [HTTP_PORT, HTTPS_PORT];
    let files = run_dir.join("files");
    fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    nginx::serve(
        ns,
        run_dir,
        &Site {
            name: &pod.name,
            files: Some(&files),
            listen: &ports.map(|p| p.to_string()),
            body: &format!(
                "backend={} client=$remote_addr:$remote_port local=$server_addr:$server_port",
                pod.name
            ),
            probes: &ports.map(|p| format!("http://{}:{p}/", pod.addr)),
        },
    )
}
