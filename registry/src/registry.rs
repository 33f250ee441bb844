//! The registry's model: subjects, versions, global schema ids, compatibility, and the rules
//! Confluent Schema Registry applies to them. Every change is written to the log (fsynced)
//! before it is applied in memory and acknowledged.

use crate::compatibility;
use crate::storage::{Event, Log, StorageError};
use apache_avro::Schema;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A compatibility level, as Confluent names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    /// New schema can read data written with the latest.
    Backward,
    /// ...with every earlier version.
    BackwardTransitive,
    /// Data written with the new schema can be read with the latest.
    Forward,
    /// ...with every earlier version.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
    /// No checks.
    None,
}

impl Compat {
    /// Parse a Confluent level name.
    pub fn parse(s: &str) -> Option<Compat> {
        Some(match s.to_ascii_uppercase().as_str() {
            "BACKWARD" => Compat::Backward,
            "BACKWARD_TRANSITIVE" => Compat::BackwardTransitive,
            "FORWARD" => Compat::Forward,
            "FORWARD_TRANSITIVE" => Compat::ForwardTransitive,
            "FULL" => Compat::Full,
            "FULL_TRANSITIVE" => Compat::FullTransitive,
            "NONE" => Compat::None,
            _ => return None,
        })
    }

    /// The Confluent level name.
    pub fn name(self) -> &'static str {
        match self {
            Compat::Backward => "BACKWARD",
            Compat::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compat::Forward => "FORWARD",
            Compat::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compat::Full => "FULL",
            Compat::FullTransitive => "FULL_TRANSITIVE",
            Compat::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Compat::BackwardTransitive | Compat::ForwardTransitive | Compat::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Compat::Backward | Compat::BackwardTransitive | Compat::Full | Compat::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Compat::Forward | Compat::ForwardTransitive | Compat::Full | Compat::FullTransitive
        )
    }
}

/// Errors with Confluent's error codes.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 40403
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 40404
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406
    #[error("Subject '{0}' Version {1} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, u32),
    /// 40407
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, u32),
    /// 40408
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectCompatNotConfigured(String),
    /// 42201
    #[error("Invalid schema {0}")]
    InvalidSchema(String),
    /// 42202
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203
    #[error(
        "Invalid compatibility level {0}. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompat(String),
    /// 409
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
        .details.join(", ")
    )]
    Incompatible {
        /// The subject.
        subject: String,
        /// One line per failed check.
        details: Vec<String>,
    },
    /// 42201, as Confluent answers a schema it cannot accept: the check was stopped.
    #[error("Schema cannot be checked against version {version}: {source}")]
    TooComplex {
        /// The version it was being checked against.
        version: u32,
        /// The limit reached.
        #[source]
        source: compatibility::TooComplex,
    },
    /// 50001
    #[error("Error in the backend data store: {0}")]
    Store(#[from] StorageError),
}

impl RegistryError {
    /// Confluent's `error_code`.
    pub fn code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound(_) => 40402,
            RegistryError::SchemaNotFound(_) => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted(..) => 40406,
            RegistryError::VersionNotSoftDeleted(..) => 40407,
            RegistryError::SubjectCompatNotConfigured(_) => 40408,
            RegistryError::InvalidSchema(_) | RegistryError::TooComplex { .. } => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompat(_) => 42203,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::Store(_) => 50001,
        }
    }
}

/// A version reference in a request: a number or `latest` (also `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    /// The newest live version.
    Latest,
    /// A specific version.
    Number(u32),
}

impl VersionRef {
    /// Parse a path segment.
    pub fn parse(s: &str) -> Result<VersionRef, RegistryError> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(VersionRef::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionRef::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_owned())),
        }
    }
}

/// One registered version, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Subject.
    pub subject: String,
    /// Version.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

struct StoredSchema {
    text: String,
    /// The parsed schema, or why this build cannot parse what an earlier one stored.
    parsed: Result<Schema, String>,
    canonical: String,
}

#[derive(Clone, Copy)]
struct Version {
    id: u32,
    deleted: bool,
}

#[derive(Default)]
struct State {
    /// Shared, so that a compatibility check can run on them without holding the lock.
    schemas: BTreeMap<u32, Arc<StoredSchema>>,
    by_canonical: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, Version>>,
    global: Option<Compat>,
    subject_compat: HashMap<String, Compat>,
}

