//! The "new rows" of a run: objects a warehouse exported under a sync's S3 prefix,
//! JSON Lines or CSV with a header, gzip or plain, parsed as a stream.
//!
//! Parsing is pure and synchronous over any `Read` (the S3 adapter feeds it the object
//! body through a blocking bridge), so one malformed line is rejected with its object,
//! line number and reason while the rest proceeds, and no object is ever held whole in
//! memory.
//!
//! - [`lines`]: lines read with a cap ([`MAX_LINE_BYTES`]); longer lines are read past
//!   without being held.
//! - `jsonl`: JSON Lines rows and keys.
//! - `csv`: CSV rows, records delimited with the same cap as lines (an unterminated
//!   quote and a repeated header column are refused).
//!
//! # Keys
//!
//! A row's key is the text the source wrote for its `primary_key` field, exactly: a
//! string's characters (JSON escapes decoded, never trimmed: `"x"`, `" x"`, `"x "`,
//! `"x\u00a0"` and `"cr\r"` are five keys), a number's literal JSON text (`7.50`, `1e2`
//! and `12345678901234567890123` stay as written; `7.5` and `7.50` are two keys, as two
//! strings would be). A number and a string of the same text (`42`, `"42"`) are one key.
//! A key that is null, empty or only whitespace, or of another type, is refused
//! (`missing_primary_key`); one longer than [`PrimaryKey::MAX_BYTES`] is refused as
//! `primary_key_too_long`, its reason showing its first [`KEY_PREFIX_BYTES`] bytes (no
//! index key can hold it, so it is not kept in the index). CSV cells are keys as
//! written, never trimmed.

use std::io::{BufReader, Read};

use serde_json::{value::RawValue, Map, Value};

use crate::domain::{ids::PrimaryKey, row::RowFields};

mod csv;
mod jsonl;
pub mod lines;

pub use lines::MAX_LINE_BYTES;

/// Source file format; by default taken from the object's name
/// (`.jsonl`, `.ndjson`, `.json` → JSON Lines; `.csv` → CSV; an extra `.gz` means gzip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
}

/// One valid row.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// The primary key's value.
    pub key: PrimaryKey,
    /// All fields, the key's column included, as the source wrote them (JSON Lines)
    /// or as one object of strings (CSV).
    pub fields: RowFields,
    /// Its 1-based line number in the object.
    pub line: u64,
}

/// A line or record that could not become a row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    /// The row's key when it had a usable one.
    pub key: Option<PrimaryKey>,
    /// The S3 object key it came from (a row retried from its stored payload, read
    /// from no object this run: `(failed-row index)`).
    pub object: String,
    /// Its 1-based line number in the object (CSV: the record's first line).
    pub line: u64,
    /// Machine-readable reason: `malformed_line`, `line_too_long`, `unterminated_quote`,
    /// `missing_primary_key`, `primary_key_too_long`, `non_unique_primary_key`,
    /// `row_too_large`, `enqueue_refused`, `unknown_format`, `unreadable_object`.
    pub code: String,
    /// Human-readable reason (never the row's values).
    pub reason: String,
}

/// An error that stops reading an object (not a bad line: the storage itself failed).
#[derive(Debug, thiserror::Error)]
#[error("reading source object {object}: {source}")]
pub struct SourceReadError {
    /// The S3 object.
    pub object: String,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

/// How an object is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Row format.
    pub format: SourceFormat,
    /// Gzip-compressed.
    pub gzip: bool,
}

/// Works out an object's encoding from its name, unless the sync forces a format.
/// `None` when the name says nothing and no format is forced.
pub fn encoding_for(object: &str, forced: Option<SourceFormat>) -> Option<Encoding> {
    let lower = object.to_ascii_lowercase();
    let (stem, gzip) = match lower.strip_suffix(".gz") {
        Some(stem) => (stem, true),
        None => (lower.as_str(), false),
    };
    let by_name = if stem.ends_with(".csv") {
        Some(SourceFormat::Csv)
    } else if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") || stem.ends_with(".json") {
        Some(SourceFormat::Jsonl)
    } else {
        None
    };
    forced.or(by_name).map(|format| Encoding { format, gzip })
}

/// Reads every row of one object, calling `emit` for each row or rejection in order.
///
/// Returns `Err` only when the underlying reader fails for a reason other than bad
/// data (e.g. the network); corrupt compression, and a CSV header that names a column
/// twice, are reported as an `unreadable_object` rejection after the rows read so far.
pub fn read_object(
    body: impl Read,
    object: &str,
    encoding: Encoding,
    primary_key: &str,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), SourceReadError> {
    let reader = BufReader::with_capacity(64 * 1024, decoded(body, encoding));
    let result = match encoding.format {
        SourceFormat::Jsonl => jsonl::read_rows(reader, object, primary_key, emit),
        SourceFormat::Csv => csv::read_rows(reader, object, primary_key, emit),
    };
    match result {
        Ok(()) => Ok(()),
        Err((line, err)) if is_data_error(&err) => {
            emit(Err(Rejection {
                key: None,
                object: object.to_owned(),
                line,
                code: "unreadable_object".into(),
                reason: format!("the object could not be decoded from line {line} on: {err}"),
            }));
            Ok(())
        }
        Err((_, source)) => Err(SourceReadError {
            object: object.to_owned(),
            source,
        }),
    }
}

