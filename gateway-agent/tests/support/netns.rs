//! The test thread's own network namespace, where BPF_PROG_TEST_RUN's helpers look: the
//! datapath's FIB lookups (flows SNATed to another node, their replies) then see a node's
//! uplink and routes, and never the machine's own tables.
//!
//! The uplink is a veth pair `up0`/`up1` in that namespace: `up0` holds the node's address
//! on the segment, a route sends the other node's pods via that node, and the client and
//! the other node have permanent neighbour entries (the second client address has none, so
//! its replies take `bpf_redirect_neigh`). Nothing leaves the namespace: test runs send no
//! frame, and the namespace goes with the thread.

use std::cell::OnceCell;
use std::process::Command;

use nix::sched::{CloneFlags, unshare};

use super::{CLIENT, CLIENT_MAC, NODE, NODE_MAC, POD_REMOTE_CIDR, REMOTE_NODE, REMOTE_NODE_MAC};

/// The node's uplink in the test namespace.
pub const UPLINK: &str = "up0";

thread_local! {
    static UPLINK_INDEX: OnceCell<u32> = const { OnceCell::new() };
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}

fn addr(bytes: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(bytes).to_string()
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves this thread into a namespace of its own with the uplink set up (once per thread);
/// returns the uplink's ifindex. Commands the thread starts run in it too.
pub fn enter() -> u32 {
    UPLINK_INDEX.with(|index| {
        *index.get_or_init(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("a network namespace of its own (root)");
            let node = format!("{}/24", addr(NODE));
            let steps: [&[&str]; 8] = [
                &["link", "set", "lo", "up"],
                &[
                    "link",
                    "add",
                    UPLINK,
                    "address",
                    &mac(NODE_MAC),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "up1",
                ],
                &["link", "set", "up1", "up"],
                &["link", "set", UPLINK, "up"],
                &["addr", "add", &node, "dev", UPLINK],
                &["route", "add", POD_REMOTE_CIDR, "via", &addr(REMOTE_NODE)],
                &[
                    "neigh",
                    "replace",
                    &addr(CLIENT),
                    "lladdr",
                    &mac(CLIENT_MAC),
                    "dev",
                    UPLINK,
                    "nud",
                    "permanent",
                ],
                &[
                    "neigh",
                    "replace",
                    &addr(REMOTE_NODE),
                    "lladdr",
                    &mac(REMOTE_NODE_MAC),
                    "dev",
                    UPLINK,
                    "nud",
                    "permanent",
                ],
            ];
            for step in steps {
                run("ip", step);
            }
            // A node forwards: the FIB lookup of a forwarded frame requires it.
            run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            // /sys shows the namespace of whoever mounted it, not this thread's: ask `ip`.
            let out = Command::new("ip")
                .args(["-o", "link", "show", UPLINK])
                .output()
                .expect("ip link show");
            let text = String::from_utf8_lossy(&out.stdout);
            text.split(':')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no ifindex in {text:?}"))
        })
    })
}