impl State {
    fn apply(&mut self, e: &Event) {
        match e {
            Event::Schema { id, schema } => {
                // A schema this build's parser refuses (it was accepted by another version)
                // keeps its id and is still served; only checks against it are refused.
                let stored = match parse_schema(schema) {
                    Ok(p) => StoredSchema {
                        text: schema.clone(),
                        parsed: Ok(p.schema),
                        canonical: p.canonical,
                    },
                    Err(e) => {
                        tracing::warn!(id, error = %e, "a stored schema cannot be parsed by this registry; it is served as stored, and compatibility checks against it are refused");
                        StoredSchema {
                            text: schema.clone(),
                            parsed: Err(e.to_string()),
                            canonical: schema.clone(),
                        }
                    }
                };
                self.by_canonical.insert(stored.canonical.clone(), *id);
                self.schemas.insert(*id, Arc::new(stored));
            }
            Event::Version {
                subject,
                version,
                id,
            } => {
                self.subjects.entry(subject.clone()).or_default().insert(
                    *version,
                    Version {
                        id: *id,
                        deleted: false,
                    },
                );
            }
            Event::DeleteVersion {
                subject,
                version,
                permanent,
            } => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    if *permanent {
                        versions.remove(version);
                        if versions.is_empty() {
                            self.subjects.remove(subject);
                        }
                    } else if let Some(v) = versions.get_mut(version) {
                        v.deleted = true;
                    }
                }
            }
            Event::Config { subject, level } => {
                let level = level.as_deref().and_then(Compat::parse);
                match (subject, level) {
                    (None, l) => self.global = l,
                    (Some(s), Some(l)) => {
                        self.subject_compat.insert(s.clone(), l);
                    }
                    (Some(s), None) => {
                        self.subject_compat.remove(s);
                    }
                }
            }
        }
    }

    fn live(&self, subject: &str) -> Vec<(u32, Version)> {
        self.subjects
            .get(subject)
            .map(|vs| {
                vs.iter()
                    .filter(|(_, v)| !v.deleted)
                    .map(|(n, v)| (*n, *v))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn compat_for(&self, subject: &str) -> Compat {
        self.subject_compat
            .get(subject)
            .copied()
            .or(self.global)
            .unwrap_or(Compat::Backward)
    }

    fn resolve(&self, subject: &str, v: VersionRef) -> Result<(u32, Version), RegistryError> {
        let live = self.live(subject);
        if live.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        match v {
            VersionRef::Latest => Ok(*live.last().expect("non-empty")),
            VersionRef::Number(n) => live
                .into_iter()
                .find(|(m, _)| *m == n)
                .ok_or_else(|| RegistryError::VersionNotFound(n.to_string())),
        }
    }

    fn info(&self, subject: &str, version: u32, id: u32) -> VersionInfo {
        VersionInfo {
            subject: subject.to_owned(),
            version,
            id,
            schema: self.schemas[&id].text.clone(),
        }
    }

    /// What a new schema for `subject` is checked against under `mode`: the live versions
    /// `existing` (oldest first), or the newest of them when `mode` is not transitive.
    fn against(&self, mode: Compat, existing: &[(u32, Version)]) -> Against {
        let chosen: &[(u32, Version)] = if mode.transitive() {
            existing
        } else {
            existing.last().map(std::slice::from_ref).unwrap_or(&[])
        };
        Against {
            mode,
            versions: chosen
                .iter()
                .map(|(n, v)| (*n, v.id, Arc::clone(&self.schemas[&v.id])))
                .collect(),
        }
    }
}

/// A compatibility check's inputs, taken under the lock and checked without it: a costly
/// check (up to [`compatibility`]'s bound) must not hold every other request back.
struct Against {
    mode: Compat,
    /// (version, schema id, schema), oldest first.
    versions: Vec<(u32, u32, Arc<StoredSchema>)>,
}

impl Against {
    /// Whether `other` checks against the same versions under the same mode (so a result
    /// computed for one holds for the other).
    fn same(&self, other: &Against) -> bool {
        self.mode == other.mode
            && self.versions.len() == other.versions.len()
            && self
                .versions
                .iter()
                .zip(&other.versions)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
    }

    /// Check `new`; one message per failure.
    fn check(&self, new: &Schema) -> Result<Vec<String>, RegistryError> {
        let mode = self.mode;
        let mut messages = Vec::new();
        for (n, _, stored) in self.versions.iter().rev() {
            let old = match &stored.parsed {
                Ok(old) => old,
                Err(why) => {
                    messages.push(format!(
                        "{{oldSchemaVersion: {n}, compatibility: '{}', reason: 'version {n} cannot be checked: this registry cannot parse its schema ({why})'}}",
                        mode.name()
                    ));
                    continue;
                }
            };
            let mut report = |what: String, found: Vec<compatibility::Incompatibility>| {
                if found.is_empty() {
                    return;
                }
                let reasons: Vec<String> = found.iter().map(ToString::to_string).collect();
                messages.push(format!(
                    "{{oldSchemaVersion: {n}, oldSchema: '{}', compatibility: '{}', reason: '{what}: {}'}}",
                    stored.text,
                    mode.name(),
                    reasons.join("; ")
                ));
            };
            let stopped = |source| RegistryError::TooComplex {
                version: *n,
                source,
            };
            if mode.backward() {
                report(
                    format!("the new schema cannot read data written with version {n}"),
                    compatibility::check(new, old).map_err(stopped)?,
                );
            }
            if mode.forward() {
                report(
                    format!("version {n} cannot read data written with the new schema"),
                    compatibility::check(old, new).map_err(stopped)?,
                );
            }
        }
        Ok(messages)
    }
}

/// A submitted schema: the compact text to store, its identity and the parsed schema.
struct Parsed {
    text: String,
    canonical: String,
    schema: Schema,
}

/// Parse a submitted schema.
///
/// Identity is the schema's JSON with whitespace removed and object keys sorted, not Avro's
/// Parsing Canonical Form: PCF drops `default`, so two schemas that differ only in a
/// default (and so in compatibility) would share an id. Reformatting or reordering keys
/// still gives the same id.
fn parse_schema(text: &str) -> Result<Parsed, RegistryError> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| RegistryError::InvalidSchema(format!("{text}: not JSON: {e}")))?;
    // Before the parser builds the defaults' values, which a few kilobytes of schema can
    // multiply into gigabytes.
    weir_core::avro::defaults::check(&json)
        .map_err(|why| RegistryError::InvalidSchema(format!("{text}: {why}")))?;
    let schema =
        Schema::parse(&json).map_err(|e| RegistryError::InvalidSchema(format!("{text}: {e}")))?;
    let mut canonical = String::with_capacity(text.len());
    write_sorted(&json, &mut canonical);
    Ok(Parsed {
        text: json.to_string(),
        canonical,
        schema,
    })
}

