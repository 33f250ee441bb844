//! Optional authentication, as Confluent clients send it: HTTP basic auth
//! (`basic.auth.user.info`) or a bearer token (`bearer.auth.token`).
//!
//! A credentials file lists who may call the registry, one per line:
//!
//! ```text
//! # comments and blank lines are ignored
//! basic USER:PASSWORD
//! bearer TOKEN
//! ```
//!
//! weir's own registry client reads the same format (its first credential is the one it
//! sends).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::Path;

/// One accepted (or presented) credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP basic auth.
    Basic {
        /// User name (no `:`).
        user: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

impl Credential {
    /// The `Authorization` header value that presents this credential.
    pub fn header_value(&self) -> String {
        match self {
            Credential::Basic { user, password } => {
                format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
            }
            Credential::Bearer(token) => format!("Bearer {token}"),
        }
    }

    fn matches(&self, presented: &Credential) -> bool {
        match (self, presented) {
            (
                Credential::Basic { user, password },
                Credential::Basic {
                    user: u,
                    password: p,
                },
            ) => same(user.as_bytes(), u.as_bytes()) & same(password.as_bytes(), p.as_bytes()),
            (Credential::Bearer(t), Credential::Bearer(given)) => {
                same(t.as_bytes(), given.as_bytes())
            }
            _ => false,
        }
    }
}

/// Equal bytes, in time that depends on the lengths only (no early exit on the first
/// differing byte, so the secret cannot be found byte by byte from response times).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file cannot be read.
    #[error("cannot read the credentials file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `basic USER:PASSWORD` or `bearer TOKEN`.
    #[error("{path} line {line}: {problem}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// No credential at all: auth would lock everyone out.
    #[error("{path} holds no credential; add a line `basic USER:PASSWORD` or `bearer TOKEN`")]
    Empty {
        /// The file.
        path: String,
    },
}

/// The credentials a registry accepts.
#[derive(Debug, Clone, Default)]
pub struct Credentials(Vec<Credential>);

impl Credentials {
    /// Read a credentials file (see the module documentation).
    pub fn read(path: &Path) -> Result<Credentials, CredentialsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: shown.clone(),
            source,
        })?;
        Credentials::parse(&text).map_err(|(line, problem)| match problem {
            None => CredentialsError::Empty { path: shown },
            Some(problem) => CredentialsError::Malformed {
                path: shown,
                line,
                problem,
            },
        })
    }

    /// Parse the file's text; an error is `(line, problem)`, no problem meaning no
    /// credential at all.
    pub fn parse(text: &str) -> Result<Credentials, (usize, Option<String>)> {
        let mut found = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            found.push(parse_line(line).map_err(|p| (i + 1, Some(p)))?);
        }
        if found.is_empty() {
            return Err((0, None));
        }
        Ok(Credentials(found))
    }

    /// The credentials, in file order.
    pub fn all(&self) -> &[Credential] {
        &self.0
    }

    /// Whether an `Authorization` header value presents one of these credentials.
    pub fn allow(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(presented) else {
            return false;
        };
        // Every credential is compared, so the time taken does not say which one matched.
        self.0
            .iter()
            .fold(false, |ok, c| c.matches(&presented) | ok)
    }
}

fn parse_line(line: &str) -> Result<Credential, String> {
    let (kind, value) = line
        .split_once(char::is_whitespace)
        .map(|(k, v)| (k, v.trim()))
        .unwrap_or((line, ""));
    match kind.to_ascii_lowercase().as_str() {
        "basic" => match value.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(Credential::Basic {
                    user: user.to_owned(),
                    password: password.to_owned(),
                })
            }
            _ => Err("a basic credential is `basic USER:PASSWORD`, both non-empty".into()),
        },
        "bearer" if !value.is_empty() && !value.contains(char::is_whitespace) => {
            Ok(Credential::Bearer(value.to_owned()))
        }
        "bearer" => Err("a bearer credential is `bearer TOKEN`, one word".into()),
        _ => Err("expected `basic USER:PASSWORD` or `bearer TOKEN`".into()),
    }
}

/// The credential an `Authorization` header value presents.
fn presented(header: &str) -> Option<Credential> {
    let (scheme, value) = header.trim().split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Credential::Bearer(value.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(value).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credential::Basic {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_credentials_are_accepted_and_nothing_else() {
        let c = Credentials::parse("# who may call\nbasic ci:s3cret:with:colons\n\nbearer tok-1\n")
            .unwrap();
        for ok in &c.0 {
            assert!(c.allow(Some(&ok.header_value())), "{ok:?}");
        }
        assert!(!c.allow(None));
        assert!(!c.allow(Some("Bearer tok-2")));
        assert!(!c.allow(Some("Bearer tok-")));
        let wrong = Credential::Basic {
            user: "ci".into(),
            password: "s3cret".into(),
        };
        assert!(!c.allow(Some(&wrong.header_value())));
        assert!(!c.allow(Some("Basic !!!not-base64")));
        assert!(!c.allow(Some("Digest x")));
    }

    #[test]
    fn malformed_and_empty_files_name_the_line() {
        assert_eq!(Credentials::parse("# nothing\n").unwrap_err(), (0, None));
        let (line, problem) = Credentials::parse("bearer a\nbasic nopassword\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(problem.unwrap().contains("USER:PASSWORD"));
        assert_eq!(Credentials::parse("token x").unwrap_err().0, 1);
        assert_eq!(Credentials::parse("bearer a b").unwrap_err().0, 1);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Credentials::parse("basic u:pw\nbearer tok").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw") && !shown.contains("tok"), "{shown}");
    }
}
