//! Signatures on the control topic. Whoever can write the control topic could otherwise add
//! an upload and a pin that every weir process installs and keeps across restarts, without
//! the registry check, the fixtures or a token. So every entry but a component's bytes
//! (which are named by their sha256, and used only through a signed upload or pin) carries
//! an ed25519 signature in its headers, over its key and value:
//!
//! | header           | value                                         |
//! |------------------|-----------------------------------------------|
//! | `weir.signer`    | the signing key's public half, base64         |
//! | `weir.signature` | the signature of `weir-control-v1\0<key>\0<value>`, base64 |
//!
//! A process writes with its signing key (`[plugins] signing_key_file`, made on first use)
//! and applies only entries signed by a key it trusts: its own, and those listed in
//! `[plugins] trusted_keys` as `NAME:PUBLIC_KEY`. Several trusted keys allow a rotation:
//! add the new one everywhere, move the signers to it, then drop the old one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use std::path::Path;

/// The header holding the signer's public key.
pub const SIGNER_HEADER: &str = "weir.signer";
/// The header holding the signature.
pub const SIGNATURE_HEADER: &str = "weir.signature";

/// A process's signing key and the keys it trusts, from `[plugins]`.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs what this process writes.
    pub signer: std::sync::Arc<Signer>,
    /// Whose entries it applies (its own key among them, named `self`).
    pub trust: std::sync::Arc<Trust>,
}

impl Keys {
    /// The keys `[plugins]` names (`signing_key_file`, `trusted_keys`); an error is
    /// `(key, problem)`.
    pub fn load(
        signing_key: &std::path::Path,
        trusted_keys: &[String],
    ) -> Result<Keys, (String, String)> {
        let signer = Signer::load_or_create(signing_key)
            .map_err(|e| ("plugins.signing_key_file".to_owned(), e.to_string()))?;
        let trust = Trust::parse(trusted_keys)
            .map_err(|e| ("plugins.trusted_keys".to_owned(), e))?
            .with("self", &signer);
        Ok(Keys {
            signer: std::sync::Arc::new(signer),
            trust: std::sync::Arc::new(trust),
        })
    }
}

/// What is signed: a domain tag, the record's key and its value.
fn signed_bytes(key: &str, value: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + key.len() + value.len());
    m.extend_from_slice(b"weir-control-v1\0");
    m.extend_from_slice(key.as_bytes());
    m.push(0);
    m.extend_from_slice(value);
    m
}

/// This process's signing key.
pub struct Signer {
    key: SigningKey,
    public: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public", &self.public)
            .finish()
    }
}

impl Signer {
    /// A signer from a 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Signer {
        let key = SigningKey::from_bytes(&secret);
        let public = STANDARD.encode(key.verifying_key().as_bytes());
        Signer { key, public }
    }

    /// The key in `path` (its secret in base64), or a new one written there (mode 0600)
    /// if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Signer, KeyFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let secret: [u8; 32] = STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| KeyFileError::NotAKey(path.to_owned()))?;
                Ok(Signer::from_secret(secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Signer::from_secret(rand::random());
                write_secret(path, STANDARD.encode(signer.key.to_bytes()).as_bytes()).map_err(
                    |source| KeyFileError::Create {
                        path: path.to_owned(),
                        source,
                    },
                )?;
                // Another process may have made one meanwhile: the file's is the key.
                Signer::load_or_create(path)
            }
            Err(source) => Err(KeyFileError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The public key, base64: what other processes list in `trusted_keys`.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// The two headers that sign the record (`key`, `value`).
    pub fn sign(&self, key: &str, value: &[u8]) -> [(&'static str, String); 2] {
        let signature = self.key.sign(&signed_bytes(key, value));
        [
            (SIGNER_HEADER, self.public.clone()),
            (SIGNATURE_HEADER, STANDARD.encode(signature.to_bytes())),
        ]
    }
}

/// Write a secret to `path` with mode 0600, whole or not at all, unless the file exists by
/// then (another process made one meanwhile: the caller reads that one back).
pub fn write_secret(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::with_prefix_in(".signing-", dir)?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tmp.write_all(secret)?;
    tmp.as_file().sync_all()?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.error),
    }
}

/// Why an entry is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It carries no signature.
    Unsigned,
    /// Its signer is not a trusted key.
    UnknownSigner,
    /// The signature does not match the entry.
    Forged,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Unsigned => "it is not signed",
            Refusal::UnknownSigner => {
                "its signer is not trusted (list its public key in plugins.trusted_keys, or give every process the same plugins.signing_key_file)"
            }
            Refusal::Forged => "its signature does not match it (forged or altered)",
        })
    }
}

