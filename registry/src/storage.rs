//! Durable storage: an append-only log of registry events in the data directory.
//!
//! Each entry is `[len: u32 LE][crc32 of payload: u32 LE][payload: JSON event]`. An append
//! is fsynced before the write is acknowledged. On open the log is replayed; a torn last
//! entry (a crash mid-append: short, or failing its checksum) is cut off and reported, and
//! everything before it is kept. Damage with a whole entry after it is not a torn write:
//! the registry refuses to start and names the offset, rather than drop what follows.
//!
//! An append that fails (disk full, a file-size limit) is rolled back to the last good
//! length, so a failed write never leaves a partial entry for the next start to trip on; if
//! even the rollback fails, the log refuses further writes until a restart re-reads it. An
//! entry too large to be read back is refused before it is written. The data directory is
//! locked (`registry.lock`): a second process on it refuses to start.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest entry accepted when replaying (a sanity bound against a corrupt length).
const MAX_ENTRY: u32 = 64 << 20;

/// One state change. The log is the registry's source of truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A schema got a global id (first time this canonical form was seen).
    Schema {
        /// Global id.
        id: u32,
        /// The schema as first registered (compact JSON).
        schema: String,
    },
    /// A subject got a new version pointing at a schema id.
    Version {
        /// Subject name.
        subject: String,
        /// Version number (1-based, increasing).
        version: u32,
        /// Schema id.
        id: u32,
    },
    /// A version was deleted (soft first, then optionally permanently).
    DeleteVersion {
        /// Subject name.
        subject: String,
        /// Version number.
        version: u32,
        /// Whether it is gone for good.
        permanent: bool,
    },
    /// Compatibility level set (`Some`) or removed (`None`), globally or for a subject.
    Config {
        /// `None` for the global level.
        subject: Option<String>,
        /// The level.
        level: Option<String>,
    },
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// I/O on the log file.
    #[error("registry log {path}: {source}")]
    Io {
        /// The log file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "{dir} is in use by another registry process (it holds {dir}/registry.lock); stop that process or give this one its own --data-dir"
    )]
    Locked {
        /// The data directory.
        dir: String,
    },
    /// The entry is larger than the log can read back.
    #[error("a registry log entry of {size} bytes is over the {max}-byte limit; refused")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// An earlier append failed and could not be rolled back.
    #[error(
        "registry log {path} is read-only after a failed write that could not be undone; restart the registry"
    )]
    Poisoned {
        /// The log file.
        path: String,
    },
    /// An entry in the middle of the log is unreadable (not a torn tail).
    #[error("registry log {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The log file.
        path: String,
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
}

/// The payload length in the header at the start of `rest`, if a header is there.
fn entry_len(rest: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    Some(len as usize)
}

/// The event whose entry starts at byte `at`, or why there is none.
fn entry_at(bytes: &[u8], at: usize) -> Result<Event, String> {
    let rest = &bytes[at..];
    if rest.len() < 8 {
        return Err("the entry's header is cut short".into());
    }
    let len = entry_len(rest).expect("8 bytes");
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len > MAX_ENTRY as usize {
        return Err(format!(
            "the entry's length {len} is over the {MAX_ENTRY}-byte limit"
        ));
    }
    let Some(payload) = rest.get(8..8 + len) else {
        return Err(format!(
            "the entry's length {len} runs past the end of the file"
        ));
    };
    if crc32fast::hash(payload) != crc {
        return Err("the entry's checksum does not match".into());
    }
    serde_json::from_slice(payload).map_err(|e| format!("the entry is not an event: {e}"))
}

/// The open log, positioned for appends.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: File,
    /// Length of the log up to its last good entry.
    len: u64,
    poisoned: bool,
    /// Held for the life of the log: the directory's lock.
    _lock: File,
}

