//! The command line: `run`, `check`, the read-only views and `teardown`.

mod check;
mod cluster;
mod doctor;
pub(crate) mod inspect;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gateway_common::{capacity, timeouts};
use regex::Regex;
use serde::Serialize;

use crate::{
    agent::{self, ClusterOptions, RunOptions},
    capacity::Capacity,
    cluster::timing,
    config::LoadBalancerClasses,
    config::Selector,
    datapath::{self, Maps},
    source::Origin,
};

const DEFAULT_BPFFS: &str = "/sys/fs/bpf/gateway";

#[derive(Parser)]
#[command(
    name = "gateway-agent",
    version,
    about = "eBPF load balancer for bare-metal LoadBalancer services: VIPs from IP pools, L2 announcements, node-local backends with the client's source IP kept"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Program the datapath from the cluster's objects (or FILE's) and keep serving, following
    /// every change.
    Run(RunArgs),
    /// Judge the objects (the cluster's, or FILE's) as `run` would, without touching the
    /// kernel; print what every Service and pool gets. Exit status: 0 valid, 1 served in part
    /// (findings say what is not served), 2 refused.
    Check {
        #[command(flatten)]
        objects: ObjectsArgs,
        /// Judge only this node, and show what it would serve (default: every Node object).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        #[command(flatten)]
        classes: ClassArgs,
        #[command(flatten)]
        capacity: CapacityArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Datapath configuration, attachments, map fill and counters.
    Status(ViewArgs),
    /// Load-balancer frontends.
    Lb {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Tracked connections.
    Ct {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// ClientIP session affinity entries.
    Affinity {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// VIPs this node answers ARP for.
    L2 {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// The cluster as this node's agent sees it: every member, its state, the VIPs it
    /// claims and answers for, and the datagrams refused.
    Members(ViewArgs),
    /// Hand this node's VIPs over to the other members at once and announce none (before a
    /// planned shutdown); it stays drained across agent restarts until `undrain`.
    Drain {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// End a drain: this node may announce again (it takes nothing back).
    Undrain {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Walk the reference's troubleshooting tree over the objects and the live datapath.
    Doctor {
        /// The objects to check (default: the file the running agent uses; without one, the
        /// cluster's).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The cluster to read when there is no file (default: $KUBECONFIG, ~/.kube/config,
        /// or the pod's service account).
        #[arg(long, value_name = "FILE", conflicts_with = "config")]
        kubeconfig: Option<PathBuf>,
        /// This node's name (default: the running agent's, or $NODE_NAME).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Interfaces that should carry the programs (regex), as given to `run`.
        #[arg(long, default_value = "^e")]
        devices: Regex,
        #[command(flatten)]
        classes: ClassArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Detach the programs and remove every pin (drops tracked connections).
    Teardown {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Subcommand)]
enum ListCommand {
    /// List the entries.
    List(ViewArgs),
}

/// Where the objects come from: the cluster, unless a file is given.
#[derive(Args)]
struct ObjectsArgs {
    /// Read the objects from this multi-document YAML file (Service, EndpointSlice, Node,
    /// CiliumLoadBalancerIPPool and CiliumL2AnnouncementPolicy) instead of the cluster.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The cluster to read (default: $KUBECONFIG, ~/.kube/config, or the pod's service
    /// account).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    kubeconfig: Option<PathBuf>,
}

impl ObjectsArgs {
    fn origin(self) -> Origin {
        match self.config {
            Some(path) => Origin::File(path),
            None => Origin::Cluster {
                kubeconfig: self.kubeconfig,
            },
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    objects: ObjectsArgs,
    /// This node's name, as in its Node object and the endpoints' nodeName.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Reading the cluster: the namespace of the Lease that chooses the one agent writing
    /// VIPs and reasons to the objects' status.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gateway-system")]
    lease_namespace: String,
    /// Interfaces that get the TC programs (regex).
    #[arg(long, default_value = "^e")]
    devices: Regex,
    /// Directory on a bpf filesystem where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Idle lifetime of an established TCP connection, seconds.
    #[arg(long, default_value_t = timeouts::CT_TCP)]
    ct_tcp_timeout: u64,
    /// Idle lifetime of a non-TCP flow, seconds.
    #[arg(long, default_value_t = timeouts::CT_ANY)]
    ct_any_timeout: u64,
    /// Source ports of flows SNATed to a backend on another node (externalTrafficPolicy
    /// Cluster), MIN-MAX. A flow keeps the client's port when it is in range and no live
    /// flow holds it in that backend's row of ports. Keep it outside net.ipv4.ip_local_port_range if the node itself opens
    /// connections to backend pods.
    #[arg(long, value_name = "MIN-MAX", value_parser = port_range, default_value = "1024-65535")]
    snat_ports: (u16, u16),
    /// Leave TCP/UDP checksums to the kernel's helpers even where the datapath could update
    /// them in place (about 50 ns more per rewritten packet); to rule the in-place update
    /// out when chasing a checksum problem.
    #[arg(long)]
    checksum_helpers: bool,
    /// The cgroup v2 directory whose processes get hairpin (their connections to the VIPs
    /// this node announces go straight to a backend): the root covers the node and its pods.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup")]
    cgroup: PathBuf,
    /// No hairpin: this node's own connections to the VIPs it announces are not served.
    #[arg(long)]
    no_hairpin: bool,
    #[command(flatten)]
    classes: ClassArgs,
    #[command(flatten)]
    capacity: CapacityArgs,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off when not given).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_address: Option<SocketAddr>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The `spec.loadBalancerClass`es served besides none and `io.cilium/l2-announcer`.
#[derive(Args)]
struct ClassArgs {
    /// Also serve Services of this loadBalancerClass (repeatable); Services of any other
    /// class are left to their controller.
    #[arg(long = "load-balancer-class", value_name = "CLASS")]
    load_balancer_classes: Vec<String>,
}

impl ClassArgs {
    fn classes(self) -> LoadBalancerClasses {
        LoadBalancerClasses::new(self.load_balancer_classes)
    }
}

/// Map sizes.
#[derive(Args)]
struct CapacityArgs {
    /// Frontend (VIP:port/protocol) map size; also bounds VIPs and announcements.
    #[arg(long, default_value_t = capacity::SERVICES)]
    services_max: u32,
    /// Backend map size (distinct backend address:port/protocol).
    #[arg(long, default_value_t = capacity::BACKENDS)]
    backends_max: u32,
    /// Conntrack map size; the least recently used flow is evicted when full.
    #[arg(long, default_value_t = capacity::CONNTRACK)]
    ct_max: u32,
    /// ClientIP affinity map size (LRU).
    #[arg(long, default_value_t = capacity::AFFINITY)]
    affinity_max: u32,
}

impl CapacityArgs {
    fn capacity(&self) -> Capacity {
        Capacity {
            services: self.services_max,
            backends: self.backends_max,
            conntrack: self.ct_max,
            affinity: self.affinity_max,
        }
    }
}

/// Failover between nodes.
#[derive(Args)]
struct ClusterArgs {
    /// UDP port the agents talk on (failover between nodes), on each Node's InternalIP.
    #[arg(long, default_value_t = timing::DEFAULT_PORT)]
    cluster_port: u16,
    /// The shared secret every agent authenticates the cluster's datagrams with (at least
    /// 16 bytes; the same file on every node). Without it anyone on the segment could claim
    /// VIPs: the agent warns when it has peers and no key.
    #[arg(long, value_name = "FILE")]
    cluster_key_file: Option<PathBuf>,
    /// The Nodes whose agents take part in failover, as a label selector in `kubectl -l`
    /// syntax (e.g. `!node-role.kubernetes.io/control-plane` or `gateway=yes`); default:
    /// every Node. A member without a running agent counts against the quorum.
    #[arg(long, value_name = "SELECTOR", default_value = "")]
    cluster_members: Selector,
    /// With exactly two members, take over the VIPs of a silent one (failover) at the price
    /// of both answering ARP while the link between them is cut. Default: only a drained or
    /// withdrawn VIP moves.
    #[arg(long)]
    cluster_two_node_takeover: bool,
}

impl ClusterArgs {
    fn options(self) -> ClusterOptions {
        ClusterOptions {
            port: self.cluster_port,
            key_file: self.cluster_key_file,
            members: self.cluster_members,
            two_node_takeover: self.cluster_two_node_takeover,
        }
    }
}

/// `MIN-MAX`, both ports, MIN <= MAX.
fn port_range(text: &str) -> Result<(u16, u16), String> {
    let (min, max) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not MIN-MAX"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{p:?} is not a port in 1..=65535"))
    };
    let (min, max) = (port(min)?, port(max)?);
    if min > max {
        return Err(format!("{min} is above {max}"));
    }
    Ok((min, max))
}

#[derive(Args)]
struct ViewArgs {
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    #[command(flatten)]
    output: OutputArg,
}

#[derive(Args)]
struct OutputArg {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

fn print<T: Serialize>(output: Output, view: &T, render: impl Fn(&T) -> String) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(view)?),
        Output::Table => print!("{}", render(view)),
    }
    Ok(())
}

fn view<T: Serialize>(
    args: &ViewArgs,
    collect: impl Fn(&Path, &Maps) -> Result<T>,
    render: impl Fn(&T) -> String,
) -> Result<ExitCode> {
    let maps = Maps::open_pinned(&args.bpffs)?;
    print(args.output.output, &collect(&args.bpffs, &maps)?, render)?;
    Ok(ExitCode::SUCCESS)
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(agent::run(RunOptions {
                origin: args.objects.origin(),
                lease_namespace: args.lease_namespace,
                node_name: args.node_name,
                devices: args.devices,
                bpffs: args.bpffs,
                ct_tcp_timeout: args.ct_tcp_timeout,
                ct_any_timeout: args.ct_any_timeout,
                checksum_helpers: args.checksum_helpers,
                snat_ports: args.snat_ports,
                cgroup: (!args.no_hairpin).then_some(args.cgroup),
                capacity: args.capacity.capacity(),
                classes: args.classes.classes(),
                metrics_address: args.metrics_address,
                cluster: args.cluster.options(),
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            objects,
            node_name,
            classes,
            capacity,
            output,
        } => check::run(&check::Check {
            origin: &objects.origin(),
            node: node_name.as_deref(),
            classes: classes.classes(),
            capacity: capacity.capacity(),
            json: output.output == Output::Json,
        }),
        Command::Status(args) => view(&args, inspect::status, inspect::render_status),
        Command::Lb {
            command: ListCommand::List(args),
        } => view(&args, inspect::services, |v| inspect::render_services(v)),
        Command::Ct {
            command: ListCommand::List(args),
        } => view(
            &args,
            |_, m| inspect::flows(m),
            |v| inspect::render_flows(v),
        ),
        Command::Affinity {
            command: ListCommand::List(args),
        } => view(
            &args,
            |_, m| inspect::affinities(m),
            |v| inspect::render_affinities(v),
        ),
        Command::L2 {
            command: ListCommand::List(args),
        } => view(
            &args,
            |_, m| inspect::announcements(m),
            |v| inspect::render_announcements(v),
        ),
        Command::Doctor {
            config,
            kubeconfig,
            node_name,
            bpffs,
            devices,
            classes,
            output,
        } => doctor::run(
            &doctor::Patient {
                config,
                kubeconfig,
                node_name,
                bpffs: &bpffs,
                devices: &devices,
                classes: classes.classes(),
            },
            output.output == Output::Json,
        ),
        Command::Members(args) => view(&args, |_, m| cluster::members(m), cluster::render_members),
        Command::Drain { bpffs } => {
            println!("{}", cluster::drain(&bpffs, true)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Undrain { bpffs } => {
            println!("{}", cluster::drain(&bpffs, false)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown { bpffs } => {
            for line in datapath::teardown(&bpffs)? {
                println!("removed {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Parses the command line, runs the command, and turns errors into a message and an exit
/// status: 2 when the objects are refused (`check`'s rule), 1 for any other failure.
pub fn main() -> ExitCode {
    // kube-rs logs each failed request itself; the agent says once what failed and why.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,kube_client=off"),
    )
    .init();
    match dispatch(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match check::Verdict::of_error(&e) {
                Some(verdict) => ExitCode::from(verdict.exit_status()),
                None => ExitCode::FAILURE,
            }
        }
    }
}
