//! The precompiled-artifact cache: compiling a plugin takes tens of milliseconds (more for
//! big ones), loading a precompiled one ≈0.2 ms. Artifacts are keyed by the Wasm file's
//! sha256 and the engine's compatibility hash (wasmtime version + settings), so a changed
//! engine never loads a stale artifact.
//!
//! A precompiled artifact is native code that wasmtime runs as it is, so whoever can
//! write the cache directory could otherwise run code in weir. Each artifact is therefore
//! followed by an HMAC-SHA256 under a secret key kept beside the directory, not in it
//! (`<dir>.key`, mode 0600, made on first use): an artifact that does not carry the MAC of
//! this key is recompiled, never loaded. Guard the key as the plugin store itself.

#![allow(unsafe_code)]

use super::LoadError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

type Tag = Hmac<Sha256>;
/// Bytes of the MAC after each artifact.
const MAC_BYTES: usize = 32;

pub(super) struct Cache {
    dir: PathBuf,
    engine_tag: String,
    engine: Engine,
    /// The secret the artifacts' MACs are made with.
    key: [u8; 32],
}

impl Cache {
    /// The cache in `dir`, with its key from `<dir>.key` (made if missing). `None`, with a
    /// warning, when the key can be neither read nor made: plugins are then compiled on
    /// every load, never taken from an unauthenticated cache.
    pub(super) fn new(dir: &Path, engine: &Engine) -> Option<Self> {
        let key_file = key_path(dir);
        let key = match read_or_make_key(&key_file) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(key = %key_file.display(), error = %e, "cannot read or create the compiled-plugin cache's key; compiling plugins on every load");
                return None;
            }
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Some(Cache {
            dir: dir.to_path_buf(),
            engine_tag: format!("{:016x}", h.finish()),
            engine: engine.clone(),
            key,
        })
    }

    fn mac(&self) -> Tag {
        Tag::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub(super) fn load_or_compile(
        &self,
        sha256: &str,
        wasm: &[u8],
    ) -> Result<Component, LoadError> {
        let path = self.dir.join(format!("{sha256}-{}.cwasm", self.engine_tag));
        match std::fs::read(&path) {
            Ok(file) => match self.checked(&file) {
                Ok(artifact) => {
                    // SAFETY: wasmtime requires that deserialised bytes were produced by
                    // `precompile_component` of a compatible engine and not altered since.
                    // `checked` has verified the trailing MAC that `store` wrote over
                    // exactly these bytes with this cache's secret key (so they are what a
                    // weir holding the key wrote, whole), and that wasmtime recognises them
                    // as a precompiled component; the file name carries the engine's
                    // compatibility hash, and wasmtime re-checks the engine settings in
                    // the header.
                    match unsafe { Component::deserialize(&self.engine, artifact) } {
                        Ok(c) => return Ok(c),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached artifact; recompiling")
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(path = %path.display(), %why, "ignoring damaged cached artifact; recompiling")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cached artifact; recompiling")
            }
        }
        let artifact = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::NotAComponent(format!("not a valid Wasm component: {e:#}")))?;
        if let Err(e) = self.store(&path, &artifact) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compiled-plugin cache; continuing without it");
        }
        // SAFETY: `artifact` was produced just above by `precompile_component` of this engine.
        unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| LoadError::Engine(format!("{e:#}")))
    }

    /// The artifact inside a cache file, if its trailing MAC is this key's and wasmtime
    /// recognises it as a precompiled component.
    fn checked<'a>(&self, file: &'a [u8]) -> Result<&'a [u8], String> {
        let Some(split) = file.len().checked_sub(MAC_BYTES) else {
            return Err("too short".into());
        };
        let (artifact, tag) = file.split_at(split);
        let mut mac = self.mac();
        mac.update(artifact);
        if mac.verify_slice(tag).is_err() {
            return Err(
                "its MAC is not this cache's (truncated, altered, or not written by a weir holding the cache key)"
                    .into(),
            );
        }
        match Engine::detect_precompiled(artifact) {
            Some(wasmtime::Precompiled::Component) => Ok(artifact),
            _ => Err("not a precompiled component".into()),
        }
    }

    /// Write atomically under a unique temporary name (processes in different containers
    /// can share a pid), then rename: a half-written artifact is never found under the
    /// final name. The artifact is followed by its MAC.
    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::with_prefix_in(".cwasm-", &self.dir)?;
        tmp.write_all(artifact)?;
        let mut mac = self.mac();
        mac.update(artifact);
        tmp.write_all(&mac.finalize().into_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// `<dir>.key`: beside the cache directory, not in it.
fn key_path(dir: &Path) -> PathBuf {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => parent.join(format!("{}.key", name.to_string_lossy())),
        _ => dir.with_extension("key"),
    }
}

/// The key in `path`, or a new random one written there (mode 0600) if there is none.
fn read_or_make_key(path: &Path) -> std::io::Result<[u8; 32]> {
    let read = |path: &Path| -> std::io::Result<[u8; 32]> {
        std::fs::read(path)?.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a 32-byte key; delete it to have a new one made (cached artifacts are then recompiled)",
            )
        })
    };
    match read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            weir_config::signing::write_secret(path, &rand::random::<[u8; 32]>())?;
            read(path)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_or_foreign_artifacts_are_refused_before_deserialising() {
        let engine = Engine::default();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("compiled");
        let cache = Cache::new(&dir, &engine).unwrap();
        assert!(cache.checked(b"short").is_err());
        let artifact = engine
            .precompile_component(&wat::parse_str("(component)").unwrap())
            .unwrap();
        let path = dir.join("x.cwasm");
        cache.store(&path, &artifact).unwrap();
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(cache.checked(&stored).unwrap(), &artifact[..]);
        let mut flipped = stored.clone();
        flipped[10] ^= 1;
        assert!(cache.checked(&flipped).unwrap_err().contains("MAC"));
        // What someone who can write the cache, but not its key, can plant: an artifact
        // with a correct plain digest (the old trailer) is refused.
        let mut planted = artifact.clone();
        planted.extend_from_slice(&<Sha256 as sha2::Digest>::digest(&artifact));
        assert!(cache.checked(&planted).unwrap_err().contains("MAC"));
        // The key lives beside the directory, readable by its owner only, and is kept.
        let key = root.path().join("compiled.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Cache::new(&dir, &engine).unwrap();
        assert_eq!(again.checked(&stored).unwrap(), &artifact[..]);
        // Another key (another deployment's) does not accept this one's artifacts.
        std::fs::remove_file(&key).unwrap();
        let other = Cache::new(&dir, &engine).unwrap();
        assert!(other.checked(&stored).is_err());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }
}
