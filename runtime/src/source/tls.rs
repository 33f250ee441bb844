//! TLS for the MQTT connection (`mqtts://`): rustls, trusting `mqtt.tls.ca_file` (or the
//! system's trust store) and presenting a client certificate for mutual TLS when one is
//! configured. The files are read for every connection, so certificates rotated on disk
//! are used from the next reconnect on; they are also read once at start-up, so a wrong
//! path or a key that does not fit its certificate stops weir there.

use crate::config::Tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// A TLS setting that cannot be used: the config key, the file, and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The name to check the broker's certificate against is not one.
    #[error("{key}: {text:?} is not a DNS name or an IP address")]
    ServerName {
        /// `mqtt.tls.server_name` or `mqtt.url`.
        key: &'static str,
        /// The name given.
        text: String,
    },
    /// A PEM file cannot be read or parsed.
    #[error("{key}: {}: {source}", path.display())]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{key}: {} holds no PEM certificate (BEGIN CERTIFICATE)", path.display())]
    NoCertificate {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no usable private key.
    #[error("{key}: {}: no usable private key (PEM: PKCS#8, SEC1 or RSA): {source}", path.display())]
    NoKey {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused a certificate, key or setting.
    #[error("{what}: {source}")]
    Refused {
        /// What was refused, with the config keys involved.
        what: String,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// No CA to check the broker's certificate against.
    #[error(
        "mqtt.tls.ca_file is not set and the system's trust store has no CA certificates: set mqtt.tls.ca_file to the CA that issued the broker's certificate"
    )]
    NoTrust,
}

/// How to make TLS connections to the broker.
#[derive(Debug, Clone)]
pub struct Settings {
    tls: Tls,
    name: ServerName<'static>,
}

impl Settings {
    /// Settings for a broker at `host`; reads the files once to check them.
    pub fn new(tls: Option<&Tls>, host: &str) -> Result<Settings, TlsError> {
        let tls = tls.cloned().unwrap_or_default();
        let key = if tls.server_name.is_some() {
            "mqtt.tls.server_name"
        } else {
            "mqtt.url"
        };
        let text = tls.server_name.clone().unwrap_or_else(|| host.to_owned());
        let name =
            ServerName::try_from(text.clone()).map_err(|_| TlsError::ServerName { key, text })?;
        let s = Settings { tls, name };
        s.connector()?;
        Ok(s)
    }

    /// The name the broker's certificate must carry.
    pub fn name(&self) -> ServerName<'static> {
        self.name.clone()
    }

    /// A connector built from the files as they are now.
    pub fn connector(&self) -> Result<TlsConnector, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.tls.ca_file {
            Some(f) => {
                for c in read_certs(f, "mqtt.tls.ca_file")? {
                    roots.add(c).map_err(|source| TlsError::Refused {
                        what: format!("mqtt.tls.ca_file: {}", f.display()),
                        source,
                    })?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(TlsError::NoTrust);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Refused {
                what: "TLS set-up".into(),
                source,
            })?
            .with_root_certificates(roots);
        let config = match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "mqtt.tls.cert_file")?;
                let k = read_key(key, "mqtt.tls.key_file")?;
                builder
                    .with_client_auth_cert(chain, k)
                    .map_err(|source| TlsError::Refused {
                        what: format!(
                            "mqtt.tls.key_file: {} does not fit mqtt.tls.cert_file {}",
                            key.display(),
                            cert.display()
                        ),
                        source,
                    })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// What a TLS failure means and what to do about it, and whether that is certain (a
    /// certificate or an alert says so) or a guess (the broker hung up, which a proxy
    /// whose backend is down does too); `None` when TLS has nothing to say.
    pub fn explain(&self, e: &std::io::Error) -> Option<(String, Certain)> {
        let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            // Hanging up without an alert: what OpenSSL brokers (mosquitto) do to a client
            // without a certificate, and what a plain MQTT listener does to a ClientHello.
            let hung_up = matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            );
            let hint = if self.tls.cert_file.is_none() {
                "if it requires client certificates, set mqtt.tls.cert_file and mqtt.tls.key_file; if this port is not a TLS listener, use mqtt://"
            } else {
                "is this port a TLS listener (use mqtt:// for a plain one), and does the broker trust mqtt.tls.cert_file?"
            };
            return hung_up.then(|| {
                (
                    format!("TLS: the broker hung up without saying why; {hint}"),
                    Certain::No,
                )
            });
        };
        let name = match &self.name {
            ServerName::DnsName(d) => d.as_ref().to_owned(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            other => format!("{other:?}"),
        };
        let trusted = match &self.tls.ca_file {
            Some(f) => format!("mqtt.tls.ca_file ({})", f.display()),
            None => "the system's trust store (mqtt.tls.ca_file is not set)".to_owned(),
        };
        let why = match inner {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "the broker's certificate is not signed by a CA in {trusted}: set mqtt.tls.ca_file to the CA that issued it"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the broker's certificate has expired: renew it on the broker (or check this machine's clock)".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "the broker's certificate is not valid yet: check the clocks of this machine and the broker".to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "the broker's certificate is not valid for {name:?}: connect to a name the certificate carries, or set mqtt.tls.server_name to it"
                ),
                CertificateError::Revoked => "the broker's certificate is revoked".to_owned(),
                other => format!("the broker's certificate was rejected: {other:?}"),
            },
            rustls::Error::AlertReceived(a) => match a {
                AlertDescription::CertificateRequired => "the broker requires a client certificate: set mqtt.tls.cert_file and mqtt.tls.key_file".to_owned(),
                AlertDescription::CertificateExpired => "the broker says weir's client certificate (mqtt.tls.cert_file) has expired: issue a new one (or check the clocks of this machine and the broker)".to_owned(),
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied => format!(
                    "the broker refused weir's client certificate ({a:?}): check that mqtt.tls.cert_file is signed by a CA the broker trusts, is current, and fits mqtt.tls.key_file"
                ),
                AlertDescription::HandshakeFailure => format!(
                    "the broker ended the handshake ({a:?}): if it requires client certificates, set mqtt.tls.cert_file and mqtt.tls.key_file"
                ),
                other => format!("the broker ended the handshake: {other:?}"),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                "the broker did not answer with TLS: is this port a TLS listener? (use mqtt:// for a plain one)".to_owned()
            }
            rustls::Error::PeerIncompatible(p) => format!(
                "the broker and weir share no TLS version or cipher suite ({p:?}); weir speaks TLS 1.2 and 1.3"
            ),
            _ => return None,
        };
        Some((format!("TLS: {why}"), Certain::Yes))
    }
}

/// Whether an explanation is certain enough to stop start-up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certain {
    /// A certificate or an alert said so: retrying cannot help.
    Yes,
    /// A guess from a hang-up: retried, and logged with the hint.
    No,
}

/// The private key in a PEM file.
pub(crate) fn read_key(path: &Path, key: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::NoKey {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
pub(crate) fn read_certs(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            key,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
