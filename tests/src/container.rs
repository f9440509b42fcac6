//! A Debian root booted with a real systemd as PID 1 by `systemd-nspawn -b`, in a network
//! namespace the test made (a lab node's), for running units as an operator would.
//!
//! This machine's PID 1 is not systemd, so nspawn runs unregistered (`--register=no
//! --keep-unit`: no machined, so `machinectl` and `systemd-run -M` cannot reach it; commands
//! run inside through `nsenter`), with the legacy cgroup layout this kernel's hierarchies
//! need, in a cgroup of its own below the test's so that the container's systemd builds
//! its tree there and nowhere else. The root is booted `--volatile=overlay`: it is mounted
//! read-only under a tmpfs, so everything the test installs vanishes with the container and
//! the cached root stays as debootstrap made it. Dropping a [`Container`] powers it off (or
//! kills it) and removes its cgroups, also when the test fails.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::{NETNS_DIR, Netns};
use crate::process::{self, Process};

/// Booting a minimal Debian takes a few seconds; a loaded CI machine far longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// A clean poweroff takes about two seconds here.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
/// No single systemctl or journalctl call should take longer than this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// What commands run inside see as PATH (nsenter passes the caller's environment on).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Journal lines quoted in a failure report.
const REPORT_LINES: &str = "60";

/// A directory of the machine made visible inside the container.
pub struct Bind<'a> {
    pub outside: &'a Path,
    pub inside: &'a str,
    pub read_only: bool,
}

/// What to boot, where.
pub struct ContainerSpec<'a> {
    /// The machine name (letters, digits, '-'), also naming its cgroup and log.
    pub name: &'a str,
    /// The container's host name, which units see as `%H`.
    pub hostname: &'a str,
    pub root: &'a Path,
    /// The network namespace the container lives in.
    pub netns: &'a Netns,
    pub binds: &'a [Bind<'a>],
    /// Capabilities beyond nspawn's default set (e.g. `CAP_BPF`).
    pub capabilities: &'a [&'a str],
    /// System calls beyond nspawn's default filter (e.g. `bpf`).
    pub system_calls: &'a [&'a str],
    /// Where nspawn's output and the container's console go.
    pub log: &'a Path,
}

/// A booted container; powered off when dropped.
pub struct Container {
    name: String,
    nspawn: Process,
    /// The container's PID 1 (systemd) as this machine sees it.
    init: u32,
    cgroups: Vec<PathBuf>,
}

