//! A minimal Debian root that boots with systemd, made by `debootstrap` and cached under
//! `target/`, for the tests that run the agent under a real systemd (see [`crate::container`]).
//!
//! The root is built in a `.partial` directory and renamed into place only once debootstrap
//! and the fix-ups succeeded, so an interrupted build never passes for a finished one: the
//! next run removes the leftover and starts again. A stamp inside the root records what it
//! was built from (suite, mirror, packages); a root with another stamp is rebuilt. A lock
//! file keeps two processes from building it at once.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, umount2};

/// Packages beyond debootstrap's minimal variant: systemd as init, and procps for
/// `/bin/kill`, which the unit's `ExecReload=` runs.
const PACKAGES: [&str; 3] = ["systemd", "systemd-sysv", "procps"];
/// Where apt keeps the machine's package sources; debootstrap uses the same mirror, the
/// only one a CI machine may be able to reach.
const APT_SOURCES: &str = "/etc/apt/sources.list";
const APT_SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const STAMP: &str = ".gateway-root";

/// The cache directory: `target/debian-root` of this workspace.
fn cache_dir() -> PathBuf {
    let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_crate
        .parent()
        .unwrap_or(tests_crate)
        .join("target")
        .join("debian-root")
}

/// The cached root for this machine's Debian release, built first when missing or stale.
/// Building prints debootstrap's progress and takes a minute or more; afterwards this returns
/// at once.
pub fn bootable_root() -> Result<PathBuf> {
    let suite = host_codename()?;
    let mirror = apt_mirror(&suite)?;
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // As /proc/self/mountinfo names it, for finding what debootstrap left mounted.
    let cache =
        fs::canonicalize(&cache).with_context(|| format!("resolving {}", cache.display()))?;
    let root = cache.join(&suite);
    let stamp = stamp(&suite, &mirror);

    let lock_path = cache.join(format!("{suite}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;

    if fs::read_to_string(root.join(STAMP)).is_ok_and(|s| s == stamp) {
        return Ok(root);
    }
    let partial = cache.join(format!("{suite}.partial"));
    for stale in [&partial, &root] {
        unmount_below(stale)?;
        remove_tree(stale)?;
    }
    println!(
        "building a Debian {suite} root with systemd in {} (from {mirror}; cached for later runs)",
        root.display()
    );
    let status = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", PACKAGES.join(",")),
        ])
        .arg(&suite)
        .arg(&partial)
        .arg(&mirror)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => bail!(
            "debootstrap {suite} {} {mirror} failed ({s}); its log: {}",
            partial.display(),
            partial.join("debootstrap/debootstrap.log").display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("debootstrap is not installed: run `cargo xtask setup`")
        }
        Err(e) => return Err(e).context("running debootstrap"),
    }
    // debootstrap copies the building machine's host name; without one, the container gets
    // the name systemd-nspawn gives it.
    remove_file(&partial.join("etc/hostname"))?;
    fs::write(partial.join(STAMP), &stamp)
        .with_context(|| format!("writing {}", partial.join(STAMP).display()))?;
    fs::rename(&partial, &root)
        .with_context(|| format!("renaming {} to {}", partial.display(), root.display()))?;
    Ok(root)
}

fn stamp(suite: &str, mirror: &str) -> String {
    format!(
        "suite={suite}\nmirror={mirror}\npackages={}\n",
        PACKAGES.join(",")
    )
}

/// debootstrap mounts /proc and /sys (and in some setups binds the machine's /dev) inside
/// the root while it works; one that was interrupted leaves them mounted. Removing the tree
/// with them would reach into the machine's own: unmount them first.
fn unmount_below(path: &Path) -> Result<()> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // The fifth field is the mount point; cache paths need none of mountinfo's escapes.
    let mut mounts: Vec<&Path> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(Path::new)
        .filter(|m| m.starts_with(path))
        .collect();
    // Deepest first, so that nothing is left mounted on a mount that is gone.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for mount in mounts {
        umount2(mount, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {} (left by debootstrap)", mount.display()))?;
    }
    Ok(())
}

fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `VERSION_CODENAME` of /etc/os-release: the release the root is made of.
fn host_codename() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME (not a Debian machine?)")
}

/// The mirror apt on this machine uses for `suite` itself (not -updates or -security).
fn apt_mirror(suite: &str) -> Result<String> {
    let mut files = vec![PathBuf::from(APT_SOURCES)];
    if let Ok(entries) = fs::read_dir(APT_SOURCES_DIR) {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let found = match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => mirror_in_deb822(&text, suite),
            Some("list") => mirror_in_one_line(&text, suite),
            _ => None,
        };
        if let Some(mirror) = found {
            return Ok(mirror);
        }
    }
    bail!(
        "no apt source for Debian {suite} in {APT_SOURCES} or {APT_SOURCES_DIR}/*.{{list,sources}}"
    )
}

/// The first URI of a deb822 stanza (`*.sources`) of type `deb` for `suite`'s main component.
fn mirror_in_deb822(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<&str> {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.split_whitespace().collect())
                })
                .unwrap_or_default()
        };
        if field("Enabled") == ["no"] {
            continue;
        }
        if field("Types").contains(&"deb")
            && field("Suites").contains(&suite)
            && field("Components").contains(&"main")
            && let Some(uri) = field("URIs").first()
        {
            return Some((*uri).to_owned());
        }
    }
    None
}

/// The URI of the first `deb [options] URI SUITE COMPONENTS...` line for `suite`'s main
/// component (`*.list`).
fn mirror_in_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().peekable();
        if words.next()? != "deb" {
            return None;
        }
        // Options may hold spaces (`[ arch=amd64 ]`): skip through the closing bracket.
        if words.peek()?.starts_with('[') {
            while !words.next()?.ends_with(']') {}
        }
        let uri = words.next()?;
        let found_suite = words.next()?;
        (found_suite == suite && words.any(|c| c == "main")).then(|| uri.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_suites_own_mirror_in_deb822_sources() {
        let text = "Types: deb\n# a comment: with a colon\nURIs: http://deb.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb\nURIs: http://security.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_in_deb822(text, "bookworm").as_deref(),
            Some("http://deb.example/debian")
        );
        assert_eq!(mirror_in_deb822(text, "trixie"), None);
        let disabled =
            "Enabled: no\nTypes: deb\nURIs: http://x/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_in_deb822(disabled, "bookworm"), None);
        let sources_only =
            "Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_in_deb822(sources_only, "bookworm"), None);
    }

    #[test]
    fn finds_the_suites_own_mirror_in_one_line_sources() {
        let text = "deb http://security.example/debian-security bookworm-security main\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [ arch=amd64 signed-by=/k.gpg ] http://deb.example/debian bookworm main contrib\n";
        assert_eq!(
            mirror_in_one_line(text, "bookworm").as_deref(),
            Some("http://deb.example/debian")
        );
        assert_eq!(
            mirror_in_one_line(
                "deb [arch=amd64] http://a/debian bookworm main\n",
                "bookworm"
            )
            .as_deref(),
            Some("http://a/debian")
        );
        assert_eq!(
            mirror_in_one_line("deb http://a/debian bookworm contrib\n", "bookworm"),
            None
        );
    }
}
