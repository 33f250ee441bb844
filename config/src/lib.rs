//! `weir.toml`: the config file is documentation, so every key is named for what it does and
//! `examples/weir.toml` explains each one. Any scalar key of the `mqtt`, `kafka`, `registry`,
//! `output` and `plugins` tables can be overridden from the environment as
//! `WEIR_<TABLE>_<KEY>` (e.g. `WEIR_MQTT_URL`, `WEIR_KAFKA_BOOTSTRAP`,
//! `WEIR_REGISTRY_URL`, `WEIR_OUTPUT_QUARANTINE_TOPIC`); a key of the N-th `[[cohort]]`
//! (from 0) as `WEIR_COHORT_<N>_<KEY>` (`WEIR_COHORT_0_PLUGIN=thermostat@1.1.0`), of the
//! N-th `[[group]]` as `WEIR_GROUP_<N>_<KEY>`; Kafka
//! client properties as `WEIR_KAFKA_PROPERTY_<NAME>` with `_` for `.`
//! (`WEIR_KAFKA_PROPERTY_LINGER_MS=5`).
//!
//! A bad config stops start-up with an error naming the file, the key and the fix.

pub mod signing;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A config problem: which file, which key, what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The key (dotted path), or `-` for the whole file.
    pub key: String,
    /// What is wrong, and the fix.
    pub problem: String,
}

/// The whole config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where messages come from.
    pub mqtt: Mqtt,
    /// Where records go.
    pub kafka: Kafka,
    /// Where schemas are registered.
    pub registry: RegistryConfig,
    /// Topics and batching shared by all cohorts.
    #[serde(default)]
    pub output: Output,
    /// Where plugin files are found.
    pub plugins: Plugins,
    /// The admin listener: metrics and health.
    #[serde(default)]
    pub admin: Admin,
    /// Device cohorts, matched in order; the first match wins.
    #[serde(rename = "cohort", default)]
    pub cohorts: Vec<Cohort>,
    /// Isolation groups: cohorts whose MQTT session, in-flight budget and transform worker
    /// are kept apart from everyone else's. Cohorts without a `group` are in
    /// [`DEFAULT_GROUP`], which uses `[mqtt]`'s client id and subscriptions.
    #[serde(rename = "group", default)]
    pub groups: Vec<Group>,
}

/// The group of cohorts that name no `group`: `[mqtt]`'s own session.
pub const DEFAULT_GROUP: &str = "default";

/// One `[[group]]`: an isolation group. Its cohorts get their own MQTT session (client id
/// `<mqtt.client_id>-<name>`, the group's subscriptions), their own in-flight budget and
/// their own transform worker, so a group whose plugin spins or whose devices flood
/// cannot hold back another group's acknowledgements: PUBACKs leave in arrival order per
/// session, and each group is its own session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Name: letters, digits, `-` and `_`; the session's client id suffix and the metrics'
    /// `group` label.
    pub name: String,
    /// Topic filters of this group's session; they must not overlap another group's (a
    /// message taken by two sessions would be written twice).
    pub subscriptions: Vec<String>,
    /// Most of this group's messages in flight (default: `mqtt.max_in_flight`); its batches
    /// are at most this large.
    #[serde(default)]
    pub max_in_flight: Option<u16>,
    /// Most messages per second this group takes from its session (default:
    /// `mqtt.max_messages_per_s`, none). A storm beyond it waits at the broker, in the
    /// group's own session: what it takes of the CPU, the broker's delivery and Kafka's
    /// capacity, which the other groups share, is bounded by the limit.
    #[serde(default)]
    pub max_messages_per_s: Option<u32>,
    /// How far below weir's own CPU priority this group runs, as a nice increment (0 to
    /// 19, default 0): its threads — MQTT and Kafka I/O, transform worker, Kafka producer
    /// — run at weir's nice value plus this. When the CPU is short, a thread at +10 gets
    /// about a tenth of what one at +0 gets, so the groups that must keep their latency
    /// win over a group allowed to storm or running an expensive plugin. When the CPU is
    /// not short, it changes nothing.
    #[serde(default)]
    pub nice: u8,
    /// Exactly once for this group's QoS 2 messages (default: `mqtt.exactly_once`).
    #[serde(default)]
    pub exactly_once: Option<bool>,
}

/// Most scale-out slots (`mqtt.slots`): each is an MQTT session and a partition.
pub const MAX_SLOTS: u16 = 1024;

/// The Kafka topic whose partitions are the scale-out slots of `client_id`'s sessions
/// (its consumer group has the same name).
pub fn slots_topic(client_id: &str) -> String {
    format!("weir.slots.{client_id}")
}

/// The Kafka topic that keeps the state of exactly-once sessions whose deployment client id
/// is `client_id`: one partition per slot (one without slots), the latest state of a
/// session under its client id, written in the session's transactions.
pub fn sessions_topic(client_id: &str) -> String {
    format!("weir.sessions.{client_id}")
}

/// The highest nice value, the lowest priority a group can be given (a worker whose plugin
/// ran past its budget goes lower still: `SCHED_IDLE`).
pub const MAX_NICE: u8 = 19;

/// A group as `weir run` runs it: its session's settings and its cohorts.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// The group's name ([`DEFAULT_GROUP`] for `[mqtt]`'s own session).
    pub name: String,
    /// The session: `[mqtt]` with the group's client id, subscriptions and budget.
    pub mqtt: Mqtt,
    /// Indexes into [`Config::cohorts`] of the group's cohorts, in config order.
    pub cohorts: Vec<usize>,
    /// How far below weir's CPU priority the group's threads run (`[[group]] nice`; 0 for
    /// the default group).
    pub nice: u8,
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// The `[mqtt]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS (port 8883 when left out).
    pub url: String,
    /// Client id; the broker keeps the persistent session under it.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// `5` or `"3.1.1"`.
    #[serde(default = "default_protocol", deserialize_with = "de_protocol")]
    pub protocol: Protocol,
    /// Topic filters to subscribe to (`$share/<group>/...` for scale-out): the default
    /// group's session. May be left out when every cohort names a `[[group]]`.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// How long the broker keeps the session (and its backlog) while weir is away, seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_s: u32,
    /// Most messages in flight (received, not yet acknowledged); MQTT 5 receive maximum.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u16,
    /// Most messages per second taken from the session (default: no limit); the rest wait
    /// at the broker. The default for every `[[group]]` that sets none.
    #[serde(default)]
    pub max_messages_per_s: Option<u32>,
    /// Keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u16,
    /// Username, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password; better from the environment (`WEIR_MQTT_PASSWORD`) or `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (a trailing newline is ignored); read at every
    /// connection, so a rotated password is used from the next reconnect on.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS settings for an `mqtts://` URL.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// MQTT 5 retain handling for weir's subscriptions: `new-subscription` (default:
    /// retained messages only when a subscription is new), `always` or `never`.
    #[serde(default = "default_retain", deserialize_with = "de_retain")]
    pub retain_handling: RetainHandling,
    /// Largest payload weir publishes; a larger message goes to quarantine with code
    /// `payload.too-large` (a prefix, its size and sha256). Default: what Kafka accepts by
    /// default (1,000,000 bytes) less room for headers.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Scale-out slots (default: none, one session under `client_id`). With `slots = N`
    /// the deployment has N persistent sessions, `<client_id>-0` to `<client_id>-<N-1>`,
    /// on its shared subscriptions, and the weir processes running this config share them
    /// out through a Kafka consumer group (one partition of the topic
    /// `weir.slots.<client_id>` per slot): a process that dies leaves its sessions, and
    /// their backlogs, to the others. Fixed once chosen, like a topic's partition count.
    #[serde(default)]
    pub slots: Option<u16>,
    /// How long Kafka waits before moving the slots of a process it no longer hears from,
    /// seconds (the consumer group's session timeout; the broker bounds it by its
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`).
    #[serde(default = "default_slot_timeout")]
    pub slot_timeout_s: u16,
    /// Exactly once for QoS 2 publishers (default `false`; a `[[group]]` may set its own).
    /// The session subscribes at QoS 2; a batch's Kafka writes and the session's state
    /// (the packet ids committed and not yet released) are written in one Kafka
    /// transaction, and PUBREC leaves only after it committed. A redelivered message whose
    /// packet id is committed is answered and not written again, so consumers reading
    /// `read_committed` see each QoS 2 message once, across crashes and slot moves. QoS 1
    /// messages on it stay at least once. Needs Kafka transactions (brokers 0.11 or later,
    /// and the principal allowed to use the transactional id `weir.<session's client
    /// id>`); the state lives in the topic `weir.sessions.<client_id>`.
    #[serde(default)]
    pub exactly_once: bool,
}

/// MQTT 5 retain handling for weir's subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// Send retained messages on every SUBSCRIBE.
    Always,
    /// Only when the subscription did not exist (the default).
    NewSubscription,
    /// Never send retained messages.
    Never,
}

