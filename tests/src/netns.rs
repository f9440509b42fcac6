//! One named network namespace (`ip netns`), deleted together with its processes when the
//! owning guard drops.

use std::ffi::OsStr;
use std::fs;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{self, Process};

/// How long killed processes get to leave a namespace before deleting it is refused.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a spawned command may take to enter its namespace.
const ENTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Where `ip netns` keeps its namespace files.
pub(crate) const NETNS_DIR: &str = "/run/netns";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace. Commands run in it through `ip netns exec`, which also gives them
/// the namespace's own /sys, as on a real node.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Whether dropping this handle deletes the namespace. The lab's namespaces are not
    /// owned by their handles: the lab removes them all by prefix, also from a fresh process.
    owned: bool,
}

impl Netns {
    /// Creates a namespace named `{prefix}-{pid}-{n}`, unique across parallel tests and
    /// processes, deleted with its processes on drop.
    pub fn new(prefix: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self::add(&format!("{prefix}-{}-{id}", std::process::id()), true)
    }

    /// Creates namespace `name` with loopback up; `owned` says whether the handle deletes it.
    pub(crate) fn add(name: &str, owned: bool) -> Result<Self> {
        process::checked(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
            owned,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, for a thread to enter it (`setns`).
    pub fn path(&self) -> std::path::PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip netns exec NAME args...`, not yet started.
    pub fn command<I>(&self, args: I) -> Command
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` in the namespace and returns its output whatever its exit status.
    pub fn exec<I>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start `{}`", process::display(&cmd)))
    }

    /// Runs `args` in the namespace and returns stdout; failing exits are errors with stderr.
    pub fn run<I>(&self, args: I) -> Result<String>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        process::checked(&mut self.command(args))
    }

    /// `ip -n NAME args...`: netlink only, cheaper than a full `ip netns exec`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        process::checked(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets sysctls inside the namespace (net.* keys are per namespace).
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        let assignments = settings.iter().map(|(key, value)| format!("{key}={value}"));
        let mut cmd = self.command(["sysctl", "-q", "-w"]);
        cmd.args(assignments);
        process::checked(&mut cmd)?;
        Ok(())
    }

    /// Starts a long-lived command in the namespace, logging to `log`; it is killed when
    /// the returned guard drops. Returns once the command is inside the namespace, so that
    /// killing the namespace's processes cannot miss it.
    pub fn spawn<I>(&self, args: I, name: &str, log: &Path) -> Result<Process>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut child = Process::spawn(self.command(args), name, log)?;
        let ns = Path::new(NETNS_DIR).join(&self.name);
        let ns_inode = fs::metadata(&ns)
            .with_context(|| format!("stat {}", ns.display()))?
            .ino();
        let child_ns = format!("/proc/{}/ns/net", child.pid());
        let deadline = Instant::now() + ENTER_TIMEOUT;
        // `ip netns exec` forks first and enters the namespace after: until then the
        // child is still in ours.
        while fs::metadata(&child_ns).map(|m| m.ino()).ok() != Some(ns_inode) {
            child.ensure_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{name} did not enter network namespace {} within {ENTER_TIMEOUT:?}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(child)
    }

    /// Opens a TCP connection from inside the namespace. The socket is created on a thread
    /// that entered the namespace (setns is per thread), and keeps that namespace for its
    /// whole life, wherever it is used afterwards.
    pub fn connect_tcp(&self, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.in_namespace(|| {
            TcpStream::connect_timeout(&to, timeout)
                .with_context(|| format!("connecting to {to} from {}", self.name))
        })
    }

    /// A UDP socket bound to `local` inside the namespace (see [`Netns::connect_tcp`]).
    pub fn bind_udp(&self, local: SocketAddr) -> Result<UdpSocket> {
        self.in_namespace(|| {
            UdpSocket::bind(local).with_context(|| format!("binding {local} in {}", self.name))
        })
    }

    /// Runs `f` on a thread that entered this network namespace.
    fn in_namespace<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        thread::scope(|s| {
            s.spawn(|| {
                let ns =
                    fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                setns(ns, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {}", self.name))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {} panicked", self.name))?
        })
    }

    /// Processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = delete(&self.name)
        {
            eprintln!("warning: deleting network namespace {}: {e:#}", self.name);
        }
    }
}

/// Names of all named network namespaces.
pub fn list() -> Result<Vec<String>> {
    let out = process::checked(Command::new("ip").args(["netns", "list"]))?;
    // Lines look like "name (id: 3)" or just "name".
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn pids(name: &str) -> Result<Vec<i32>> {
    let out = process::checked(Command::new("ip").args(["netns", "pids", name]))?;
    out.split_whitespace()
        .map(|pid| {
            pid.parse()
                .with_context(|| format!("`ip netns pids {name}` printed {pid:?}"))
        })
        .collect()
}

/// Kills every process in namespace `name` and waits until none is left: a namespace that
/// still holds processes outlives `ip netns del`, and so would their sockets and mounts.
pub fn kill_all(name: &str) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = pids(name)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} are still in network namespace {name} after SIGKILL");
        }
        for pid in pids {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(e).with_context(|| format!("killing pid {pid} in {name}")),
            }
        }
        // SIGKILL is asynchronous: poll until the kernel has let them go.
        thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the processes in namespace `name`, then deletes it.
pub fn delete(name: &str) -> Result<()> {
    kill_all(name)?;
    process::checked(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}
