//! The precompiled-artifact cache: compiling a plugin takes tens of milliseconds (more for
//! big ones), loading a precompiled one ≈0.2 ms. Artifacts are keyed by the Wasm file's
//! sha256 and the engine's compatibility hash (wasmtime version + settings), so a changed
//! engine never loads a stale artifact.

#![allow(unsafe_code)]

use super::LoadError;
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
        if path.exists() {
            // SAFETY: wasmtime requires that deserialised artifacts were produced by
            // `precompile_component` of a compatible engine and not tampered with. Only this
            // function writes into the cache directory, the name carries the engine's
            // compatibility hash, and wasmtime re-checks the header and engine settings.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached artifact; recompiling")
                }
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

    /// Write atomically: a half-written artifact must never be found under the final name.
    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, artifact)?;
        std::fs::rename(&tmp, path)
    }
}
