//! The plugin store: Wasm components by content, `<sha256>.wasm` in one directory.
//!
//! A file's name is its sha256, so a stored version cannot change under a name: the index
//! `name@version → sha256` lives in the control topic (see [`crate::control`]), which refuses
//! a second sha256 for a name@version, and is mirrored to `index.json` here for operators.
//! Precompiled artifacts are cached by sha256 and engine (the sandbox crate's cache). Files are
//! written to a unique temporary name, fsynced and renamed, so readers never see half a
//! file and two processes sharing the directory do not collide; a file whose content no
//! longer matches its name is refused on read.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory or a file could not be used.
    #[error("plugin store {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored file's content does not match its name.
    #[error(
        "plugin store {path}: the file's sha256 is {actual}; it was damaged or replaced — delete it and push the plugin again"
    )]
    Damaged {
        /// The file.
        path: String,
        /// What its content hashes to.
        actual: String,
    },
}

/// A directory of plugins by sha256.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Store {
    /// Open (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    /// Store `bytes` (a no-op if they are there); returns their sha256.
    pub fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let sha = sha256_hex(bytes);
        let path = self.path(&sha);
        if path.exists() {
            return Ok(sha);
        }
        self.write_atomically(&path, bytes)?;
        Ok(sha)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
        tmp.write_all(bytes).map_err(io(path))?;
        tmp.as_file().sync_all().map_err(io(path))?;
        tmp.persist(path).map_err(|e| StoreError::Io {
            path: path.display().to_string(),
            source: e.error,
        })?;
        Ok(())
    }

    /// The component with this sha256, checked against it; `None` if not stored.
    /// Whether the component `sha256` is stored (a 64-digit lowercase hex digest).
    pub fn has(&self, sha256: &str) -> bool {
        sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && self.path(sha256).exists()
    }

    pub fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(sha256);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(StoreError::Damaged {
                path: path.display().to_string(),
                actual,
            });
        }
        Ok(Some(bytes))
    }

    /// Mirror the index (`name@version → sha256`) to `index.json`, for operators.
    pub fn write_index(&self, index: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let path = self.dir.join("index.json");
        let text = serde_json::to_vec_pretty(index).expect("a map of strings serialises");
        self.write_atomically(&path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_its_name_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sha = store.put(b"\0asm-one").unwrap();
        assert_eq!(sha, sha256_hex(b"\0asm-one"));
        assert_eq!(store.put(b"\0asm-one").unwrap(), sha);
        assert_eq!(store.get(&sha).unwrap().unwrap(), b"\0asm-one");
        assert!(store.get(&sha256_hex(b"other")).unwrap().is_none());
        std::fs::write(dir.path().join(format!("{sha}.wasm")), b"tampered").unwrap();
        let err = store.get(&sha).unwrap_err().to_string();
        assert!(err.contains("damaged or replaced"), "{err}");
    }
}
