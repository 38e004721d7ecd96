//! Reading schedule files for `reeve apply`: TOML or JSON text in, validated
//! schedules or *every* error out.
//!
//! This module owns the file shapes and the error report; reading files and
//! directories, talking to the daemon and printing are the CLI's.
//!
//! # File shapes
//!
//! - TOML: `[[schedule]]` tables (any number), or the fields of one schedule
//!   at the top level.
//! - JSON: one schedule object, an array of them, or `{"schedules": [...]}`.
//!
//! ```toml
//! [[schedule]]
//! name = "nightly-review"
//! cron = "30 2 * * *"
//! timezone = "Europe/Berlin"
//! misfire = { policy = "catch_up", max = 3 }
//! job = { kind = "review", max_turns = 40 }
//! ```
//!
//! # Invariants
//!
//! - All-or-nothing: [`load_all`] returns schedules only when *no* file has
//!   an error, so the CLI applies nothing when anything is wrong.
//! - Every error names the file, the schedule (its `name`, or `#N` for the
//!   N-th unnamed entry) and the field path (`job.prio`) when they are known,
//!   plus the TOML line: `a.toml:7: schedule nightly: job.prio: unknown
//!   field ...`.
//! - Schedule names are unique across all the files of one apply.

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use thiserror::Error;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::spec::{ScheduleSpec, ValidSchedule};

