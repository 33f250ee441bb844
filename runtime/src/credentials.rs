//! Kafka SASL credentials that follow `kafka.sasl.password_file`. A long-lived client (a
//! group's producer, the control topic's producer and reader) re-reads the file every
//! [`INTERVAL`]; when the password in it changed, librdkafka gets the new one and uses it
//! the next time it logs in to a broker — a reconnect, a broker it had not talked to.
//! Connections already logged in stay as they are. A login that fails meanwhile (a
//! broker that has the new password before the file does) is retried by librdkafka, and
//! writes wait for it, so a rotation loses nothing. Readers made for one pass (checks,
//! replay and quarantine readers) read the file when they are made.

// One foreign call: rdkafka 0.39 does not wrap librdkafka's `rd_kafka_sasl_set_credentials`,
// the function made to change a running client's SASL PLAIN/SCRAM credentials.
#![allow(unsafe_code)]

use crate::config::{Kafka, Secret, read_secret};
use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// How often a long-lived client re-reads its password file.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// The config key the file comes from, for messages.
const KEY: &str = "kafka.sasl.password_file";

/// A client's password file and the password the client was last given.
pub struct PasswordFile {
    /// Which of weir's clients this is, for messages.
    client: String,
    path: PathBuf,
    username: String,
    /// What the client has: `None` until the first refresh, which hands it over whatever
    /// the file says then (it may have changed since the client was made).
    given: Option<Secret>,
    /// A problem already logged, so that a file missing for a while logs once.
    complained: Option<String>,
}

impl PasswordFile {
    /// The password file of `client` (which of weir's clients, for messages), made from
    /// `kafka`, if its password comes from one.
    pub fn of(kafka: &Kafka, client: &str) -> Option<PasswordFile> {
        let sasl = kafka.sasl.as_ref()?;
        Some(PasswordFile {
            client: client.to_owned(),
            path: sasl.password_file.clone()?,
            username: sasl.username.clone(),
            given: None,
            complained: None,
        })
    }

    /// Read the file again and, if its password is not the one `client` has, give it the
    /// new one for its next login. A file that cannot be read (mid-rotation, removed)
    /// leaves the client with the password it has, and says so once.
    pub fn refresh<C: ClientContext>(&mut self, client: &Client<C>) {
        let password = match read_secret(&self.path, KEY) {
            Ok(p) => p,
            Err(problem) => return self.complain(problem.to_string()),
        };
        if self.given.as_ref() == Some(&password) {
            self.complained = None;
            return;
        }
        if let Err(problem) = set_credentials(client, &self.username, &password) {
            return self.complain(format!("{KEY}: {problem}"));
        }
        if self.given.is_some() {
            tracing::info!(
                client = %self.client,
                file = %self.path.display(),
                "{KEY} changed: Kafka logins from now on use the new password"
            );
        }
        self.given = Some(password);
        self.complained = None;
    }

    fn complain(&mut self, problem: String) {
        if self.complained.as_ref() != Some(&problem) {
            tracing::warn!(client = %self.client, "{problem}; Kafka logins keep the password read before");
            self.complained = Some(problem);
        }
    }
}

/// Hand `client` new SASL credentials for its next login.
fn set_credentials<C: ClientContext>(
    client: &Client<C>,
    username: &str,
    password: &Secret,
) -> Result<(), String> {
    let username = CString::new(username).map_err(|_| "the username has a NUL byte")?;
    let password =
        CString::new(password.expose()).map_err(|_| "the password in it has a NUL byte")?;
    // SAFETY: `client` is borrowed, so its handle is alive for the call; both strings are
    // NUL-terminated and outlive it (librdkafka copies them). The function takes the
    // client's SASL lock, so it may run on any thread while the client works.
    let error = unsafe {
        rd::rd_kafka_sasl_set_credentials(client.native_ptr(), username.as_ptr(), password.as_ptr())
    };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error object is ours: its string is valid until it is destroyed,
    // which happens once, after the string was copied.
    let problem = unsafe {
        let text = CStr::from_ptr(rd::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        rd::rd_kafka_error_destroy(error);
        text
    };
    Err(format!("librdkafka refused the new credentials: {problem}"))
}

/// A thread keeping one client's password in step with its file; dropping this stops it
/// and waits for it, so the client's handle it holds is let go first (keep it before the
/// client in a struct, so that the owner's handle is the last and the client is
/// destroyed where it always was).
pub struct Follower {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Follower")
    }
}

/// Follow `kafka`'s password file for `client` (which of weir's clients, for messages),
/// calling `refresh` (which owns a handle to the client, e.g. a producer's clone) every
/// [`INTERVAL`] on a thread of its own. `None` when the password does not come from a file.
pub fn follow(
    kafka: &Kafka,
    client: &str,
    mut refresh: impl FnMut(&mut PasswordFile) + Send + 'static,
) -> Result<Option<Follower>, String> {
    let Some(mut file) = PasswordFile::of(kafka, client) else {
        return Ok(None);
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("weir-sasl".into())
        .spawn(move || {
            refresh(&mut file);
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                refresh(&mut file);
            }
        })
        .map_err(|e| format!("cannot start the thread following {KEY}: {e}"))?;
    Ok(Some(Follower {
        stop: Some(stop),
        thread: Some(thread),
    }))
}