impl Mqtt {
    /// The password to log in with: `password_file` (read now), else `password`.
    pub fn password(&self) -> Result<Option<Secret>, KeyedSecretError> {
        match &self.password_file {
            Some(f) => read_secret(f, "mqtt.password_file").map(Some),
            None => Ok(self.password.clone()),
        }
    }
}

/// A secret (password, token): its `Debug` never shows it, so it cannot reach a log line or
/// an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from its text.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// A string. Anything else is refused without quoting it (serde's own error for a
    /// wrong type would show the value).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        struct V;
        fn refuse<E: serde::de::Error>() -> E {
            E::custom("a secret must be a quoted string")
        }
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a quoted string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(refuse())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse())
            }
        }
        d.deserialize_any(V)
    }
}

/// A secret file that cannot be used: the file and why, never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file holds nothing.
    #[error("{} is empty", path.display())]
    Empty {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// A secret file that cannot be used, with the config key that names it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct KeyedSecretError {
    /// The config key.
    pub key: &'static str,
    /// What is wrong with the file.
    #[source]
    pub source: SecretError,
}

/// Read a secret file (one trailing newline ignored); the error names `key` and the file,
/// never the content.
pub fn read_secret(path: &Path, key: &'static str) -> Result<Secret, KeyedSecretError> {
    read_secret_file(path).map_err(|source| KeyedSecretError { key, source })
}

/// [`read_secret`], its error not naming a key.
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Secret(text.to_owned()))
}

/// A `[mqtt.tls]` or `[kafka.tls]` table: whom to trust, and who weir is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of the CA certificates to trust; default: the system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// weir's certificate chain (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM: PKCS#8, SEC1 or RSA).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// MQTT only: the name the broker's certificate must carry; default: the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl Tls {
    fn check(&self, table: &str) -> Result<(), (String, String)> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err((
                format!("{table}.key_file"),
                "cert_file is set without key_file: add the client certificate's private key"
                    .into(),
            )),
            (None, Some(_)) => Err((
                format!("{table}.cert_file"),
                "key_file is set without cert_file: add the client certificate".into(),
            )),
            _ => Ok(()),
        }
    }

    fn resolve(&mut self, base: &Path) {
        for f in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            anchor(f, base);
        }
    }
}

/// The `[admin]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, the `/v1` API).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer tokens of the `/v1` API: `SECRET` (named `admin`) or `NAME:SECRET,...`; the
    /// name is recorded in the audit trail. Set it from the environment
    /// (`WEIR_ADMIN_TOKEN`) or `token_file`, not in the config. Required unless `listen` is
    /// a loopback address.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the tokens (as `token`, or one per line), read again at each `/v1`
    /// request that carries a token: tokens can be rotated without a restart.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS: `cert_file` and `key_file` (PEM) of the listener; `ca_file` and
    /// `server_name` do not apply.
    #[serde(default)]
    pub tls: Option<Tls>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
            token: None,
            token_file: None,
            tls: None,
        }
    }
}

impl Admin {
    /// The tokens of `token` (or `WEIR_ADMIN_TOKEN`) as `(name, secret)`; none without it.
    /// A `token_file` is read by the admin listener ([`read_token_file`]), at each request.
    pub fn tokens(&self) -> Result<Vec<(String, String)>, String> {
        self.token.as_ref().map_or(Ok(Vec::new()), parse_tokens)
    }
}

/// The config key of the admin token file, for messages.
pub const TOKEN_FILE: &str = "admin.token_file";

/// Read an admin token file: its tokens (at least one, each well formed) and its text.
pub fn read_token_file(file: &Path) -> Result<(Vec<(String, String)>, Secret), String> {
    let text = read_secret_file(file).map_err(|e| e.to_string())?;
    let tokens = parse_tokens(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if tokens.is_empty() {
        return Err(format!(
            "{} holds no token: write NAME:SECRET, one per line or separated by commas",
            file.display()
        ));
    }
    Ok((tokens, text))
}

/// `SECRET` (named `admin`) or `NAME:SECRET` entries, separated by commas or newlines, as
/// `(name, secret)` pairs. An error (which never shows a secret) for an empty name, a
/// secret shorter than 16 characters, or one with a space or control character in it
/// (no bearer token could match it).
pub fn parse_tokens(text: &Secret) -> Result<Vec<(String, String)>, String> {
    let tokens: Vec<(String, String)> = text
        .expose()
        .split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once(':') {
            Some((name, secret)) => (name.trim().to_owned(), secret.trim().to_owned()),
            None => ("admin".to_owned(), t.to_owned()),
        })
        .collect();
    for (name, secret) in &tokens {
        if name.is_empty() || secret.chars().count() < 16 {
            return Err(format!(
                "the token named {name:?} is empty or shorter than 16 characters; use a long random secret"
            ));
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "the token named {name:?} has a space or control character in its secret, which no bearer token can carry; separate tokens with commas or newlines"
            ));
        }
    }
    Ok(tokens)
}

/// The `[kafka]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kafka {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    /// Any librdkafka producer property (idempotence and acks=all are always on).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// TLS to the brokers (`security.protocol` SSL, or SASL_SSL with `sasl`).
    #[serde(default)]
    pub tls: Option<Tls>,
    /// SASL authentication.
    #[serde(default)]
    pub sasl: Option<Sasl>,
}

/// The `[kafka.sasl]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// The Kafka principal's name.
    pub username: String,
    /// Its password; better from the environment (`WEIR_KAFKA_SASL_PASSWORD`) or
    /// `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored), read when a Kafka client is
    /// created; long-lived clients re-read it and log in with a changed password from their
    /// next connection (see `credentials`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// A SASL mechanism librdkafka speaks without extra libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// Name and password in the clear (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// Prefixes of the librdkafka properties that concern the connection rather than producing:
/// every client weir makes takes them, and `kafka.tls` / `kafka.sasl` set them (so in
/// `kafka.properties` as well they would contradict those tables).
const SECURITY_PREFIXES: [&str; 3] = ["security.", "ssl.", "sasl."];

fn is_security_property(key: &str) -> bool {
    SECURITY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// A path from the config, relative to the config file's directory unless absolute.
fn anchor(path: &mut PathBuf, base: &Path) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

impl Kafka {
    /// The librdkafka properties of a connection to the brokers: `bootstrap.servers`, then
    /// what `tls` and `sasl` say (reading the SASL password file now), then the
    /// `properties` that concern the connection (`security.*`, `ssl.*`, `sasl.*`). Every
    /// client weir makes (producer, readers, control) connects this way.
    pub fn connection_properties(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = vec![("bootstrap.servers".to_owned(), self.bootstrap.clone())];
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => None,
            (Some(_), None) => Some("SSL"),
            (None, Some(_)) => Some("SASL_PLAINTEXT"),
            (Some(_), Some(_)) => Some("SASL_SSL"),
        };
        if let Some(p) = protocol {
            out.push(("security.protocol".into(), p.into()));
        }
        if let Some(tls) = &self.tls {
            let files = [
                ("ssl.ca.location", &tls.ca_file),
                ("ssl.certificate.location", &tls.cert_file),
                ("ssl.key.location", &tls.key_file),
            ];
            for (prop, file) in files {
                if let Some(f) = file {
                    out.push((prop.into(), f.display().to_string()));
                }
            }
            if tls.ca_file.is_none() {
                out.push(("ssl.ca.location".into(), "probe".into()));
            }
        }
        if let Some(sasl) = &self.sasl {
            let mechanism = match sasl.mechanism {
                SaslMechanism::Plain => "PLAIN",
                SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            };
            let password = match &sasl.password_file {
                Some(f) => read_secret(f, "kafka.sasl.password_file").map_err(|e| e.to_string())?,
                None => sasl.password.clone().ok_or(
                    "kafka.sasl: no password: set WEIR_KAFKA_SASL_PASSWORD or kafka.sasl.password_file",
                )?,
            };
            out.push(("sasl.mechanism".into(), mechanism.into()));
            out.push(("sasl.username".into(), sasl.username.clone()));
            out.push(("sasl.password".into(), password.expose().to_owned()));
        }
        out.extend(
            self.properties
                .iter()
                .filter(|(k, _)| is_security_property(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        Ok(out)
    }
}

/// Subject naming strategy, as Confluent names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectStrategy {
    /// `<topic>-value`.
    Topic,
    /// `<record full name>`.
    Record,
    /// `<topic>-<record full name>`.
    TopicRecord,
}

/// The `[registry]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-API schema registry.
    pub url: String,
    /// How subjects are named.
    #[serde(default = "default_strategy")]
    pub subject_strategy: SubjectStrategy,
    /// Register plugin schemas (true) or only look them up (false).
    #[serde(default = "default_true")]
    pub auto_register: bool,
    /// A file whose first line is the credential weir presents: `basic USER:PASSWORD` or
    /// `bearer TOKEN` (relative to the config file); read at start-up.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The credential read from `credentials_file`.
    #[serde(skip)]
    pub credential: Option<weir_registry::auth::Credential>,
}

/// The `[output]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Where failed messages go, with an error envelope.
    #[serde(default = "default_quarantine")]
    pub quarantine_topic: String,
    /// If set, every message is also written here untouched, before transform.
    #[serde(default)]
    pub raw_topic: Option<String>,
    /// Messages per plugin call.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest a message waits for its batch to fill, milliseconds.
    #[serde(default = "default_batch_wait")]
    pub batch_wait_ms: u64,
    /// On SIGTERM/SIGINT, how long weir waits for in-flight messages to be written and
    /// acknowledged before it disconnects anyway (what is left stays with the broker).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_s: u64,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            quarantine_topic: default_quarantine(),
            raw_topic: None,
            batch_size: default_batch(),
            batch_wait_ms: default_batch_wait(),
            shutdown_timeout_s: default_shutdown_timeout(),
        }
    }
}