/// The text format of a schedule file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// By extension: `.toml` or `.json` (any case); `None` otherwise.
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.')?.1;
        if ext.eq_ignore_ascii_case("toml") {
            Some(Format::Toml)
        } else if ext.eq_ignore_ascii_case("json") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ApplyError {
    pub file: String,
    /// 1-based line, when the format reports it.
    pub line: Option<usize>,
    /// The schedule's name, or `#N` for the N-th entry of a file when it has
    /// no usable name.
    pub schedule: Option<String>,
    /// Path of the field at fault (`job.kind`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(s) = &self.schedule {
            write!(f, ": schedule {s}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ApplyErrors(pub Vec<ApplyError>);

impl fmt::Display for ApplyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A schedule read from a file and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub file: String,
    /// Line of the schedule's table (TOML).
    pub line: Option<usize>,
    pub spec: ScheduleSpec,
    pub schedule: ValidSchedule,
}

/// Parses and validates the schedules of one file. `path` is only used in
/// messages. Returns every error of the file, not just the first.
pub fn parse_file(path: &str, text: &str, format: Format) -> Result<Vec<Loaded>, ApplyErrors> {
    let out = match format {
        Format::Toml => parse_toml(path, text),
        Format::Json => parse_json(path, text),
    };
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for item in out {
        match item {
            Ok(l) => loaded.push(l),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(ApplyErrors(errors))
    }
}

/// Parses every file (`(path, text)`, format from the extension) and checks
/// that names are unique across them. Schedules come back only if there is
/// no error at all; otherwise every error of every file does.
pub fn load_all<P: AsRef<str>, T: AsRef<str>>(
    files: &[(P, T)],
) -> Result<Vec<Loaded>, ApplyErrors> {
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in files {
        let path = path.as_ref();
        let Some(format) = Format::from_path(path) else {
            errors.push(ApplyError {
                file: path.to_string(),
                line: None,
                schedule: None,
                field: None,
                message: "expected a .toml or .json file".to_string(),
            });
            continue;
        };
        match parse_file(path, text.as_ref(), format) {
            Ok(mut l) => loaded.append(&mut l),
            Err(ApplyErrors(mut e)) => errors.append(&mut e),
        }
    }
    let mut seen: HashMap<&str, &Loaded> = HashMap::new();
    for l in &loaded {
        if let Some(first) = seen.insert(&l.schedule.name, l) {
            let at = match first.line {
                Some(line) => format!("{}:{line}", first.file),
                None => first.file.clone(),
            };
            errors.push(ApplyError {
                file: l.file.clone(),
                line: l.line,
                schedule: Some(l.schedule.name.clone()),
                field: Some("name".to_string()),
                message: format!("duplicate schedule name; also defined in {at}"),
            });
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(ApplyErrors(errors))
    }
}

// ---- TOML ----

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn toml_get<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

fn parse_toml(path: &str, text: &str) -> Vec<Result<Loaded, ApplyError>> {
    let error =
        |line: Option<usize>, schedule: Option<String>, field: Option<String>, message: String| {
            ApplyError {
                file: path.to_string(),
                line,
                schedule,
                field,
                message,
            }
        };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            return vec![Err(error(line, None, None, e.message().to_string()))];
        }
    };
    let span = doc.span();
    let table = doc.into_inner();
    if table.is_empty() {
        return Vec::new();
    }
    let entries: Vec<Spanned<DeValue<'_>>> = match toml_get(&table, "schedule") {
        None => vec![Spanned::new(span, DeValue::Table(table))],
        Some(list) => {
            let mut out = Vec::new();
            for (key, _) in table
                .iter()
                .filter(|(k, _)| k.get_ref().as_ref() != "schedule")
            {
                out.push(Err(error(
                    Some(line_of(text, key.span().start)),
                    None,
                    Some(key.get_ref().to_string()),
                    "unknown top-level key; a file holds [[schedule]] tables, or the fields of one schedule".to_string(),
                )));
            }
            let entries = match list.get_ref() {
                DeValue::Array(items) => items.to_vec(),
                DeValue::Table(_) => vec![list.clone()],
                other => {
                    out.push(Err(error(
                        Some(line_of(text, list.span().start)),
                        None,
                        Some("schedule".to_string()),
                        format!("expected [[schedule]] tables, found a {}", other.type_str()),
                    )));
                    Vec::new()
                }
            };
            if !out.is_empty() {
                return out;
            }
            entries
        }
    };
    let many = entries.len() > 1;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let line = line_of(text, entry.span().start);
            let label = entry_label(
                entry
                    .get_ref()
                    .as_table()
                    .and_then(|t| toml_get(t, "name"))
                    .and_then(|v| v.get_ref().as_str()),
                i,
                many,
            );
            let at_field = |field: &str| field_line(text, &entry, field).unwrap_or(line);
            let spec: ScheduleSpec = deserialize_entry(ValueDeserializer::from(entry.clone()))
                .map_err(|(field, inner): (Option<String>, toml::de::Error)| {
                    let l = inner.span().map(|s| line_of(text, s.start)).unwrap_or(line);
                    error(Some(l), label.clone(), field, inner.message().to_string())
                })?;
            let schedule = spec.validate().map_err(|e| {
                error(
                    Some(at_field(&e.field)),
                    label.clone(),
                    Some(e.field),
                    e.message,
                )
            })?;
            Ok(Loaded {
                file: path.to_string(),
                line: Some(line),
                spec,
                schedule,
            })
        })
        .collect()
}

/// The line of the value at `field` (a dotted path) inside a TOML entry.
fn field_line(text: &str, entry: &Spanned<DeValue<'_>>, field: &str) -> Option<usize> {
    let mut cur = entry;
    for part in field.split('.') {
        cur = toml_get(cur.get_ref().as_table()?, part)?;
    }
    Some(line_of(text, cur.span().start))
}

// ---- JSON ----

