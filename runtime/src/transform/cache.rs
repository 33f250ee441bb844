//! The precompiled-artifact cache: compiling a plugin takes tens of milliseconds (more for
//! big ones), loading a precompiled one ≈0.2 ms. Artifacts are keyed by the Wasm file's
//! sha256 and the engine's compatibility hash (wasmtime version + settings), so a changed
//! engine never loads a stale artifact.

#![allow(unsafe_code)]

use super::LoadError;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(super) struct Cache {
    dir: PathBuf,
    engine_tag: String,
    engine: Engine,
}

impl Cache {
    pub(super) fn new(dir: &Path, engine: &Engine) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Cache {
            dir: dir.to_path_buf(),
            engine_tag: format!("{:016x}", h.finish()),
            engine: engine.clone(),
        }
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
                    // `checked` has verified the trailing sha256 that `store` wrote over
                    // exactly these bytes (so they are what this cache wrote, whole), and
                    // that wasmtime recognises them as a precompiled component; the file
                    // name carries the engine's compatibility hash, and wasmtime re-checks
                    // the engine settings in the header.
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

    /// The artifact inside a cache file, if its trailing sha256 matches and wasmtime
    /// recognises it as a precompiled component.
    fn checked<'a>(&self, file: &'a [u8]) -> Result<&'a [u8], String> {
        let Some(split) = file.len().checked_sub(32) else {
            return Err("too short".into());
        };
        let (artifact, digest) = file.split_at(split);
        if Sha256::digest(artifact).as_slice() != digest {
            return Err("checksum mismatch (truncated or altered)".into());
        }
        match Engine::detect_precompiled(artifact) {
            Some(wasmtime::Precompiled::Component) => Ok(artifact),
            _ => Err("not a precompiled component".into()),
        }
    }

    /// Write atomically under a unique temporary name (processes in different containers
    /// can share a pid), then rename: a half-written artifact is never found under the
    /// final name. The artifact is followed by its sha256.
    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::with_prefix_in(".cwasm-", &self.dir)?;
        tmp.write_all(artifact)?;
        tmp.write_all(&Sha256::digest(artifact))?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_artifacts_are_refused_before_deserialising() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), &engine);
        assert!(cache.checked(b"short").is_err());
        let mut file = b"not an artifact".to_vec();
        file.extend_from_slice(&Sha256::digest(b"not an artifact"));
        assert!(
            cache
                .checked(&file)
                .unwrap_err()
                .contains("not a precompiled")
        );
        let artifact = engine
            .precompile_component(&wat::parse_str("(component)").unwrap())
            .unwrap();
        let path = dir.path().join("x.cwasm");
        cache.store(&path, &artifact).unwrap();
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(cache.checked(&stored).unwrap(), &artifact[..]);
        let mut flipped = stored.clone();
        flipped[10] ^= 1;
        assert!(cache.checked(&flipped).unwrap_err().contains("checksum"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }
}