/// Reads only the keys of one object's valid rows — the first pass of planning. Calls
/// `emit` with exactly the keys [`read_object`] would give rows for (same validation and
/// same key rules), without building any row's fields. Unreadable lines and objects are
/// skipped silently: the second pass reports them.
pub fn read_keys(
    body: impl Read,
    object: &str,
    encoding: Encoding,
    primary_key: &str,
    emit: &mut dyn FnMut(&str),
) -> Result<(), SourceReadError> {
    if encoding.format == SourceFormat::Csv {
        return read_object(body, object, encoding, primary_key, &mut |row| {
            if let Ok(row) = row {
                emit(row.key.as_str());
            }
        });
    }
    let reader = BufReader::with_capacity(64 * 1024, decoded(body, encoding));
    match jsonl::read_keys(reader, primary_key, emit) {
        Ok(()) => Ok(()),
        Err(err) if is_data_error(&err) => Ok(()),
        Err(source) => Err(SourceReadError {
            object: object.to_owned(),
            source,
        }),
    }
}

fn decoded<'a>(body: impl Read + 'a, encoding: Encoding) -> Box<dyn Read + 'a> {
    if encoding.gzip {
        Box::new(flate2::read::MultiGzDecoder::new(body))
    } else {
        Box::new(body)
    }
}

fn is_data_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::UnexpectedEof
    )
}

fn reject(
    object: &str,
    line: u64,
    key: Option<PrimaryKey>,
    code: &str,
    reason: String,
) -> Rejection {
    Rejection {
        key,
        object: object.to_owned(),
        line,
        code: code.to_owned(),
        reason,
    }
}

/// Extracts the primary key from a row's parsed fields (CSV records: strings).
pub fn key_of(fields: &Map<String, Value>, primary_key: &str) -> Result<PrimaryKey, String> {
    key_in(fields, primary_key).map_err(|(_, reason)| reason)
}

/// Bytes of a too-long key shown in its rejection's reason.
pub const KEY_PREFIX_BYTES: usize = 64;

/// A key refused: the rejection's code and reason.
pub(crate) type KeyRefused = (&'static str, String);

/// [`key_of`], with the rejection's code.
pub(crate) fn key_in(
    fields: &Map<String, Value>,
    primary_key: &str,
) -> Result<PrimaryKey, KeyRefused> {
    let missing = |reason| ("missing_primary_key", reason);
    match fields.get(primary_key) {
        None | Some(Value::Null) => Err(missing(no_value(primary_key))),
        Some(Value::String(text)) => key_text(text.clone(), primary_key),
        Some(Value::Number(n)) => key_text(n.to_string(), primary_key),
        Some(other) => Err(missing(wrong_type(primary_key, json_type(other)))),
    }
}

/// The primary key from the key field's text as the source wrote it (`None`: the row
/// has no such field): a string's decoded characters, a number's literal text.
fn key_from_raw(raw: Option<&RawValue>, primary_key: &str) -> Result<PrimaryKey, KeyRefused> {
    let missing = |reason| ("missing_primary_key", reason);
    let Some(raw) = raw else {
        return Err(missing(no_value(primary_key)));
    };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => match serde_json::from_str::<String>(text) {
            Ok(decoded) => key_text(decoded, primary_key),
            Err(err) => Err(missing(format!(
                "primary key '{primary_key}' is not valid text: {}",
                err_without_position(&err)
            ))),
        },
        Some(b'-' | b'0'..=b'9') => key_text(text.to_owned(), primary_key),
        Some(b'n') => Err(missing(no_value(primary_key))),
        _ => Err(missing(wrong_type(primary_key, json_type_of_text(text)))),
    }
}

fn key_text(text: String, primary_key: &str) -> Result<PrimaryKey, KeyRefused> {
    if text.trim().is_empty() {
        return Err((
            "missing_primary_key",
            format!("the row's primary key '{primary_key}' is empty or only whitespace"),
        ));
    }
    if text.len() > PrimaryKey::MAX_BYTES {
        return Err(("primary_key_too_long", too_long(primary_key, &text)));
    }
    PrimaryKey::parse(text).map_err(|err| {
        (
            "missing_primary_key",
            format!("primary key '{primary_key}': {err}"),
        )
    })
}

/// The reason of a `primary_key_too_long` rejection.
fn too_long(primary_key: &str, key: &str) -> String {
    let mut end = KEY_PREFIX_BYTES.min(key.len());
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "primary key '{primary_key}' is {} bytes, longer than the {} bytes a key may have; it starts {:?}… and is not kept in the failed-row index (no index key can hold it)",
        key.len(),
        PrimaryKey::MAX_BYTES,
        &key[..end]
    )
}

fn no_value(primary_key: &str) -> String {
    format!("the row has no value for primary key '{primary_key}'")
}

fn wrong_type(primary_key: &str, found: &str) -> String {
    format!("primary key '{primary_key}' must be a string or a number, not {found}")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The JSON type of valid JSON text, from its first character (builds nothing).
fn json_type_of_text(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

fn err_without_position(err: &serde_json::Error) -> String {
    format!("{:?} error at column {}", err.classify(), err.column())
}

#[cfg(test)]
mod tests;