impl Log {
    /// Open (or create) `dir/registry.log`, returning it with every event it holds.
    pub fn open(dir: &Path) -> Result<(Log, Vec<Event>), StorageError> {
        let path = dir.join("registry.log");
        let io = |source| StorageError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("registry.lock"))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    dir: dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut events = Vec::new();
        let mut at = 0usize;
        let good_end = loop {
            if at == bytes.len() {
                break at;
            }
            let event = match entry_at(&bytes, at) {
                Ok(event) => event,
                Err(reason) => {
                    // A torn write can only be the last thing in the file. If a whole,
                    // checksummed entry follows, the damage is in the middle: cutting there
                    // would drop registrations and let their ids be given out again.
                    if let Some(next) = (at + 1..bytes.len()).find(|&p| entry_at(&bytes, p).is_ok())
                    {
                        return Err(StorageError::Corrupt {
                            path: path.display().to_string(),
                            offset: at as u64,
                            reason: format!(
                                "{reason}, and a whole entry follows at byte {next}; restore the data directory from a backup (truncating the log at byte {at} would drop the schemas registered after it and reuse their ids)"
                            ),
                        });
                    }
                    break at;
                }
            };
            events.push(event);
            at += 8 + entry_len(&bytes[at..]).expect("a read entry has a header");
        };
        if good_end < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - good_end,
                "registry log ends in a torn write (a crash mid-append); ignoring it"
            );
            file.set_len(good_end as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((
            Log {
                path,
                file,
                len,
                poisoned: false,
                _lock: lock,
            },
            events,
        ))
    }

    /// Append events and fsync; when this returns `Ok` they survive a crash. On `Err`
    /// nothing of them is in the log.
    pub fn append(&mut self, events: &[Event]) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned {
                path: self.path.display().to_string(),
            });
        }
        let mut buf = Vec::new();
        for e in events {
            let payload = serde_json::to_vec(e).expect("events serialise");
            if payload.len() > MAX_ENTRY as usize {
                return Err(StorageError::TooLarge {
                    size: payload.len(),
                    max: MAX_ENTRY,
                });
            }
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        let io = |source| StorageError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let undone = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                if let Err(undo) = undone {
                    tracing::error!(path = %self.path.display(), error = %undo, "cannot roll back a failed registry log append; refusing further writes");
                    self.poisoned = true;
                }
                Err(io(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> Event {
        Event::Schema {
            id: i,
            schema: format!("\"s{i}\""),
        }
    }

    #[test]
    fn replays_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, events) = Log::open(dir.path()).unwrap();
        assert!(events.is_empty());
        log.append(&[ev(1), ev(2)]).unwrap();
        log.append(&[ev(3)]).unwrap();
        drop(log);
        let (_, events) = Log::open(dir.path()).unwrap();
        assert_eq!(events, vec![ev(1), ev(2), ev(3)]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        log.append(&[ev(1), ev(2)]).unwrap();
        drop(log);
        let path = dir.path().join("registry.log");
        let full = std::fs::read(&path).unwrap();
        for cut in [full.len() - 1, full.len() - 5, full.len() - 12] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut log, events) = Log::open(dir.path()).unwrap();
            assert_eq!(events, vec![ev(1)], "cut at {cut}");
            // Appending after recovery produces a clean log.
            log.append(&[ev(9)]).unwrap();
            drop(log);
            assert_eq!(Log::open(dir.path()).unwrap().1, vec![ev(1), ev(9)]);
        }
        // A flipped byte in the last entry is a torn write too.
        let mut flipped = full.clone();
        let n = flipped.len() - 2;
        flipped[n] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(Log::open(dir.path()).unwrap().1, vec![ev(1)]);
    }

    #[test]
    fn a_second_process_on_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path()).unwrap();
        let err = Log::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("--data-dir"));
        drop(log);
        Log::open(dir.path()).unwrap();
    }

    #[test]
    fn an_entry_too_large_to_read_back_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        let big = Event::Schema {
            id: 1,
            schema: "x".repeat(MAX_ENTRY as usize),
        };
        assert!(matches!(
            log.append(&[big]).unwrap_err(),
            StorageError::TooLarge { .. }
        ));
        log.append(&[ev(2)]).unwrap();
        drop(log);
        assert_eq!(Log::open(dir.path()).unwrap().1, vec![ev(2)]);
    }

    #[test]
    fn damage_before_the_end_is_an_error_not_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        log.append(&[ev(1), ev(2)]).unwrap();
        drop(log);
        let path = dir.path().join("registry.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Log::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt at byte 0"), "{err}");
    }

    #[test]
    fn a_damaged_length_in_the_middle_is_an_error_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        log.append(&[ev(1), ev(2), ev(3)]).unwrap();
        drop(log);
        let path = dir.path().join("registry.log");
        let good = std::fs::read(&path).unwrap();
        let second = 8 + entry_len(&good).unwrap();
        for length in [u32::MAX, MAX_ENTRY - 1, 1_000] {
            let mut bytes = good.clone();
            bytes[second..second + 4].copy_from_slice(&length.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let err = Log::open(dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("corrupt at byte {second}")), "{err}");
            assert!(err.contains("backup"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
        }
    }
}