/// The signing key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It holds something else.
    #[error(
        "{} is not a signing key (32 bytes in base64); restore it, or delete it to have a new one made (then list the new public key where the old one was trusted)",
        .0.display()
    )]
    NotAKey(std::path::PathBuf),
    /// It cannot be read.
    #[error("cannot read the signing key {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// It does not exist and cannot be made.
    #[error("cannot create the signing key {}: {source}", path.display())]
    Create {
        /// The file.
        path: std::path::PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// The keys whose signatures a process accepts, by name.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<(String, VerifyingKey)>,
}

impl Trust {
    /// Parse `NAME:PUBLIC_KEY` entries; an error names the entry.
    pub fn parse(entries: &[String]) -> Result<Trust, String> {
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let (name, public) = entry
                .split_once(':')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .ok_or_else(|| format!("entry {i}: expected NAME:PUBLIC_KEY (the base64 key a weir process logs at start-up as its control signing key)"))?;
            keys.push((
                name.to_owned(),
                verifying_key(public.trim()).map_err(|e| format!("entry {i} ({name}): {e}"))?,
            ));
        }
        Ok(Trust { keys })
    }

    /// These keys and `signer`'s own, as `name`.
    pub fn with(mut self, name: &str, signer: &Signer) -> Trust {
        self.keys
            .push((name.to_owned(), signer.key.verifying_key()));
        self
    }

    /// The trusted signer's name, if the headers sign (`key`, `value`) with a trusted key.
    pub fn check(
        &self,
        key: &str,
        value: &[u8],
        signer: Option<&[u8]>,
        signature: Option<&[u8]>,
    ) -> Result<&str, Refusal> {
        let (Some(signer), Some(signature)) = (signer, signature) else {
            return Err(Refusal::Unsigned);
        };
        let public = std::str::from_utf8(signer)
            .ok()
            .and_then(|s| verifying_key(s).ok())
            .ok_or(Refusal::UnknownSigner)?;
        let (name, trusted) = self
            .keys
            .iter()
            .find(|(_, k)| *k == public)
            .ok_or(Refusal::UnknownSigner)?;
        let signature = STANDARD
            .decode(signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or(Refusal::Forged)?;
        trusted
            .verify(&signed_bytes(key, value), &signature)
            .map_err(|_| Refusal::Forged)?;
        Ok(name)
    }
}

fn verifying_key(public: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = STANDARD
        .decode(public)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("not an ed25519 public key (32 bytes in base64)")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(h: &'a [(&'static str, String); 2]) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        (Some(h[0].1.as_bytes()), Some(h[1].1.as_bytes()))
    }

    #[test]
    fn trusted_signatures_pass_and_everything_else_is_refused() {
        let ours = Signer::from_secret([1; 32]);
        let theirs = Signer::from_secret([2; 32]);
        let stranger = Signer::from_secret([3; 32]);
        let trust = Trust::parse(&[format!("ops:{}", theirs.public())])
            .unwrap()
            .with("self", &ours);
        let value = br#"{"cohort":"c"}"#;
        for (signer, name) in [(&ours, "self"), (&theirs, "ops")] {
            let h = signer.sign("pin/c", value);
            let (s, sig) = headers(&h);
            assert_eq!(trust.check("pin/c", value, s, sig), Ok(name));
        }
        assert_eq!(
            trust.check("pin/c", value, None, None),
            Err(Refusal::Unsigned)
        );
        let h = stranger.sign("pin/c", value);
        let (s, sig) = headers(&h);
        assert_eq!(
            trust.check("pin/c", value, s, sig),
            Err(Refusal::UnknownSigner)
        );
        // A trusted signer's signature moved to another key or value does not hold.
        let h = ours.sign("pin/c", value);
        let (s, sig) = headers(&h);
        assert_eq!(trust.check("pin/d", value, s, sig), Err(Refusal::Forged));
        assert_eq!(trust.check("pin/c", b"{}", s, sig), Err(Refusal::Forged));
        // Naming a trusted signer without its secret does not either.
        let forged = stranger.sign("pin/c", value);
        assert_eq!(
            trust.check("pin/c", value, s, Some(forged[1].1.as_bytes())),
            Err(Refusal::Forged)
        );
    }

    #[test]
    fn keys_are_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store/signing.key");
        let a = Signer::load_or_create(&path).unwrap();
        let b = Signer::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            Signer::load_or_create(&path)
                .unwrap_err()
                .to_string()
                .contains("not a signing key")
        );
        assert!(
            Trust::parse(&["nocolon".into()])
                .unwrap_err()
                .contains("NAME:PUBLIC_KEY")
        );
        assert!(
            Trust::parse(&["ops:AAAA".into()])
                .unwrap_err()
                .contains("ops")
        );
    }
}
