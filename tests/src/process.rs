//! Running external commands: one-shot commands whose failures quote stderr, and
//! long-lived servers that die, with everything they started, when their guard drops.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long a stopped process may take to exit on SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The command line as a person would type it, for error messages.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an error quoting stderr.
pub fn checked(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    stdout_of(cmd, output)
}

/// The stdout of a finished command, or an error quoting what it said when it failed.
pub fn stdout_of(cmd: &Command, output: Output) -> Result<String> {
    if !output.status.success() {
        // Some tools (ping, curl -s) say why only on stdout.
        let said = match String::from_utf8_lossy(&output.stderr).trim() {
            "" => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            stderr => stderr.to_owned(),
        };
        bail!("`{}` failed ({}): {said}", display(cmd), output.status);
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Like [`Command::output`], but kills the command (and what it started) after `timeout`,
/// so a hung helper fails the caller instead of hanging the whole test run.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    let pgid = pid_of(&child);
    let (done, finished) = mpsc::channel();
    // wait_with_output drains both pipes while waiting; a thread lets us bound the wait.
    thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(timeout) {
        Ok(output) => output.with_context(|| format!("waiting for `{}`", display(cmd))),
        Err(_) => {
            // The group may already be gone; either way the command is over.
            let _ = killpg(pgid, Signal::SIGKILL);
            bail!("`{}` did not finish within {timeout:?}", display(cmd))
        }
    }
}

fn pid_of(child: &Child) -> Pid {
    // Linux pids fit in i32 (pid_max <= 2^22).
    Pid::from_raw(child.id() as i32)
}

/// A long-lived command (a server, an agent) with stdout and stderr appended to a log file.
///
/// It runs in its own process group, and dropping the guard stops that whole group (nginx's
/// workers go with their master) and reaps it.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
    detached: bool,
}

impl Process {
    /// Starts `cmd` as `name`, logging to `log` (created with its parent directories).
    pub fn spawn(mut cmd: Command, name: &str, log: &Path) -> Result<Self> {
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}: `{}`", display(&cmd)))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            exited: None,
            detached: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process has written so far (empty when the log cannot be read), for
    /// failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited, `None` while it runs.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("polling {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Stops the process group and reaps the process: SIGTERM first, so that a server like
    /// nginx reaps its own workers (orphans would become zombies wherever init does not
    /// reap), then SIGKILL for whatever is left after a grace period. Idempotent.
    pub fn stop(&mut self) {
        // A pid reaped earlier may have been reused by now: leave such a group alone.
        if !matches!(self.exit_status(), Ok(None)) {
            return;
        }
        let group = pid_of(&self.child);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(self.exit_status(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        // Also reaches members that outlived their leader (reaped only milliseconds ago,
        // so its pid cannot have been reused yet).
        let _ = killpg(group, Signal::SIGKILL);
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
    }

    /// Leaves the process running after the guard is gone (for a lab that persists).
    pub(crate) fn detach(mut self) {
        self.detached = true;
    }

    /// Fails with the log's contents when the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exit_status()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                self.log()
            ),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.detached {
            self.stop();
        }
    }
}