/// The `[plugins]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    /// Directory of plugin `.wasm` components (relative to the config file); every file in
    /// it is put in the store at start-up.
    pub dir: PathBuf,
    /// The plugin store: components by sha256 (relative to the config file).
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// The Kafka topic holding uploads, pins and the audit trail, every record kept for good.
    #[serde(default = "default_control_topic")]
    pub control_topic: String,
    /// The key this process signs its control-topic entries with (ed25519, base64; made
    /// on first use, mode 0600). Default: `signing.key` in the store.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Other keys whose control-topic entries this process applies, as
    /// `NAME:PUBLIC_KEY`; its own key is always trusted.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

impl Plugins {
    /// The signing key's file.
    pub fn signing_key(&self) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| self.store.join("signing.key"))
    }
}

fn default_store() -> PathBuf {
    PathBuf::from("weir-store")
}

fn default_control_topic() -> String {
    "weir.control".into()
}

/// One `[[cohort]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    /// Name, carried in the `weir.cohort` header.
    pub name: String,
    /// MQTT topic filter (`+` and `#` wildcards).
    pub topic: String,
    /// User properties that must match (`*` matches any run of characters).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Pinned plugin, `name@version`.
    pub plugin: String,
    /// Kafka topic for its records.
    pub output_topic: String,
    /// Key template: text with `{topic[N]}` (topic level N, from 0), `{key}` (the key the
    /// plugin set) or `{field.NAME}` (a top-level record field). Empty: the plugin's key.
    #[serde(default)]
    pub key: String,
    /// `key`, parsed (once, when the config is read).
    #[serde(skip)]
    pub key_template: weir_core::route::KeyTemplate,
    /// Plugin config, passed to its `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// This cohort's plugin time budget per message, ms (default: the host's,
    /// `--plugin-time-ms`). A message over it is quarantined as `plugin.timeout`.
    #[serde(default)]
    pub plugin_time_ms: Option<u64>,
    /// This cohort's plugin memory cap, MiB; at most the host's (`--plugin-memory-mib`).
    #[serde(default)]
    pub plugin_memory_mib: Option<usize>,
    /// Most bytes the records of one message may total, KiB (values, keys and headers, each
    /// record counting 64 bytes and each header 48 besides); at most the host's
    /// (`--plugin-output-kib`). More is quarantined as `plugin.output-too-large`.
    #[serde(default)]
    pub plugin_output_kib: Option<usize>,
    /// The `[[group]]` this cohort belongs to (default: [`DEFAULT_GROUP`]).
    #[serde(default)]
    pub group: Option<String>,
}

