//! The file source's input to the run loop: the file's directory watched with inotify, a
//! change acted on once the file has settled (`watch.rs`), and only when the file's
//! documents differ from the ones applied.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use inotify::EventStream;
use log::warn;
use tokio::time::{Instant, sleep_until};

use super::watch::{self, FileText};
use crate::source::file;

/// Changes of the file, as the run loop waits for them.
pub(super) struct FileWatch {
    path: PathBuf,
    /// `None` when the directory cannot be watched: SIGHUP still reloads.
    events: Option<EventStream<Vec<u8>>>,
    /// When a change in the file's directory is looked at.
    settled: Option<Instant>,
}

impl FileWatch {
    pub(super) fn new(path: &Path) -> Self {
        let events = match watch::watch(path) {
            Ok(events) => Some(events),
            Err(e) => {
                warn!("not watching for changes (SIGHUP still reloads): {e:#}");
                None
            }
        };
        Self {
            path: path.to_owned(),
            events,
            settled: None,
        }
    }

    /// Waits until the file's documents differ from those `applied` (their digest) and the
    /// file has settled: its text, as read then, or `None` when it cannot be read (the
    /// reload reads it again and says why). Cancel-safe: a wait cut short resumes where it
    /// was.
    pub(super) async fn changed(&mut self, applied: Option<u64>) -> Option<String> {
        loop {
            let Some(events) = self.events.as_mut() else {
                return std::future::pending().await;
            };
            match self.settled {
                None => {
                    if events.next().await.is_none() {
                        self.events = None;
                        continue;
                    }
                    self.settled = Some(Instant::now() + watch::SETTLE);
                }
                Some(at) => {
                    tokio::select! {
                        event = events.next() => match event {
                            Some(_) => self.settled = Some(Instant::now() + watch::SETTLE),
                            None => self.events = None,
                        },
                        _ = sleep_until(at) => {
                            self.settled = None;
                            match watch::read_settled(&self.path) {
                                // Still being written: a half-written file must never be
                                // served.
                                Ok(FileText::Unsettled(wait)) => {
                                    self.settled = Some(Instant::now() + wait);
                                }
                                // Unrelated events in the directory change nothing.
                                Ok(FileText::Settled(text)) => {
                                    if Some(file::digest(&text)) != applied {
                                        return Some(text);
                                    }
                                }
                                Err(_) => return None,
                            }
                        }
                    }
                }
            }
        }
    }
}
