//! The file's watch, and when a change of it has settled enough to be read.
//!
//! Editors, `>` in a shell and `std::fs::write` rewrite a file in place: they truncate it,
//! then write the new text. A read between the two sees an empty (or partial) file, which
//! is valid YAML: the agent would serve nothing for a moment and end every flow it tracks.
//! The watch's events come at a close or a rename, not at the truncation, so the quiet
//! time after an event says nothing about a write that began since. The file's own
//! modification time does: a change is read only once the file has not been modified for
//! [`SETTLE`], and that is checked after reading it, so a write that began before or during
//! the read is never taken for the file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use inotify::{EventStream, Inotify, WatchMask};

/// Editors write a file in several steps: act once it has been quiet this long.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Watches the file's directory: editors replace the file, Kubernetes swaps a symlink to
/// a new ConfigMap revision; both show there.
pub fn watch(path: &Path) -> Result<EventStream<Vec<u8>>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let inotify = Inotify::init().context("inotify")?;
    inotify
        .watches()
        .add(
            dir,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE,
        )
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(inotify.into_event_stream(vec![0; 4096])?)
}

/// The file, read once it has settled.
#[derive(Debug, PartialEq, Eq)]
pub enum FileText {
    /// Not modified for [`SETTLE`] up to after it was read: its text.
    Settled(String),
    /// Modified this recently: read again after this long.
    Unsettled(Duration),
}

/// Reads the file at `path` (following symlinks, as Kubernetes' ConfigMap volumes have
/// them) if it has settled.
pub fn read_settled(path: &Path) -> Result<FileText> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // After the read: a write that began before it or during it shows here.
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the modification time of {}", path.display()))?;
    Ok(match unsettled_for(modified, SystemTime::now()) {
        Some(wait) => FileText::Unsettled(wait),
        None => FileText::Settled(text),
    })
}

/// How much longer a file modified at `modified` is unsettled at `now`; `None` once it has
/// been quiet for [`SETTLE`]. A time after `now` (the clock was set back) tells nothing:
/// settled, so that a reload is never put off for as long as the clock moved.
fn unsettled_for(modified: SystemTime, now: SystemTime) -> Option<Duration> {
    let quiet = now.duration_since(modified).ok()?;
    SETTLE.checked_sub(quiet).filter(|wait| !wait.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, FileTimes};

    #[test]
    fn a_file_is_settled_once_it_has_been_quiet_for_the_settle_time() {
        let now = SystemTime::now();
        let ms = Duration::from_millis;
        assert_eq!(unsettled_for(now, now), Some(SETTLE));
        assert_eq!(unsettled_for(now - ms(50), now), Some(SETTLE - ms(50)));
        assert_eq!(unsettled_for(now - SETTLE, now), None);
        assert_eq!(unsettled_for(now - ms(5000), now), None);
        // The clock was set back since: not put off.
        assert_eq!(unsettled_for(now + ms(3_600_000), now), None);
    }

    /// A file in a fresh directory of the test's own, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("gateway-agent-watch-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set_modified(path: &Path, at: SystemTime) {
        let file = File::options().write(true).open(path).unwrap();
        file.set_times(FileTimes::new().set_modified(at)).unwrap();
    }

    #[test]
    fn a_file_rewritten_in_place_is_not_read_until_it_settles() {
        let scratch = Scratch::new("in-place");
        let path = scratch.0.join("objects.yaml");
        std::fs::write(&path, "kind: Node\n").unwrap();
        set_modified(&path, SystemTime::now() - Duration::from_secs(10));
        assert_eq!(
            read_settled(&path).unwrap(),
            FileText::Settled("kind: Node\n".into())
        );
        // An in-place rewrite has begun: truncated, the new text not written yet. Empty is
        // valid YAML (no objects at all): it must not be taken for the file.
        File::create(&path).unwrap();
        let FileText::Unsettled(wait) = read_settled(&path).unwrap() else {
            panic!("a file truncated just now was read")
        };
        assert!(wait <= SETTLE, "{wait:?}");
    }

    #[test]
    fn a_symlinked_file_settles_by_its_target() {
        // Kubernetes' ConfigMap volume: objects.yaml -> ..data/objects.yaml, ..data -> a
        // revision's directory.
        let scratch = Scratch::new("symlink");
        let revision = scratch.0.join("..2026_01_01");
        std::fs::create_dir(&revision).unwrap();
        std::fs::write(revision.join("objects.yaml"), "kind: Node\n").unwrap();
        set_modified(
            &revision.join("objects.yaml"),
            SystemTime::now() - Duration::from_secs(10),
        );
        std::os::unix::fs::symlink("..2026_01_01", scratch.0.join("..data")).unwrap();
        let path = scratch.0.join("objects.yaml");
        std::os::unix::fs::symlink("..data/objects.yaml", &path).unwrap();
        assert_eq!(
            read_settled(&path).unwrap(),
            FileText::Settled("kind: Node\n".into())
        );
    }
}