impl Container {
    /// Boots `spec.root` and returns once the container's systemd has finished starting up.
    /// On any error, what was started is stopped again before the error is returned.
    pub fn boot(spec: &ContainerSpec) -> Result<Self> {
        let cgroups = Cgroups::create(&format!("gateway-test-{}", spec.name))?;
        let procs: Vec<String> = cgroups
            .0
            .iter()
            .map(|dir| format!("echo 0 > {}", dir.join("cgroup.procs").display()))
            .collect();
        // The shell moves itself into the cgroups, then becomes nspawn.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{} && exec \"$@\"", procs.join(" && ")))
            .arg("sh")
            .arg("systemd-nspawn")
            .args(nspawn_args(spec)?)
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "0");
        let nspawn = Process::spawn(cmd, &format!("systemd-nspawn {}", spec.name), spec.log)?;
        let mut container = Self {
            name: spec.name.to_owned(),
            nspawn,
            init: 0,
            cgroups: cgroups.disarm(),
        };
        container.init = container.wait_for_init()?;
        container.wait_until_booted()?;
        Ok(container)
    }

    /// `nsenter -t PID -a args...`: in all the container's namespaces, at its root, with a
    /// plain PATH and nothing else of this process's environment.
    pub fn command<I>(&self, args: I) -> Command
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        cmd.env_clear()
            .env("PATH", PATH)
            .args(["-t", &self.init.to_string(), "-a"])
            .args(args);
        cmd
    }

    /// Runs `args` inside and returns its output whatever its exit status.
    pub fn exec<I>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        process::output_within(&mut self.command(args), COMMAND_TIMEOUT)
    }

    /// Runs `args` inside and returns stdout; a failing exit is an error quoting stderr.
    pub fn run<I>(&self, args: I) -> Result<String>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        let output = process::output_within(&mut cmd, COMMAND_TIMEOUT)?;
        process::stdout_of(&cmd, output)
    }

    /// Runs a shell script inside (`sh -e -c SCRIPT`); returns stdout.
    pub fn shell(&self, script: &str) -> Result<String> {
        self.run(["sh", "-e", "-c", script])
    }

    /// `systemctl ARGS` inside; returns stdout.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["systemctl", "--no-pager"];
        all.extend(args);
        self.run(all)
    }

    /// One property of `unit` (`systemctl show -P`).
    pub fn property(&self, unit: &str, name: &str) -> Result<String> {
        Ok(self
            .systemctl(&["show", "-P", name, unit])?
            .trim()
            .to_owned())
    }

    /// The messages `unit` logged (`journalctl -u UNIT -o cat`), oldest first.
    pub fn journal(&self, unit: &str) -> Result<String> {
        self.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit])
    }

    /// What an operator looks at when `unit` misbehaves: `systemctl status` and the end of
    /// its journal, for failure messages. Never fails: what cannot be read says why.
    pub fn report(&self, unit: &str) -> String {
        let said = |args: &[&str]| match self.exec(args) {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("({e:#})\n"),
        };
        format!(
            "--- systemctl status {unit} (in container {}):\n{}--- journalctl -u {unit}:\n{}",
            self.name,
            said(&["systemctl", "--no-pager", "--full", "status", unit]),
            said(&["journalctl", "--no-pager", "-n", REPORT_LINES, "-u", unit]),
        )
    }

    /// Where `path` inside the container is reachable from outside (through its PID 1's
    /// root), e.g. to edit a file as an operator on the node would.
    pub fn path(&self, path: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.init)).join(path.trim_start_matches('/'))
    }

    /// The child of nspawn that became the container's PID 1, once it runs systemd (it
    /// execs systemd only after it has set up the container's root, so commands entering
    /// its namespaces before then would see nspawn's half-built mounts).
    fn wait_for_init(&mut self) -> Result<u32> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            self.nspawn.ensure_running()?;
            if let Some(pid) = child_running(self.nspawn.pid(), "systemd")? {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {}: systemd did not start within {BOOT_TIMEOUT:?}; nspawn's log:\n{}",
                    self.name,
                    self.nspawn.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_booted(&mut self) -> Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            self.nspawn.ensure_running()?;
            // Fails until systemd listens on its private socket; then waits for the boot.
            let out = self.exec(["systemctl", "is-system-running", "--wait"])?;
            match String::from_utf8_lossy(&out.stdout).trim() {
                "running" => return Ok(()),
                // The container boots, but something in it failed: say what, and go on (the
                // tests look at their own units).
                "degraded" => {
                    let failed = self.exec(["systemctl", "--no-pager", "--failed"])?;
                    eprintln!(
                        "note: container {} booted degraded:\n{}",
                        self.name,
                        String::from_utf8_lossy(&failed.stdout)
                    );
                    return Ok(());
                }
                _ => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "container {} did not finish booting within {BOOT_TIMEOUT:?}: {}{}\nnspawn's log:\n{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.nspawn.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM to nspawn asks the container's systemd to power off; if that hangs, killing
    /// its PID 1 ends every process of its PID namespace.
    fn power_off(&mut self) {
        if !matches!(self.nspawn.exit_status(), Ok(None)) {
            return;
        }
        let _ = kill(Pid::from_raw(self.nspawn.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        while matches!(self.nspawn.exit_status(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.nspawn.exit_status(), Ok(None)) {
            eprintln!(
                "warning: container {} did not power off within {POWEROFF_TIMEOUT:?}: killing it",
                self.name
            );
            if self.init != 0 {
                let _ = kill(Pid::from_raw(self.init as i32), Signal::SIGKILL);
            }
        }
        self.nspawn.stop();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.power_off();
        if let Err(e) = Cgroups(std::mem::take(&mut self.cgroups)).remove() {
            eprintln!("warning: container {}: {e:#}", self.name);
        }
    }
}

fn nspawn_args(spec: &ContainerSpec) -> Result<Vec<String>> {
    let netns = Path::new(NETNS_DIR).join(spec.netns.name());
    let mut args = vec![
        "--boot".to_owned(),
        format!("--directory={}", spec.root.display()),
        "--volatile=overlay".into(),
        "--register=no".into(),
        "--keep-unit".into(),
        format!("--machine={}", spec.name),
        format!("--hostname={}", spec.hostname),
        format!("--network-namespace-path={}", netns.display()),
        "--console=read-only".into(),
    ];
    for bind in spec.binds {
        let kind = if bind.read_only { "bind-ro" } else { "bind" };
        fs::metadata(bind.outside)
            .with_context(|| format!("container {}: {}", spec.name, bind.outside.display()))?;
        args.push(format!(
            "--{kind}={}:{}",
            bind.outside.display(),
            bind.inside
        ));
    }
    if !spec.capabilities.is_empty() {
        args.push(format!("--capability={}", spec.capabilities.join(",")));
    }
    if !spec.system_calls.is_empty() {
        args.push(format!(
            "--system-call-filter={}",
            spec.system_calls.join(" ")
        ));
    }
    Ok(args)
}

/// The child of `parent` whose command is `comm` and which runs in another PID namespace.
fn child_running(parent: u32, comm: &str) -> Result<Option<u32>> {
    let own_pidns = fs::metadata("/proc/self/ns/pid")
        .context("stat /proc/self/ns/pid")?
        .ino();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look: whatever cannot be read is not it.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        let name = head.split_once('(').map(|(_, n)| n);
        let pidns = fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| m.ino());
        if ppid == Some(parent) && name == Some(comm) && pidns.is_ok_and(|ns| ns != own_pidns) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// The container's cgroups: one below this process's own in each hierarchy nspawn uses
/// with the legacy layout (`name=systemd`, and the unified one beside it). Removed with
/// everything the container's systemd made below them.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn create(name: &str) -> Result<Self> {
        let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mut cgroups = Self(Vec::new());
        for line in own.lines() {
            // `ID:CONTROLLERS:PATH`; the unified hierarchy has ID 0 and no controllers.
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let mount = match (id, controllers) {
                ("0", "") => mount_point(&mountinfo, |fstype, _| fstype == "cgroup2"),
                (_, "name=systemd") => mount_point(&mountinfo, |fstype, options| {
                    fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd")
                }),
                _ => continue,
            };
            let Some(mount) = mount else { continue };
            let dir = mount.join(path.trim_start_matches('/')).join(name);
            if let Err(e) = fs::create_dir(&dir) {
                // A leftover of a run that was killed: empty, or the rmdir below says why.
                if e.kind() != ErrorKind::AlreadyExists {
                    cgroups.remove()?;
                    return Err(e).with_context(|| format!("creating cgroup {}", dir.display()));
                }
            }
            cgroups.0.push(dir);
        }
        if cgroups.0.is_empty() {
            bail!("no name=systemd or unified cgroup hierarchy in /proc/self/cgroup:\n{own}");
        }
        Ok(cgroups)
    }

    fn disarm(mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0)
    }

    /// Removes the cgroups, deepest first; they must hold no process any more.
    fn remove(mut self) -> Result<()> {
        let mut failures = Vec::new();
        for dir in std::mem::take(&mut self.0) {
            let mut tree = Vec::new();
            collect_dirs(&dir, &mut tree);
            for d in tree.iter().rev() {
                match fs::remove_dir(d) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        failures.push(format!("removing cgroup {}: {e}", d.display()))
                    }
                    _ => {}
                }
            }
        }
        match failures.as_slice() {
            [] => Ok(()),
            _ => bail!("{}", failures.join("; ")),
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        if !self.0.is_empty()
            && let Err(e) = Self(std::mem::take(&mut self.0)).remove()
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// `dir` and every directory below it, parents before children.
fn collect_dirs(dir: &Path, into: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    into.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), into);
            }
        }
    }
}

/// The mount point of the first mount in `mountinfo` whose file system type and super
/// options match.
pub(crate) fn mount_point(
    mountinfo: &str,
    matches: impl Fn(&str, &str) -> bool,
) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `... MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
        let (head, tail) = line.split_once(" - ")?;
        let mount_point = head.split(' ').nth(4)?;
        let mut tail = tail.split(' ');
        let fstype = tail.next()?;
        let super_options = tail.nth(1).unwrap_or_default();
        matches(fstype, super_options).then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
38 35 0:33 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_the_hierarchies_nspawn_uses() {
        assert_eq!(
            mount_point(MOUNTINFO, |t, _| t == "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mount_point(MOUNTINFO, |t, o| t == "cgroup"
                && o.split(',').any(|o| o == "name=systemd")),
            Some(PathBuf::from("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(mount_point(MOUNTINFO, |t, _| t == "bpf"), None);
    }
}