fn parse_json(path: &str, text: &str) -> Vec<Result<Loaded, ApplyError>> {
    let error =
        |line: Option<usize>, schedule: Option<String>, field: Option<String>, message: String| {
            ApplyError {
                file: path.to_string(),
                line,
                schedule,
                field,
                message,
            }
        };
    let doc: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let message = e.to_string();
            // serde_json appends " at line L column C"; the line goes up front.
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(m, _)| m)
                .to_string();
            return vec![Err(error(Some(e.line()), None, None, message))];
        }
    };
    let entries = match doc {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut map) if map.contains_key("schedules") => {
            let others: Vec<String> = map.keys().filter(|k| *k != "schedules").cloned().collect();
            if !others.is_empty() {
                return others
                    .into_iter()
                    .map(|k| {
                        Err(error(
                            None,
                            None,
                            Some(k),
                            "unknown top-level key; a file holds one schedule, an array of them, or {\"schedules\": [...]}".to_string(),
                        ))
                    })
                    .collect();
            }
            match map.remove("schedules") {
                Some(serde_json::Value::Array(items)) => items,
                _ => {
                    return vec![Err(error(
                        None,
                        None,
                        Some("schedules".to_string()),
                        "expected an array of schedules".to_string(),
                    ))];
                }
            }
        }
        v @ serde_json::Value::Object(_) => vec![v],
        _ => {
            return vec![Err(error(
                None,
                None,
                None,
                "expected a schedule object, an array of them, or {\"schedules\": [...]}"
                    .to_string(),
            ))];
        }
    };
    let many = entries.len() > 1;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let label = entry_label(entry.get("name").and_then(|v| v.as_str()), i, many);
            let spec: ScheduleSpec = deserialize_entry(entry).map_err(
                |(field, inner): (Option<String>, serde_json::Error)| {
                    error(None, label.clone(), field, inner.to_string())
                },
            )?;
            let schedule = spec
                .validate()
                .map_err(|e| error(None, label.clone(), Some(e.field), e.message))?;
            Ok(Loaded {
                file: path.to_string(),
                line: None,
                spec,
                schedule,
            })
        })
        .collect()
}

// ---- shared ----

/// How an entry is named in messages: its name when it is a plausible one,
/// else its position when the file holds several.
fn entry_label(name: Option<&str>, index: usize, many: bool) -> Option<String> {
    match name {
        Some(n) if reeve_core::validate::name("name", n).is_ok() => Some(n.to_string()),
        _ if many => Some(format!("#{}", index + 1)),
        _ => None,
    }
}

/// Deserializes one entry, returning on error the path of the field at fault
/// (`job.prio`) next to the format's own error.
fn deserialize_entry<'de, D, T>(d: D) -> Result<T, (Option<String>, D::Error)>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(d).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        (field_path(&path, &inner.to_string()), inner)
    })
}

/// The field path from serde_path_to_error's path and the error message:
/// the field named by "unknown field `x`" or "missing field `x`" is appended
/// when the path stops at its parent.
fn field_path(path: &str, message: &str) -> Option<String> {
    let path = if path == "." || path.is_empty() {
        None
    } else {
        Some(path.to_string())
    };
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_string());
    match (path, named) {
        (Some(p), Some(n)) if p == n || p.ends_with(&format!(".{n}")) => Some(p),
        (Some(p), Some(n)) => Some(format!("{p}.{n}")),
        (None, Some(n)) => Some(n),
        (p, None) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_from_serde_errors() {
        assert_eq!(
            field_path(".", "unknown field `crn`, expected ..."),
            Some("crn".into())
        );
        assert_eq!(
            field_path("job", "unknown field `prio`, expected ..."),
            Some("job.prio".into())
        );
        assert_eq!(
            field_path("job.prio", "unknown field `prio`"),
            Some("job.prio".into())
        );
        assert_eq!(
            field_path("job", "missing field `kind`"),
            Some("job.kind".into())
        );
        assert_eq!(
            field_path("every", "invalid type: ..."),
            Some("every".into())
        );
        assert_eq!(field_path(".", "invalid type: ..."), None);
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(Format::from_path("a/b.TOML"), Some(Format::Toml));
        assert_eq!(Format::from_path("x.json"), Some(Format::Json));
        assert_eq!(Format::from_path("x.yaml"), None);
        assert_eq!(Format::from_path("README"), None);
    }
}