impl Cohort {
    /// The cohort's `config` table as the plugin's `init` receives it.
    pub fn settings(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn default_client_id() -> String {
    "weir".into()
}
fn default_protocol() -> Protocol {
    Protocol::V5
}
fn default_slot_timeout() -> u16 {
    10
}
fn default_session_expiry() -> u32 {
    24 * 3600
}
/// The problem with a rate limit of 0.
const NO_ZERO_RATE: &str =
    "must be at least 1 (0 would never take a message); leave it out for no limit";

fn default_in_flight() -> u16 {
    1000
}
fn default_keep_alive() -> u16 {
    30
}
fn default_strategy() -> SubjectStrategy {
    SubjectStrategy::Topic
}
fn default_true() -> bool {
    true
}
fn default_quarantine() -> String {
    "weir.quarantine".into()
}
fn default_batch() -> usize {
    64
}
fn default_batch_wait() -> u64 {
    5
}
/// Under the stop grace periods of common supervisors (Docker 10 s, Kubernetes 30 s), so
/// a drain ends on weir's terms, not by SIGKILL.
fn default_shutdown_timeout() -> u64 {
    8
}
fn default_retain() -> RetainHandling {
    RetainHandling::NewSubscription
}
fn default_max_message() -> usize {
    960_000
}
fn default_admin_listen() -> String {
    "127.0.0.1:9900".into()
}

fn de_retain<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RetainHandling, D::Error> {
    match String::deserialize(d)?.as_str() {
        "always" => Ok(RetainHandling::Always),
        "new-subscription" => Ok(RetainHandling::NewSubscription),
        "never" => Ok(RetainHandling::Never),
        other => Err(serde::de::Error::custom(format!(
            "retain_handling {other:?}: expected \"new-subscription\", \"always\" or \"never\""
        ))),
    }
}

/// Check a Kafka topic name: 1 to 249 characters of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
pub fn check_kafka_topic(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "Kafka topic {name:?} must be 1 to 249 characters long"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("Kafka topic {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "Kafka topic {name:?} contains {c:?}; use letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

fn de_protocol<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        N(i64),
        S(String),
    }
    match P::deserialize(d)? {
        P::N(5) => Ok(Protocol::V5),
        P::S(s) if s == "5" || s == "5.0" => Ok(Protocol::V5),
        P::S(s) if s == "3.1.1" || s == "4" => Ok(Protocol::V311),
        P::N(4) => Ok(Protocol::V311),
        _ => Err(serde::de::Error::custom("expected 5 or \"3.1.1\"")),
    }
}

const OVERRIDABLE: [&str; 6] = ["mqtt", "kafka", "registry", "output", "plugins", "admin"];
/// Environment variables of other commands' flags (`weir plugin --admin`, `weir registry
/// serve`) that look like overrides but are not config keys: a shell that sets them for
/// the CLI can still start `weir run`.
const CLI_ONLY: [&str; 7] = [
    "WEIR_ADMIN_URL",
    "WEIR_ADMIN_CA",
    "WEIR_REGISTRY_LISTEN",
    "WEIR_REGISTRY_DATA_DIR",
    "WEIR_REGISTRY_MAX_BODY",
    "WEIR_REGISTRY_MAX_CONCURRENT",
    "WEIR_REGISTRY_SERVE_CREDENTIALS_FILE",
];
/// Tables inside those, overridden as `WEIR_<TABLE>_<SUB>_<KEY>` (`WEIR_KAFKA_SASL_PASSWORD`).
const NESTED: [(&str, &str); 4] = [
    ("mqtt", "tls"),
    ("kafka", "tls"),
    ("kafka", "sasl"),
    ("admin", "tls"),
];

impl Config {
    /// Read, apply environment overrides, parse and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            problem: format!("cannot read the config file: {e}"),
        })?;
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let mut config = Self::parse(&file, &text, &vars)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let Config {
            plugins,
            mqtt,
            kafka,
            admin,
            registry,
            ..
        } = &mut config;
        let files = [
            Some(&mut plugins.dir),
            Some(&mut plugins.store),
            mqtt.password_file.as_mut(),
            kafka.sasl.as_mut().and_then(|s| s.password_file.as_mut()),
            admin.token_file.as_mut(),
            registry.credentials_file.as_mut(),
            plugins.signing_key_file.as_mut(),
        ];
        for f in files.into_iter().flatten() {
            anchor(f, base);
        }
        for tls in [&mut mqtt.tls, &mut kafka.tls, &mut admin.tls]
            .into_iter()
            .flatten()
        {
            tls.resolve(base);
        }
        if let Some(path) = &config.registry.credentials_file {
            let credentials =
                weir_registry::auth::Credentials::read(path).map_err(|e| ConfigError {
                    file: file.clone(),
                    key: "registry.credentials_file".into(),
                    problem: e.to_string(),
                })?;
            config.registry.credential = credentials.all().first().cloned();
        }
        Ok(config)
    }

    /// Parse config text with the given environment.
    pub fn parse(file: &str, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let err = |key: &str, problem: String| ConfigError {
            file: file.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("-", format!("not valid TOML: {}", e.message())))?;
        apply_env(&mut table, env).map_err(|(key, problem)| err(&key, problem))?;
        let config: Config = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            let msg = e.message().to_owned();
            let key = msg
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "-".into());
            err(&key, format!("{msg}; see examples/weir.toml for every key"))
        })?;
        let mut config = config;
        config
            .check()
            .and_then(|()| config.parse_key_templates())
            .map_err(|(key, problem)| err(&key, problem))?;
        Ok(config)
    }

    /// Parse every cohort's key template into its type, where an error names the cohort.
    fn parse_key_templates(&mut self) -> Result<(), (String, String)> {
        for (i, c) in self.cohorts.iter_mut().enumerate() {
            c.key_template = weir_core::route::KeyTemplate::parse(&c.key)
                .map_err(|e| (format!("cohort[{i}].key"), e.to_string()))?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), (String, String)> {
        self.check_mqtt_connection()?;
        self.check_kafka_connection()?;
        self.check_admin_tls()?;
        self.check_mqtt_session()?;
        self.check_output()?;
        self.check_admin_access()?;
        self.check_writes()?;
        self.check_admin_listen()?;
        self.check_cohorts()?;
        Ok(())
    }

    /// The broker's URL, TLS and login.
    fn check_mqtt_connection(&self) -> Result<(), (String, String)> {
        let tls_url = self.mqtt.url.starts_with("mqtts://");
        if !tls_url && !self.mqtt.url.starts_with("mqtt://") && !self.mqtt.url.starts_with("tcp://")
        {
            return Err((
                "mqtt.url".into(),
                format!(
                    "{:?} is not an mqtt://host:port or mqtts://host:port URL",
                    self.mqtt.url
                ),
            ));
        }
        if let Some(tls) = &self.mqtt.tls {
            if !tls_url {
                return Err((
                    "mqtt.tls".into(),
                    format!(
                        "TLS is configured but mqtt.url {:?} is not mqtts://: use mqtts://host:port, or remove [mqtt.tls]",
                        self.mqtt.url
                    ),
                ));
            }
            tls.check("mqtt.tls")?;
        }
        if self.mqtt.password.is_some() && self.mqtt.password_file.is_some() {
            return Err((
                "mqtt.password_file".into(),
                "both mqtt.password and mqtt.password_file are set: keep one".into(),
            ));
        }
        Ok(())
    }

    /// Kafka's TLS, SASL and the properties they govern.
    fn check_kafka_connection(&self) -> Result<(), (String, String)> {
        if let Some(tls) = &self.kafka.tls {
            tls.check("kafka.tls")?;
            if tls.server_name.is_some() {
                return Err((
                    "kafka.tls.server_name".into(),
                    "not supported for Kafka: librdkafka checks each broker's certificate against the host name the cluster advertises".into(),
                ));
            }
        }
        if let Some(sasl) = &self.kafka.sasl {
            if sasl.mechanism == SaslMechanism::Plain && self.kafka.tls.is_none() {
                return Err((
                    "kafka.sasl.mechanism".into(),
                    "PLAIN without [kafka.tls] would send the password in the clear: add [kafka.tls], or use SCRAM-SHA-256/512".into(),
                ));
            }
            match (&sasl.password, &sasl.password_file) {
                (Some(_), Some(_)) => {
                    return Err((
                        "kafka.sasl.password_file".into(),
                        "both kafka.sasl.password and kafka.sasl.password_file are set: keep one"
                            .into(),
                    ));
                }
                (None, None) => {
                    return Err((
                        "kafka.sasl.password".into(),
                        "no password: set WEIR_KAFKA_SASL_PASSWORD or kafka.sasl.password_file"
                            .into(),
                    ));
                }
                _ => {}
            }
        }
        if self.kafka.tls.is_some() || self.kafka.sasl.is_some() {
            for k in self.kafka.properties.keys() {
                if is_security_property(k) {
                    return Err((
                        format!("kafka.properties.{k}"),
                        "contradicts [kafka.tls] / [kafka.sasl]: configure the connection's security in one place".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The admin listener's HTTPS.
    fn check_admin_tls(&self) -> Result<(), (String, String)> {
        if let Some(tls) = &self.admin.tls {
            if tls.cert_file.is_none() {
                return Err((
                    "admin.tls.cert_file".into(),
                    "HTTPS needs the listener's certificate (cert_file) and key (key_file)".into(),
                ));
            }
            tls.check("admin.tls")?;
        }
        Ok(())
    }

    /// Subscriptions, in-flight budget, slots, rate, groups, keep-alive, message size.
    fn check_mqtt_session(&self) -> Result<(), (String, String)> {
        if self.mqtt.subscriptions.is_empty() && self.groups.is_empty() {
            return Err((
                "mqtt.subscriptions".into(),
                "no subscriptions: add at least one topic filter".into(),
            ));
        }
        for (i, s) in self.mqtt.subscriptions.iter().enumerate() {
            weir_core::route::check_filter(unshared(s))
                .map_err(|e| (format!("mqtt.subscriptions[{i}]"), e.to_string()))?;
        }
        if self.mqtt.max_in_flight == 0 {
            return Err(("mqtt.max_in_flight".into(), "must be at least 1".into()));
        }
        self.check_slots()?;
        if self.mqtt.slots.is_none() && self.group_plans().iter().any(|p| p.mqtt.exactly_once) {
            self.check_topic_names()?;
        }
        if self.mqtt.max_messages_per_s == Some(0) {
            return Err(("mqtt.max_messages_per_s".into(), NO_ZERO_RATE.into()));
        }
        self.check_groups()?;
        if self.mqtt.keep_alive_s < 5 {
            return Err((
                "mqtt.keep_alive_s".into(),
                format!(
                    "{} is too short: use at least 5 seconds",
                    self.mqtt.keep_alive_s
                ),
            ));
        }
        if !(1024..=weir_core::message::MQTT_MAX_REMAINING).contains(&self.mqtt.max_message_bytes) {
            return Err((
                "mqtt.max_message_bytes".into(),
                format!(
                    "{} is out of range: use 1024 to {} (MQTT's largest packet)",
                    self.mqtt.max_message_bytes,
                    weir_core::message::MQTT_MAX_REMAINING
                ),
            ));
        }
        Ok(())
    }

    /// Batches, the quarantine and control topics, trusted keys.
    fn check_output(&self) -> Result<(), (String, String)> {
        if self.output.batch_size == 0 {
            return Err(("output.batch_size".into(), "must be at least 1".into()));
        }
        // A `[[group]]` with a smaller budget takes smaller batches; `[mqtt]`'s own must
        // hold a whole batch.
        if self.output.batch_size > usize::from(self.mqtt.max_in_flight) {
            return Err((
                "output.batch_size".into(),
                format!(
                    "{} is larger than mqtt.max_in_flight ({}): a batch can never fill; lower output.batch_size or raise mqtt.max_in_flight",
                    self.output.batch_size, self.mqtt.max_in_flight
                ),
            ));
        }
        check_kafka_topic(&self.output.quarantine_topic)
            .map_err(|e| ("output.quarantine_topic".to_owned(), e))?;
        check_kafka_topic(&self.plugins.control_topic)
            .map_err(|e| ("plugins.control_topic".to_owned(), e))?;
        crate::signing::Trust::parse(&self.plugins.trusted_keys)
            .map_err(|e| ("plugins.trusted_keys".to_owned(), e))?;
        Ok(())
    }

    /// Who may reach the admin API: tokens, or a loopback listener.
    fn check_admin_access(&self) -> Result<(), (String, String)> {
        let loopback = self
            .admin
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
            || self.admin.listen.starts_with("localhost:");
        if self.admin.token.is_some() && self.admin.token_file.is_some() {
            return Err((
                "admin.token_file".into(),
                "both admin.token (or WEIR_ADMIN_TOKEN) and admin.token_file are set: keep one (WEIR_ADMIN_TOKEN is also the CLI's --token: unset it in weir run's environment, or drop token_file)"
                    .into(),
            ));
        }
        // A token file is read when weir starts (its path is relative to the config file,
        // which is not known here) and at each request that carries a token.
        let tokens = self
            .admin
            .tokens()
            .map_err(|e| ("admin.token".to_owned(), e))?;
        if !loopback && tokens.is_empty() && self.admin.token_file.is_none() {
            return Err((
                "admin.listen".into(),
                format!(
                    "{} is not a loopback address and no admin token is set: anyone who reaches it could replace plugins; set WEIR_ADMIN_TOKEN (NAME:SECRET) or admin.token_file, or listen on 127.0.0.1",
                    self.admin.listen
                ),
            ));
        }
        Ok(())
    }

    /// The raw topic, and Kafka properties that would expire writes.
    fn check_writes(&self) -> Result<(), (String, String)> {
        if let Some(raw) = &self.output.raw_topic {
            check_kafka_topic(raw).map_err(|e| ("output.raw_topic".to_owned(), e))?;
        }
        for key in ["message.timeout.ms", "delivery.timeout.ms"] {
            if let Some(v) = self.kafka.properties.get(key)
                && v.trim() != "0"
            {
                return Err((
                    format!("kafka.properties.{key}"),
                    format!(
                        "{v:?}: weir waits out a Kafka outage of any length (a message stays unacknowledged at the MQTT broker until Kafka has it), so writes never expire; remove this property"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The admin listener's address.
    fn check_admin_listen(&self) -> Result<(), (String, String)> {
        if self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "admin.listen".into(),
                format!(
                    "{:?} is not an address like 127.0.0.1:9900",
                    self.admin.listen
                ),
            ));
        }
        Ok(())
    }

    /// Every `[[cohort]]`: name, topic, plugin, output topic, key, limits.
    fn check_cohorts(&self) -> Result<(), (String, String)> {
        if self.cohorts.is_empty() {
            return Err((
                "cohort".into(),
                "no [[cohort]] tables: add one per device cohort".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.cohorts.iter().enumerate() {
            let at = |k: &str| format!("cohort[{i}].{k}");
            if !names.insert(&c.name) {
                return Err((
                    at("name"),
                    format!("cohort name {:?} is used twice", c.name),
                ));
            }
            weir_core::route::check_filter(&c.topic).map_err(|e| (at("topic"), e.to_string()))?;
            if c.plugin
                .split_once('@')
                .is_none_or(|(n, v)| n.is_empty() || v.is_empty())
            {
                return Err((
                    at("plugin"),
                    format!(
                        "{:?} is not name@version (e.g. \"thermostat@1.0.0\")",
                        c.plugin
                    ),
                ));
            }
            check_kafka_topic(&c.output_topic).map_err(|e| (at("output_topic"), e))?;
            if c.plugin_time_ms.is_some_and(|t| !(1..=60_000).contains(&t)) {
                return Err((
                    at("plugin_time_ms"),
                    "out of range: use 1 to 60000 ms per message".into(),
                ));
            }
            if c.plugin_memory_mib == Some(0) {
                return Err((at("plugin_memory_mib"), "must be at least 1".into()));
            }
            if c.plugin_output_kib == Some(0) {
                return Err((at("plugin_output_kib"), "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

impl Config {
    /// How this process names itself (in cutover records and to Kafka): the client id, or,
    /// with scale-out slots, where every process runs the same config, the client id with
    /// the host and process id.
    pub fn process_name(&self) -> String {
        if self.mqtt.slots.is_none() {
            return self.mqtt.client_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{}@{host}:{}", self.mqtt.client_id, std::process::id())
    }

    /// The groups `weir run` runs, each with its session settings and cohorts: the default
    /// group (when `mqtt.subscriptions` is set) and every `[[group]]`, in config order.
    pub fn group_plans(&self) -> Vec<GroupPlan> {
        let members = |name: Option<&str>| -> Vec<usize> {
            self.cohorts
                .iter()
                .enumerate()
                .filter(|(_, c)| c.group.as_deref() == name)
                .map(|(i, _)| i)
                .collect()
        };
        let mut plans = Vec::with_capacity(self.groups.len() + 1);
        if !self.mqtt.subscriptions.is_empty() {
            plans.push(GroupPlan {
                name: DEFAULT_GROUP.into(),
                mqtt: self.mqtt.clone(),
                cohorts: members(None),
                nice: 0,
            });
        }
        for g in &self.groups {
            let mut mqtt = self.mqtt.clone();
            mqtt.client_id = format!("{}-{}", self.mqtt.client_id, g.name);
            mqtt.subscriptions = g.subscriptions.clone();
            mqtt.max_in_flight = g.max_in_flight.unwrap_or(self.mqtt.max_in_flight);
            mqtt.max_messages_per_s = g.max_messages_per_s.or(self.mqtt.max_messages_per_s);
            mqtt.exactly_once = g.exactly_once.unwrap_or(self.mqtt.exactly_once);
            plans.push(GroupPlan {
                name: g.name.clone(),
                mqtt,
                cohorts: members(Some(&g.name)),
                nice: g.nice,
            });
        }
        plans
    }

    /// With slots or exactly once, the client id names Kafka topics (`weir.slots.<id>`,
    /// `weir.sessions.<id>`): it must be a topic name's characters, and short enough.
    fn check_topic_names(&self) -> Result<(), (String, String)> {
        let id = &self.mqtt.client_id;
        if id.is_empty()
            || id.len() > 180
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                "mqtt.client_id".into(),
                format!(
                    "{id:?}: with mqtt.slots or exactly_once it names Kafka topics (weir.slots.<client_id>, weir.sessions.<client_id>); use 1 to 180 letters, digits, `-`, `_` and `.`"
                ),
            ));
        }
        for plan in self.group_plans() {
            let topic = sessions_topic(&plan.mqtt.client_id);
            if topic.len() > 249 {
                let key = if plan.name == DEFAULT_GROUP {
                    "mqtt.client_id".to_owned()
                } else {
                    self.group_key(&plan.name, "name")
                };
                return Err((
                    key,
                    format!(
                        "the topic {topic:?} would be longer than Kafka's 249 characters: shorten mqtt.client_id or the group's name"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Slots need a session per slot that shares the stream with the others (a shared
    /// subscription), client ids that name a Kafka topic, and a timeout Kafka can keep.
    fn check_slots(&self) -> Result<(), (String, String)> {
        let Some(n) = self.mqtt.slots else {
            return Ok(());
        };
        if !(1..=MAX_SLOTS).contains(&n) {
            return Err((
                "mqtt.slots".into(),
                format!("{n} is out of range: use 1 to {MAX_SLOTS}"),
            ));
        }
        if !(1..=1800).contains(&self.mqtt.slot_timeout_s) {
            return Err((
                "mqtt.slot_timeout_s".into(),
                format!(
                    "{} is out of range: use 1 to 1800 seconds (and within the broker's group.min/max.session.timeout.ms)",
                    self.mqtt.slot_timeout_s
                ),
            ));
        }
        self.check_topic_names()?;
        if n > 1 {
            let plans = self.group_plans();
            for plan in &plans {
                if let Some((j, s)) = plan
                    .mqtt
                    .subscriptions
                    .iter()
                    .enumerate()
                    .find(|(_, s)| !s.starts_with("$share/"))
                {
                    return Err((
                        self.group_key(&plan.name, &format!("subscriptions[{j}]")),
                        format!(
                            "{s:?} is not a shared subscription: with mqtt.slots = {n} each of the {n} sessions would receive every message; use \"$share/<name>/{s}\""
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_groups(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            self.check_group(i, g, &mut names)?;
        }
        for (i, c) in self.cohorts.iter().enumerate() {
            match &c.group {
                Some(g) if !names.contains(g) => {
                    let known: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
                    return Err((
                        format!("cohort[{i}].group"),
                        format!(
                            "there is no [[group]] named {g:?} (groups: {}); add it, or leave `group` out for the default group",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
                None if self.mqtt.subscriptions.is_empty() => {
                    return Err((
                        format!("cohort[{i}].group"),
                        "this cohort is in the default group, whose session subscribes to nothing (mqtt.subscriptions is empty): name its group, or set mqtt.subscriptions".into(),
                    ));
                }
                _ => {}
            }
        }
        self.check_group_topics()
    }

    /// One `[[group]]`: its name, subscriptions, budgets, nice value, and that a cohort is
    /// in it.
    fn check_group<'a>(
        &self,
        i: usize,
        g: &'a Group,
        names: &mut std::collections::HashSet<&'a String>,
    ) -> Result<(), (String, String)> {
        let at = |k: &str| format!("group[{i}].{k}");
        if g.name.is_empty()
            || g.name.len() > 64
            || !g
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                at("name"),
                format!(
                    "{:?}: use 1 to 64 letters, digits, `-` and `_` (it becomes the MQTT client id's suffix)",
                    g.name
                ),
            ));
        }
        if g.name == DEFAULT_GROUP {
            return Err((
                at("name"),
                format!(
                    "{DEFAULT_GROUP:?} is the group of cohorts that name none ([mqtt]'s own session); choose another name"
                ),
            ));
        }
        if !names.insert(&g.name) {
            return Err((at("name"), format!("group name {:?} is used twice", g.name)));
        }
        if g.subscriptions.is_empty() {
            return Err((
                at("subscriptions"),
                "no subscriptions: a group's session needs at least one topic filter".into(),
            ));
        }
        for (j, s) in g.subscriptions.iter().enumerate() {
            weir_core::route::check_filter(unshared(s))
                .map_err(|e| (at(&format!("subscriptions[{j}]")), e.to_string()))?;
        }
        if g.max_in_flight == Some(0) {
            return Err((at("max_in_flight"), "must be at least 1".into()));
        }
        if g.max_messages_per_s == Some(0) {
            return Err((at("max_messages_per_s"), NO_ZERO_RATE.into()));
        }
        if g.nice > MAX_NICE {
            return Err((
                at("nice"),
                format!(
                    "{} is past {MAX_NICE}, the highest nice value there is; use 0 (as weir) to {MAX_NICE} (only what the others leave)",
                    g.nice
                ),
            ));
        }
        if !self
            .cohorts
            .iter()
            .any(|c| c.group.as_deref() == Some(&g.name))
        {
            return Err((
                at("name"),
                format!(
                    "no cohort is in group {:?}: everything its session receives would be quarantined as unrouted; add `group = {:?}` to its cohorts, or remove the group",
                    g.name, g.name
                ),
            ));
        }
        Ok(())
    }

    /// No two groups' subscriptions overlap (a message would be written twice), and each
    /// cohort's topic is covered by its group's subscriptions.
    fn check_group_topics(&self) -> Result<(), (String, String)> {
        let plans = self.group_plans();
        for (a, ga) in plans.iter().enumerate() {
            for gb in &plans[a + 1..] {
                for fa in &ga.mqtt.subscriptions {
                    if let Some(fb) =
                        gb.mqtt.subscriptions.iter().find(|fb| {
                            weir_core::route::filters_overlap(unshared(fa), unshared(fb))
                        })
                    {
                        return Err((
                            self.group_key(&gb.name, "subscriptions"),
                            format!(
                                "{fb:?} overlaps group {:?}'s {fa:?}: a message on both would be taken by both sessions and written twice; give each group its own topics",
                                ga.name
                            ),
                        ));
                    }
                }
            }
            for &ci in &ga.cohorts {
                let c = &self.cohorts[ci];
                if !ga
                    .mqtt
                    .subscriptions
                    .iter()
                    .any(|f| weir_core::route::filters_overlap(unshared(f), &c.topic))
                {
                    return Err((
                        format!("cohort[{ci}].topic"),
                        format!(
                            "{:?} is not covered by any of group {:?}'s subscriptions ({}): its messages would never arrive; subscribe to it in {}",
                            c.topic,
                            ga.name,
                            ga.mqtt.subscriptions.join(", "),
                            self.group_key(&ga.name, "subscriptions")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// Where a group's `key` lives in the file: `mqtt.KEY` or `group[N].KEY`.
    fn group_key(&self, group: &str, key: &str) -> String {
        match self.groups.iter().position(|g| g.name == group) {
            Some(i) => format!("group[{i}].{key}"),
            None => format!("mqtt.{key}"),
        }
    }
}

/// The topic filter of a subscription, without a `$share/<name>/` prefix.
fn unshared(s: &str) -> &str {
    s.strip_prefix("$share/")
        .and_then(|r| r.split_once('/').map(|(_, f)| f))
        .unwrap_or(s)
}

/// An environment value as TOML would read it (numbers, booleans, arrays), else a string.
fn toml_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

/// Apply `WEIR_<TABLE>_<KEY>`, `WEIR_COHORT_<N>_<KEY>` and `WEIR_KAFKA_PROPERTY_<NAME>`
/// overrides.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), (String, String)> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("WEIR_") else {
            continue;
        };
        if CLI_ONLY.contains(&name.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        if let Some(prop) = rest.strip_prefix("kafka_property_") {
            if let Some(props) = table_at(table, &["kafka", "properties"]) {
                props.insert(prop.replace('_', "."), toml::Value::String(value.clone()));
            }
            continue;
        }
        if let Some((array, rest)) = ["cohort", "group"]
            .into_iter()
            .find_map(|a| Some((a, rest.strip_prefix(a)?.strip_prefix('_')?)))
            && let Some((index, key)) = rest.split_once('_')
            && let Ok(index) = index.parse::<usize>()
        {
            override_item(table, (array, index, key), value)
                .map_err(|problem| (name.clone(), problem))?;
            continue;
        }
        // A secret stays text, whatever it looks like.
        let value = if rest.ends_with("password") || rest.ends_with("token") {
            toml::Value::String(value.clone())
        } else {
            toml_value(value)
        };
        if let Some((section, sub, key)) = NESTED.iter().find_map(|(section, sub)| {
            let key = rest.strip_prefix(&format!("{section}_{sub}_"))?;
            Some((section, sub, key))
        }) {
            if let Some(t) = table_at(table, &[section, sub]) {
                t.insert(key.to_owned(), value);
            }
            continue;
        }
        for section in OVERRIDABLE {
            let Some(key) = rest.strip_prefix(section).and_then(|k| k.strip_prefix('_')) else {
                continue;
            };
            if let Some(t) = table_at(table, &[section]) {
                t.insert(key.to_owned(), value.clone());
            }
        }
    }
    Ok(())
}

/// The table at `path`, made (empty) where missing; `None` if a key on the way holds
/// something else (the config's own check then reports it).
fn table_at<'a>(table: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Table> {
    let mut t = table;
    for key in path {
        t = t
            .entry(*key)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()?;
    }
    Some(t)
}

/// `WEIR_COHORT_<i>_<KEY>` / `WEIR_GROUP_<i>_<KEY>`: set `key` of item `index` of the
/// array of tables `array`, which must exist.
fn override_item(
    table: &mut toml::Table,
    (array, index, key): (&str, usize, &str),
    value: &str,
) -> Result<(), String> {
    let items = table.get_mut(array).and_then(|c| c.as_array_mut());
    let count = items.as_ref().map_or(0, |a| a.len());
    match items
        .and_then(|a| a.get_mut(index))
        .and_then(|c| c.as_table_mut())
    {
        Some(item) => {
            item.insert(key.to_owned(), toml_value(value));
            Ok(())
        }
        None => Err(format!(
            "there is no {array} {index} to override (the file has {count}, numbered from 0)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
subscriptions = ["plant/#"]
[kafka]
bootstrap = "127.0.0.1:9092"
[registry]
url = "http://127.0.0.1:8081"
[plugins]
dir = "plugins"
[[cohort]]
name = "t"
topic = "plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "telemetry.thermostat"
key = "{topic[3]}"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Config::parse("weir.toml", text, &env)
    }

    #[test]
    fn the_registry_credential_is_read_at_load_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("weir.toml");
        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:8081\"",
            "url = \"http://127.0.0.1:8081\"\ncredentials_file = \"creds\"",
        );
        std::fs::write(&config, text).unwrap();
        let err = Config::load(&config).unwrap_err();
        assert_eq!(err.key, "registry.credentials_file", "{err}");
        assert!(err.problem.contains("creds"), "{err}");
        std::fs::write(
            dir.path().join("creds"),
            "# weir's account\nbasic weir:pw\n",
        )
        .unwrap();
        let c = Config::load(&config).unwrap();
        assert_eq!(
            c.registry.credential.unwrap().header_value(),
            "Basic d2Vpcjpwdw=="
        );
    }

    #[test]
    fn minimal_config_gets_sensible_defaults() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!(c.mqtt.protocol, Protocol::V5);
        assert_eq!(c.mqtt.max_in_flight, 1000);
        assert_eq!(c.mqtt.retain_handling, RetainHandling::NewSubscription);
        assert_eq!(c.admin.listen, "127.0.0.1:9900");
        assert_eq!(c.output.shutdown_timeout_s, 8);
        assert_eq!(c.output.quarantine_topic, "weir.quarantine");
        assert_eq!(c.registry.subject_strategy, SubjectStrategy::Topic);
        assert!(c.registry.auto_register);
    }

    #[test]
    fn environment_overrides_keys() {
        let c = parse(
            MINIMAL,
            &[
                ("WEIR_MQTT_URL", "mqtt://10.0.0.1:1884"),
                ("WEIR_MQTT_MAX_IN_FLIGHT", "500"),
                ("WEIR_MQTT_PROTOCOL", "\"3.1.1\""),
                ("WEIR_KAFKA_BOOTSTRAP", "k:9093"),
                ("WEIR_KAFKA_PROPERTY_LINGER_MS", "20"),
                ("WEIR_REGISTRY_AUTO_REGISTER", "false"),
                ("WEIR_LOG", "debug"),
                ("WEIR_COHORT_0_PLUGIN", "thermostat@1.1.0"),
                ("WEIR_COHORT_0_OUTPUT_TOPIC", "t2"),
            ],
        )
        .unwrap();
        assert_eq!(c.mqtt.url, "mqtt://10.0.0.1:1884");
        assert_eq!(c.mqtt.max_in_flight, 500);
        assert_eq!(c.mqtt.protocol, Protocol::V311);
        assert_eq!(c.kafka.bootstrap, "k:9093");
        assert_eq!(c.kafka.properties["linger.ms"], "20");
        assert!(!c.registry.auto_register);
        assert_eq!(c.cohorts[0].plugin, "thermostat@1.1.0");
        assert_eq!(c.cohorts[0].output_topic, "t2");
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let e = parse(&MINIMAL.replace("thermostat@1.0.0", "thermostat"), &[]).unwrap_err();
        assert_eq!(e.key, "cohort[0].plugin");
        assert!(
            e.to_string().starts_with("weir.toml: cohort[0].plugin:"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("{topic[3]}", "{topic[x]}"), &[]).unwrap_err();
        assert_eq!(e.key, "cohort[0].key");
        let e = parse(&MINIMAL.replace("url = \"mqtt://", "uri = \"mqtt://"), &[]).unwrap_err();
        assert!(e.to_string().contains("uri"), "{e}");
        let e = parse(&MINIMAL.replace("plant/+/thermostat/+", "plant/#/x"), &[]).unwrap_err();
        assert_eq!(e.key, "cohort[0].topic");
        let e = parse("[mqtt", &[]).unwrap_err();
        assert!(e.to_string().contains("not valid TOML"));
        let e = parse(MINIMAL, &[("WEIR_COHORT_3_PLUGIN", "x@1")]).unwrap_err();
        assert_eq!(e.key, "WEIR_COHORT_3_PLUGIN");
        assert!(e.problem.contains("no cohort 3"), "{e}");
        let e = parse(MINIMAL, &[("WEIR_MQTT_MAX_IN_FLIGHT", "0")]).unwrap_err();
        assert_eq!(e.key, "mqtt.max_in_flight");
    }

    #[test]
    fn unworkable_settings_are_refused_at_start_up() {
        let e = parse(MINIMAL, &[("WEIR_MQTT_MAX_IN_FLIGHT", "8")]).unwrap_err();
        assert_eq!(e.key, "output.batch_size");
        assert!(e.problem.contains("max_in_flight"), "{e}");
        let e = parse(MINIMAL, &[("WEIR_MQTT_KEEP_ALIVE_S", "2")]).unwrap_err();
        assert_eq!(e.key, "mqtt.keep_alive_s");
        let e = parse(MINIMAL, &[("WEIR_OUTPUT_QUARANTINE_TOPIC", "bad topic!")]).unwrap_err();
        assert_eq!(e.key, "output.quarantine_topic");
        let e = parse(MINIMAL, &[("WEIR_OUTPUT_RAW_TOPIC", "..")]).unwrap_err();
        assert_eq!(e.key, "output.raw_topic");
        let e = parse(MINIMAL, &[("WEIR_COHORT_0_OUTPUT_TOPIC", &"x".repeat(250))]).unwrap_err();
        assert_eq!(e.key, "cohort[0].output_topic");
        let e = parse(
            MINIMAL,
            &[("WEIR_KAFKA_PROPERTY_MESSAGE_TIMEOUT_MS", "30000")],
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.properties.message.timeout.ms");
        assert!(parse(MINIMAL, &[("WEIR_KAFKA_PROPERTY_MESSAGE_TIMEOUT_MS", "0")]).is_ok());
        let e = parse(MINIMAL, &[("WEIR_MQTT_RETAIN_HANDLING", "sometimes")]).unwrap_err();
        assert!(e.to_string().contains("retain_handling"), "{e}");
        let c = parse(MINIMAL, &[("WEIR_MQTT_RETAIN_HANDLING", "never")]).unwrap();
        assert_eq!(c.mqtt.retain_handling, RetainHandling::Never);
        let e = parse(MINIMAL, &[("WEIR_ADMIN_LISTEN", "nowhere")]).unwrap_err();
        assert_eq!(e.key, "admin.listen");
        let e = parse(MINIMAL, &[("WEIR_MQTT_MAX_MESSAGE_BYTES", "10")]).unwrap_err();
        assert_eq!(e.key, "mqtt.max_message_bytes");
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_show() {
        let text = MINIMAL.replace(
            "bootstrap = \"127.0.0.1:9092\"",
            "bootstrap = \"127.0.0.1:9092\"\n[kafka.tls]\nca_file = \"/ca.pem\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"weir\"",
        );
        let c = parse(
            &text,
            &[
                ("WEIR_KAFKA_SASL_PASSWORD", "0815"),
                ("WEIR_MQTT_PASSWORD", "12345"),
            ],
        )
        .unwrap();
        assert_eq!(c.mqtt.password, Some(Secret::new("12345")));
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("12345") && !debug.contains("0815"),
            "{debug}"
        );
        let props = c.kafka.connection_properties().unwrap();
        let get = |k: &str| {
            props
                .iter()
                .find(|(p, _)| p == k)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(get("security.protocol"), "SASL_SSL");
        assert_eq!(get("sasl.mechanism"), "SCRAM-SHA-512");
        assert_eq!(get("sasl.password"), "0815");
        assert_eq!(get("ssl.ca.location"), "/ca.pem");

        // No password anywhere: a start-up error naming where to put it.
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.key, "kafka.sasl.password");
        // Security in two places contradicts itself.
        let e = parse(
            &text,
            &[
                ("WEIR_KAFKA_SASL_PASSWORD", "x"),
                ("WEIR_KAFKA_PROPERTY_SECURITY_PROTOCOL", "PLAINTEXT"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.properties.security.protocol");
    }

    #[test]
    fn tls_settings_are_checked_at_start_up() {
        let e = parse(MINIMAL, &[("WEIR_MQTT_TLS_CA_FILE", "/ca.pem")]).unwrap_err();
        assert_eq!(e.key, "mqtt.tls");
        assert!(e.problem.contains("mqtts://"), "{}", e.problem);
        let tls = [
            ("WEIR_MQTT_URL", "mqtts://broker:8883"),
            ("WEIR_MQTT_TLS_CERT_FILE", "/client.pem"),
        ];
        let e = parse(MINIMAL, &tls).unwrap_err();
        assert_eq!(e.key, "mqtt.tls.key_file");
        let c = parse(MINIMAL, &[("WEIR_MQTT_URL", "mqtts://broker:8883")]).unwrap();
        assert!(c.mqtt.tls.is_none(), "mqtts:// alone uses the system's CAs");
        let e = parse(MINIMAL, &[("WEIR_ADMIN_TLS_KEY_FILE", "/k.pem")]).unwrap_err();
        assert_eq!(e.key, "admin.tls.cert_file");
    }

    #[test]
    fn a_password_file_is_read_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = parse(MINIMAL, &[("WEIR_MQTT_PASSWORD_FILE", f.to_str().unwrap())]).unwrap();
        assert_eq!(c.mqtt.password().unwrap(), Some(Secret::new("s3cret")));
        std::fs::write(&f, "rotated").unwrap();
        assert_eq!(c.mqtt.password().unwrap(), Some(Secret::new("rotated")));
        std::fs::write(&f, "").unwrap();
        let e = c.mqtt.password().unwrap_err().to_string();
        assert!(
            e.contains("mqtt.password_file") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn the_secured_example_is_valid() {
        let text = include_str!("../../examples/weir-secure.toml");
        let c = parse(text, &[]).unwrap();
        assert!(c.admin.token_file.is_some() && c.admin.token.is_none());
        assert!(c.mqtt.url.starts_with("mqtts://") && c.mqtt.tls.is_some());
        assert!(c.kafka.sasl.is_some() && c.kafka.tls.is_some() && c.admin.tls.is_some());
        let meters = c.groups.iter().find(|g| g.name == "meters").unwrap();
        assert_eq!(meters.nice, 10);
    }

    /// Slots need shared subscriptions (each slot's session would otherwise get every
    /// message), a client id that can name their Kafka topic, and sane bounds; the process
    /// then names itself by host and pid, since every process runs the same config.
    #[test]
    fn slots_need_shared_subscriptions_and_a_topic_safe_client_id() {
        let slotted = MINIMAL.replace(
            "subscriptions = [\"plant/#\"]",
            "subscriptions = [\"$share/weir/plant/#\"]\nslots = 4",
        );
        let c = parse(&slotted, &[]).unwrap();
        assert_eq!(c.mqtt.slots, Some(4));
        assert_eq!(c.mqtt.slot_timeout_s, 10);
        assert!(
            c.process_name().starts_with("weir@"),
            "{}",
            c.process_name()
        );
        assert!(
            c.process_name()
                .ends_with(&format!(":{}", std::process::id()))
        );
        let e = parse(&MINIMAL.replace("[kafka]", "slots = 4\n[kafka]"), &[]).unwrap_err();
        assert_eq!(e.key, "mqtt.subscriptions[0]");
        assert!(e.problem.contains("$share/<name>/plant/#"), "{}", e.problem);
        // One slot needs no sharing: one process at a time holds it (active/standby).
        parse(&MINIMAL.replace("[kafka]", "slots = 1\n[kafka]"), &[]).unwrap();
        let e = parse(&slotted.replace("slots = 4", "slots = 0"), &[]).unwrap_err();
        assert_eq!(e.key, "mqtt.slots");
        let e = parse(
            &slotted.replace("slots = 4", "slots = 4\nslot_timeout_s = 0"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "mqtt.slot_timeout_s");
        let e = parse(
            &slotted.replace("slots = 4", "slots = 4\nclient_id = \"plant/weir\""),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "mqtt.client_id");
        assert!(e.problem.contains("weir.slots."), "{}", e.problem);
        // Without slots the process is its client id, as before.
        assert_eq!(parse(MINIMAL, &[]).unwrap().process_name(), "weir");
    }

    /// Exactly once is off by default, set in `[mqtt]` for every group that says nothing,
    /// and per group; its client id names the sessions topic, so it must be a topic's.
    #[test]
    fn exactly_once_is_chosen_per_group_and_needs_a_topic_safe_client_id() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert!(!c.group_plans()[0].mqtt.exactly_once);
        let on = MINIMAL.replace("[kafka]", "exactly_once = true\n[kafka]");
        let c = parse(&on, &[]).unwrap();
        assert!(c.group_plans()[0].mqtt.exactly_once);
        assert_eq!(sessions_topic("weir"), "weir.sessions.weir");
        let grouped = on.replace(
            "[[cohort]]",
            "[[group]]\nname = \"meters\"\nsubscriptions = [\"meters/#\"]\nexactly_once = false\n[[cohort]]",
        ) + "[[cohort]]\nname = \"m\"\ntopic = \"meters/+/frame\"\nplugin = \"meter@1.0.0\"\noutput_topic = \"telemetry.meter\"\ngroup = \"meters\"\n";
        let plans = parse(&grouped, &[]).unwrap().group_plans();
        assert!(plans[0].mqtt.exactly_once && !plans[1].mqtt.exactly_once);
        let e = parse(
            &on.replace("[kafka]", "client_id = \"plant weir\"\n[kafka]"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "mqtt.client_id");
        assert!(e.problem.contains("weir.sessions."), "{}", e.problem);
    }

    /// Admin tokens come from `token` (or the environment) or from `token_file`, not both;
    /// short ones are refused, by name and without showing them.
    #[test]
    fn admin_tokens_come_from_one_place_and_are_long() {
        let off_loopback =
            MINIMAL.replace("[kafka]", "[admin]\nlisten = \"0.0.0.0:9900\"\n[kafka]");
        let e = parse(&off_loopback, &[]).unwrap_err();
        assert_eq!(e.key, "admin.listen");
        assert!(e.problem.contains("admin.token_file"), "{}", e.problem);
        let with_file = off_loopback.replace(
            "listen = \"0.0.0.0:9900\"",
            "listen = \"0.0.0.0:9900\"\ntoken_file = \"tokens\"",
        );
        let c = parse(&with_file, &[]).unwrap();
        assert_eq!(c.admin.token_file.as_deref(), Some(Path::new("tokens")));
        let long = "ops:0123456789abcdef0123456789abcdef";
        let e = parse(&with_file, &[("WEIR_ADMIN_TOKEN", long)]).unwrap_err();
        assert_eq!(e.key, "admin.token_file");
        assert!(e.problem.contains("keep one"), "{}", e.problem);
        let e = parse(&off_loopback, &[("WEIR_ADMIN_TOKEN", "ops:short-secret")]).unwrap_err();
        assert_eq!(e.key, "admin.token");
        assert!(
            e.problem.contains("\"ops\"") && !e.problem.contains("short-secret"),
            "{}",
            e.problem
        );
        let two = format!("{long}, ci:fedcba9876543210fedcba");
        let c = parse(&off_loopback, &[("WEIR_ADMIN_TOKEN", two.as_str())]).unwrap();
        let names: Vec<_> = c
            .admin
            .tokens()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["ops", "ci"]);
        // A token file may hold one per line; a secret cannot have a space in it.
        let lines = Secret::new(format!("{long}\n ci : fedcba9876543210fedcba \n"));
        let tokens = parse_tokens(&lines).unwrap();
        assert_eq!(tokens[1], ("ci".into(), "fedcba9876543210fedcba".into()));
        let spaced = Secret::new("ops:0123456789abcdef 0123456789abcdef");
        let e = parse_tokens(&spaced).unwrap_err();
        assert!(e.contains("space") && !e.contains("0123"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, format!("{long}\n")).unwrap();
        assert_eq!(read_token_file(&file).unwrap().0[0].0, "ops");
        std::fs::write(&file, " , \n").unwrap();
        let e = read_token_file(&file).unwrap_err();
        assert!(e.contains("holds no token"), "{e}");
    }

    #[test]
    fn secrets_are_strings_and_plain_needs_tls() {
        let text = MINIMAL.replace(
            "subscriptions = [\"plant/#\"]",
            "subscriptions = [\"plant/#\"]\npassword = 31415.9",
        );
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.key, "-");
        assert!(
            e.problem.contains("quoted string") && !e.problem.contains("31415"),
            "{}",
            e.problem
        );
        let plain = MINIMAL.replace(
            "bootstrap = \"127.0.0.1:9092\"",
            "bootstrap = \"127.0.0.1:9092\"\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"",
        );
        let e = parse(&plain, &[("WEIR_KAFKA_SASL_PASSWORD", "x")]).unwrap_err();
        assert_eq!(e.key, "kafka.sasl.mechanism");
        // The CLI's own variables do not get in the way of `weir run`.
        parse(
            MINIMAL,
            &[
                ("WEIR_ADMIN_URL", "http://127.0.0.1:9900"),
                ("WEIR_ADMIN_CA", "/ca.pem"),
                ("WEIR_REGISTRY_LISTEN", "127.0.0.1:8081"),
            ],
        )
        .unwrap();
    }

    #[test]
    fn cohort_limits_are_checked() {
        let c = parse(
            MINIMAL,
            &[
                ("WEIR_COHORT_0_PLUGIN_TIME_MS", "5"),
                ("WEIR_COHORT_0_PLUGIN_MEMORY_MIB", "16"),
            ],
        )
        .unwrap();
        assert_eq!(c.cohorts[0].plugin_time_ms, Some(5));
        assert_eq!(c.cohorts[0].plugin_memory_mib, Some(16));
        let e = parse(MINIMAL, &[("WEIR_COHORT_0_PLUGIN_TIME_MS", "0")]).unwrap_err();
        assert_eq!(e.key, "cohort[0].plugin_time_ms");
        let e = parse(MINIMAL, &[("WEIR_COHORT_0_PLUGIN_MEMORY_MIB", "0")]).unwrap_err();
        assert_eq!(e.key, "cohort[0].plugin_memory_mib");
    }

    #[test]
    fn groups_get_their_own_sessions_and_bad_ones_are_refused() {
        let groups = MINIMAL.replace("subscriptions = [\"plant/#\"]\n", "")
            + "group = \"plant\"\n[[group]]\nname = \"plant\"\nsubscriptions = [\"plant/#\"]\nmax_in_flight = 8\n";
        let c = parse(&groups, &[]).unwrap();
        let plans = c.group_plans();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].name, "plant");
        assert_eq!(plans[0].mqtt.client_id, "weir-plant");
        assert_eq!(plans[0].mqtt.max_in_flight, 8);
        assert_eq!(plans[0].cohorts, vec![0]);
        // Two sessions taking the same messages would write them twice.
        let overlap = format!(
            "{}[[group]]\nname = \"other\"\nsubscriptions = [\"plant/+/thermostat/#\"]\n[[cohort]]\nname = \"o\"\ngroup = \"other\"\ntopic = \"plant/+/thermostat/x\"\nplugin = \"a@1\"\noutput_topic = \"o\"\n",
            groups
        );
        let e = parse(&overlap, &[]).unwrap_err();
        assert_eq!(e.key, "group[1].subscriptions");
        assert!(e.problem.contains("written twice"), "{e}");
        let unknown = MINIMAL.to_owned() + "group = \"nope\"\n";
        let e = parse(&unknown, &[]).unwrap_err();
        assert_eq!(e.key, "cohort[0].group");
        assert!(e.problem.contains("no [[group]] named \"nope\""), "{e}");
        let reserved = groups.replace("name = \"plant\"", "name = \"default\"");
        assert_eq!(parse(&reserved, &[]).unwrap_err().key, "group[0].name");
        let uncovered = groups.replace(
            "subscriptions = [\"plant/#\"]",
            "subscriptions = [\"yard/#\"]",
        );
        assert_eq!(parse(&uncovered, &[]).unwrap_err().key, "cohort[0].topic");
        let env = parse(&groups, &[("WEIR_GROUP_0_MAX_IN_FLIGHT", "4")]).unwrap();
        assert_eq!(env.groups[0].max_in_flight, Some(4));
        // A rate limit: the group's own, else [mqtt]'s, else none; never 0.
        assert_eq!(plans[0].mqtt.max_messages_per_s, None);
        let limited = parse(&groups, &[("WEIR_MQTT_MAX_MESSAGES_PER_S", "500")]).unwrap();
        assert_eq!(limited.group_plans()[0].mqtt.max_messages_per_s, Some(500));
        let own = parse(
            &groups,
            &[
                ("WEIR_MQTT_MAX_MESSAGES_PER_S", "500"),
                ("WEIR_GROUP_0_MAX_MESSAGES_PER_S", "20"),
            ],
        )
        .unwrap();
        assert_eq!(own.group_plans()[0].mqtt.max_messages_per_s, Some(20));
        let e = parse(&groups, &[("WEIR_GROUP_0_MAX_MESSAGES_PER_S", "0")]).unwrap_err();
        assert_eq!(e.key, "group[0].max_messages_per_s");
        assert!(e.problem.contains("leave it out for no limit"), "{e}");
        let e = parse(&groups, &[("WEIR_MQTT_MAX_MESSAGES_PER_S", "0")]).unwrap_err();
        assert_eq!(e.key, "mqtt.max_messages_per_s");
        // A CPU priority below weir's: 0 unless set, at most 19.
        assert_eq!(plans[0].nice, 0);
        let niced = parse(&groups, &[("WEIR_GROUP_0_NICE", "10")]).unwrap();
        assert_eq!(niced.group_plans()[0].nice, 10);
        let e = parse(&groups, &[("WEIR_GROUP_0_NICE", "20")]).unwrap_err();
        assert_eq!(e.key, "group[0].nice");
        assert!(e.problem.contains("use 0 (as weir) to 19"), "{e}");
    }
}