/// Compact JSON with object keys sorted, whatever order the JSON map type keeps.
fn write_sorted(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Registrations checked without the lock before one is checked under it (see
/// [`Registry::register`]).
const OPTIMISTIC_TRIES: u32 = 3;

/// The registry: state in memory, changes in the log.
pub struct Registry {
    inner: Mutex<(State, Log)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// Open the registry stored in `dir`, replaying its log.
    pub fn open(dir: &Path) -> Result<Registry, RegistryError> {
        let (log, events) = Log::open(dir)?;
        let mut state = State::default();
        for e in &events {
            state.apply(e);
        }
        tracing::info!(
            dir = %dir.display(),
            events = events.len(),
            schemas = state.schemas.len(),
            subjects = state.subjects.len(),
            "registry storage opened"
        );
        Ok(Registry {
            inner: Mutex::new((state, log)),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut State, &mut Log) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (state, log) = &mut *guard;
        f(state, log)
    }

    /// Write events durably, then apply them.
    fn commit(state: &mut State, log: &mut Log, events: Vec<Event>) -> Result<(), RegistryError> {
        log.append(&events)?;
        for e in &events {
            state.apply(e);
        }
        Ok(())
    }

    /// Register `schema` under `subject`; the same schema again returns the same id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let Parsed {
            text,
            canonical,
            schema: parsed,
        } = parse_schema(schema)?;
        // Checked without the lock, then registered under it if what was checked against
        // is still what the subject holds (else checked again against the new state). A
        // subject changing under every try (other writers racing) is checked under the
        // lock the last time, so a registration always ends.
        let mut tries = 0;
        loop {
            if tries == OPTIMISTIC_TRIES {
                return self.with(|state, log| {
                    let live = state.live(subject);
                    if let Some(id) = state.by_canonical.get(&canonical)
                        && live.iter().any(|(_, v)| v.id == *id)
                    {
                        return Ok(*id);
                    }
                    let against = state.against(state.compat_for(subject), &live);
                    Self::check_and_commit(
                        state, log, subject, &text, &canonical, &parsed, &against,
                    )
                });
            }
            tries += 1;
            let against = self.with(|state, _| {
                let live = state.live(subject);
                match state.by_canonical.get(&canonical) {
                    Some(id) if live.iter().any(|(_, v)| v.id == *id) => Err(*id),
                    _ => Ok(state.against(state.compat_for(subject), &live)),
                }
            });
            let against = match against {
                Ok(against) => against,
                Err(id) => return Ok(id),
            };
            let details = against.check(&parsed)?;
            if !details.is_empty() {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_owned(),
                    details,
                });
            }
            let registered = self.with(|state, log| {
                let live = state.live(subject);
                if let Some(id) = state.by_canonical.get(&canonical)
                    && live.iter().any(|(_, v)| v.id == *id)
                {
                    return Some(Ok(*id));
                }
                if !state
                    .against(state.compat_for(subject), &live)
                    .same(&against)
                {
                    return None;
                }
                Some(Self::commit_version(state, log, subject, &text, &canonical))
            });
            if let Some(done) = registered {
                return done;
            }
        }
    }

    /// Check `parsed` against `against` (what `state` holds now) and register it.
    #[allow(clippy::too_many_arguments)]
    fn check_and_commit(
        state: &mut State,
        log: &mut Log,
        subject: &str,
        text: &str,
        canonical: &str,
        parsed: &Schema,
        against: &Against,
    ) -> Result<u32, RegistryError> {
        let details = against.check(parsed)?;
        if !details.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                details,
            });
        }
        Self::commit_version(state, log, subject, text, canonical)
    }

    /// Register `text` as the subject's next version (under a new id if it is new).
    fn commit_version(
        state: &mut State,
        log: &mut Log,
        subject: &str,
        text: &str,
        canonical: &str,
    ) -> Result<u32, RegistryError> {
        let mut events = Vec::new();
        let id = match state.by_canonical.get(canonical) {
            Some(id) => *id,
            None => {
                let id = state.schemas.keys().next_back().map_or(1, |m| m + 1);
                events.push(Event::Schema {
                    id,
                    schema: text.to_owned(),
                });
                id
            }
        };
        let version = state
            .subjects
            .get(subject)
            .and_then(|vs| vs.keys().next_back())
            .map_or(1, |m| m + 1);
        events.push(Event::Version {
            subject: subject.to_owned(),
            version,
            id,
        });
        Self::commit(state, log, events)?;
        tracing::info!(subject, version, id, "schema registered");
        Ok(id)
    }

    /// Find `schema` among the live versions of `subject`.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<VersionInfo, RegistryError> {
        let canonical = parse_schema(schema)?.canonical;
        self.with(|state, _| {
            let live = state.live(subject);
            if live.is_empty() {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            }
            live.iter()
                .find(|(_, v)| state.schemas[&v.id].canonical == canonical)
                .map(|(n, v)| state.info(subject, *n, v.id))
                .ok_or_else(|| RegistryError::SchemaNotFound("not found".into()))
        })
    }

    /// Subjects with a live version (or any version, with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.with(|state, _| {
            state
                .subjects
                .iter()
                .filter(|(_, vs)| deleted || vs.values().any(|v| !v.deleted))
                .map(|(s, _)| s.clone())
                .collect()
        })
    }

    /// Version numbers of a subject.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        self.with(|state, _| {
            let vs: Vec<u32> = state
                .subjects
                .get(subject)
                .map(|vs| {
                    vs.iter()
                        .filter(|(_, v)| deleted || !v.deleted)
                        .map(|(n, _)| *n)
                        .collect()
                })
                .unwrap_or_default();
            if vs.is_empty() {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            }
            Ok(vs)
        })
    }

    /// One version of a subject.
    pub fn version(&self, subject: &str, v: VersionRef) -> Result<VersionInfo, RegistryError> {
        self.with(|state, _| {
            let (n, version) = state.resolve(subject, v)?;
            Ok(state.info(subject, n, version.id))
        })
    }

    /// A schema by global id.
    pub fn schema(&self, id: u32) -> Result<String, RegistryError> {
        self.with(|state, _| {
            state
                .schemas
                .get(&id)
                .map(|s| s.text.clone())
                .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
        })
    }

    /// Every (subject, version) that uses schema `id`.
    pub fn schema_versions(&self, id: u32) -> Result<Vec<(String, u32)>, RegistryError> {
        self.with(|state, _| {
            if !state.schemas.contains_key(&id) {
                return Err(RegistryError::SchemaNotFound(id.to_string()));
            }
            Ok(state
                .subjects
                .iter()
                .flat_map(|(s, vs)| {
                    vs.iter()
                        .filter(|(_, v)| v.id == id && !v.deleted)
                        .map(move |(n, _)| (s.clone(), *n))
                })
                .collect())
        })
    }

    /// Delete a subject: soft (its versions hidden) or, after that, permanent.
    pub fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        self.with(|state, log| {
            let Some(vs) = state.subjects.get(subject) else {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            };
            let live: Vec<u32> = vs
                .iter()
                .filter(|(_, v)| !v.deleted)
                .map(|(n, _)| *n)
                .collect();
            let all: Vec<u32> = vs.keys().copied().collect();
            let targets = match (permanent, live.is_empty()) {
                (false, true) => return Err(RegistryError::SubjectSoftDeleted(subject.to_owned())),
                (false, false) => live,
                (true, false) => {
                    return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
                }
                (true, true) => all,
            };
            let mut events: Vec<Event> = targets
                .iter()
                .map(|&version| Event::DeleteVersion {
                    subject: subject.to_owned(),
                    version,
                    permanent,
                })
                .collect();
            if permanent && state.subject_compat.contains_key(subject) {
                events.push(Event::Config {
                    subject: Some(subject.to_owned()),
                    level: None,
                });
            }
            Self::commit(state, log, events)?;
            Ok(targets)
        })
    }

    /// Delete one version: soft, or (after that) permanent.
    pub fn delete_version(
        &self,
        subject: &str,
        v: VersionRef,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        self.with(|state, log| {
            let Some(vs) = state.subjects.get(subject) else {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            };
            let n = match v {
                VersionRef::Number(n) => n,
                VersionRef::Latest => state.resolve(subject, v)?.0,
            };
            let Some(version) = vs.get(&n) else {
                return Err(RegistryError::VersionNotFound(n.to_string()));
            };
            match (permanent, version.deleted) {
                (false, true) => {
                    return Err(RegistryError::VersionSoftDeleted(subject.to_owned(), n));
                }
                (true, false) => {
                    return Err(RegistryError::VersionNotSoftDeleted(subject.to_owned(), n));
                }
                _ => {}
            }
            let event = Event::DeleteVersion {
                subject: subject.to_owned(),
                version: n,
                permanent,
            };
            Self::commit(state, log, vec![event])?;
            Ok(n)
        })
    }

    /// The global level.
    pub fn global_compat(&self) -> Compat {
        self.with(|state, _| state.global.unwrap_or(Compat::Backward))
    }

    /// A subject's own level (`None` if not configured).
    pub fn subject_compat(&self, subject: &str) -> Option<Compat> {
        self.with(|state, _| state.subject_compat.get(subject).copied())
    }

    /// Set the global level (`None`) or a subject's.
    pub fn set_compat(&self, subject: Option<&str>, level: &str) -> Result<Compat, RegistryError> {
        let compat =
            Compat::parse(level).ok_or_else(|| RegistryError::InvalidCompat(level.to_owned()))?;
        self.with(|state, log| {
            let event = Event::Config {
                subject: subject.map(str::to_owned),
                level: Some(compat.name().to_owned()),
            };
            Self::commit(state, log, vec![event])?;
            Ok(compat)
        })
    }

    /// Remove a subject's level (falls back to global); returns the removed level.
    pub fn delete_subject_compat(&self, subject: &str) -> Result<Compat, RegistryError> {
        self.with(|state, log| {
            let Some(old) = state.subject_compat.get(subject).copied() else {
                return Err(RegistryError::SubjectCompatNotConfigured(
                    subject.to_owned(),
                ));
            };
            let event = Event::Config {
                subject: Some(subject.to_owned()),
                level: None,
            };
            Self::commit(state, log, vec![event])?;
            Ok(old)
        })
    }

    /// Would `schema` be accepted against `version` (or, for `latest`, against what the
    /// subject's level checks on register)? Failure messages for a verbose answer.
    pub fn check_compat(
        &self,
        subject: &str,
        v: VersionRef,
        schema: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let parsed = parse_schema(schema)?.schema;
        let against = self.with(|state, _| {
            let mode = state.compat_for(subject);
            let live = state.live(subject);
            match v {
                VersionRef::Latest => {
                    if live.is_empty() {
                        return Err(RegistryError::SubjectNotFound(subject.to_owned()));
                    }
                    Ok(state.against(mode, &live))
                }
                VersionRef::Number(_) => {
                    let one = state.resolve(subject, v)?;
                    // One given version is checked as such, transitive or not.
                    Ok(state.against(mode, std::slice::from_ref(&one)))
                }
            }
        })?;
        against.check(&parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_field_without_default_cannot_read_old_data() {
        let v1 = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"id","type":"string"}]}"#,
        )
        .unwrap();
        let v3 = Schema::parse_str(r#"{"type":"record","name":"R","fields":[{"name":"id","type":"string"},{"name":"a","type":"int"}]}"#).unwrap();
        let found = compatibility::check(&v3, &v1).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].message.contains("field a has no default"),
            "{}",
            found[0]
        );
        assert!(compatibility::check(&v1, &v3).unwrap().is_empty());
    }

    #[test]
    fn transitive_checks_every_live_version() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let f = |extra: &str| {
            format!(
                r#"{{"type":"record","name":"R","fields":[{{"name":"id","type":"string"}}{extra}]}}"#
            )
        };
        r.set_compat(Some("s"), "BACKWARD_TRANSITIVE").unwrap();
        r.register("s", &f("")).unwrap();
        r.register("s", &f(r#",{"name":"a","type":"int","default":0}"#))
            .unwrap();
        let err = r
            .register("s", &f(r#",{"name":"a","type":"int"}"#))
            .unwrap_err();
        assert_eq!(err.code(), 409, "{err}");
    }

    #[test]
    fn a_stored_schema_this_parser_refuses_is_served_and_not_checked_against() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        let odd = r#"{"type":"a-type-from-the-future"}"#;
        log.append(&[
            Event::Schema {
                id: 1,
                schema: odd.into(),
            },
            Event::Version {
                subject: "s".into(),
                version: 1,
                id: 1,
            },
        ])
        .unwrap();
        drop(log);
        let r = Registry::open(dir.path()).unwrap();
        assert_eq!(r.schema(1).unwrap(), odd);
        let err = r.register("s", r#""string""#).unwrap_err();
        assert_eq!(err.code(), 409, "{err}");
        assert!(err.to_string().contains("cannot parse its schema"), "{err}");
        assert_eq!(r.register("t", r#""string""#).unwrap(), 2);
    }

    #[test]
    fn a_schema_whose_defaults_multiply_is_refused_before_it_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        // 3,000 records by default, each holding 3,000 of a kilobyte's default: 9 GB of
        // values from 40 KB of schema, had the parser built them.
        let empties = vec!["{}"; 3000].join(",");
        let schema = format!(
            r#"{{"type":"record","name":"O","fields":[{{"name":"bs","type":{{"type":"array",
                "items":{{"type":"record","name":"B","fields":[{{"name":"pads","type":
                {{"type":"array","items":{{"type":"record","name":"Pad","fields":[
                    {{"name":"fill","type":"string","default":"{}"}}]}}}},
                "default":[{empties}]}}]}}}},"default":[{empties}]}}]}}"#,
            "x".repeat(1000)
        );
        let err = r.register("s", &schema).unwrap_err();
        assert_eq!(err.code(), 42201, "{err}");
        assert!(err.to_string().contains("expand to more than"), "{err}");
    }

    #[test]
    fn a_check_too_costly_to_finish_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        // Every branch of a union of n records against every branch of the other: n^2
        // pairs, each comparing n fields.
        let union = |n: usize, leaf: &str| {
            let branches: Vec<String> = (0..n)
                .map(|i| {
                    let fields: Vec<String> = (0..n)
                        .map(|f| format!(r#"{{"name":"f{f}","type":"{leaf}"}}"#))
                        .collect();
                    format!(
                        r#"{{"type":"record","name":"B{i}","fields":[{}]}}"#,
                        fields.join(",")
                    )
                })
                .collect();
            format!("[{}]", branches.join(","))
        };
        r.register("s", &union(200, "int")).unwrap();
        let err = r.register("s", &union(200, "long")).unwrap_err();
        assert_eq!(err.code(), 42201, "{err}");
        assert!(err.to_string().contains("type comparisons"), "{err}");
    }
}
