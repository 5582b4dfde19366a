//! The "new rows" of a run: objects a warehouse exported under a sync's S3 prefix,
//! JSON Lines or CSV with a header, gzip or plain, parsed as a stream.
//!
//! Parsing is pure and synchronous over any `Read` (the S3 adapter feeds it the object
//! body through a blocking bridge), so one malformed line is rejected with its object,
//! line number and reason while the rest proceeds, and no object is ever held whole in
//! memory.

use std::io::{BufRead, BufReader, Read};

use serde_json::{Map, Value};

use crate::domain::{
    ids::PrimaryKey,
    row::{field_of, RowFields},
};

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
    /// Machine-readable reason: `malformed_line`, `missing_primary_key`,
    /// `primary_key_too_long`, `non_unique_primary_key`, `row_too_large`,
    /// `enqueue_refused`, `unknown_format`, `unreadable_object`.
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
/// data (e.g. the network); corrupt compression is reported as an `unreadable_object`
/// rejection after the rows read so far.
pub fn read_object(
    body: impl Read,
    object: &str,
    encoding: Encoding,
    primary_key: &str,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), SourceReadError> {
    let reader: Box<dyn Read> = if encoding.gzip {
        Box::new(flate2::read::MultiGzDecoder::new(body))
    } else {
        Box::new(body)
    };
    let reader = BufReader::with_capacity(64 * 1024, reader);
    let result = match encoding.format {
        SourceFormat::Jsonl => read_jsonl(reader, object, primary_key, emit),
        SourceFormat::Csv => read_csv(reader, object, primary_key, emit),
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
/// normalisation), without building any row's fields. Unreadable lines and objects are
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
    let reader: Box<dyn Read> = if encoding.gzip {
        Box::new(flate2::read::MultiGzDecoder::new(body))
    } else {
        Box::new(body)
    };
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(err) if is_data_error(&err) => return Ok(()),
            Err(source) => {
                return Err(SourceReadError {
                    object: object.to_owned(),
                    source,
                })
            }
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            continue;
        };
        let Ok(Some(value)) = field_of(text.trim(), primary_key) else {
            continue;
        };
        let key = match &value {
            Value::String(s) => std::borrow::Cow::Borrowed(s.trim()),
            Value::Number(n) => std::borrow::Cow::Owned(n.to_string()),
            _ => continue,
        };
        if !key.is_empty() && key.len() <= PrimaryKey::MAX_BYTES {
            emit(&key);
        }
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

/// Extracts the primary key from a row's fields.
pub fn key_of(fields: &Map<String, Value>, primary_key: &str) -> Result<PrimaryKey, String> {
    key_from(fields.get(primary_key), primary_key).map_err(|(_, reason)| reason)
}

/// Bytes of a too-long key shown in its rejection's reason.
pub const KEY_PREFIX_BYTES: usize = 64;

/// The primary key from the key field's value (`None`: the row has no such field), or
/// the rejection's code and reason: `missing_primary_key`, or `primary_key_too_long`
/// for a key longer than an index key may be (the reason shows its first
/// [`KEY_PREFIX_BYTES`] bytes and says it is not kept in the index).
fn key_from(
    value: Option<&Value>,
    primary_key: &str,
) -> Result<PrimaryKey, (&'static str, String)> {
    let text = match value {
        None | Some(Value::Null) => {
            return Err((
                "missing_primary_key",
                format!("the row has no value for primary key '{primary_key}'"),
            ))
        }
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err((
                "missing_primary_key",
                format!(
                    "primary key '{primary_key}' must be a string or a number, not {}",
                    json_type(other)
                ),
            ))
        }
    };
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

fn read_jsonl(
    mut reader: impl BufRead,
    object: &str,
    primary_key: &str,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), (u64, std::io::Error)> {
    let mut buf = Vec::with_capacity(1024);
    let mut line = 0u64;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| (line + 1, e))?;
        if read == 0 {
            return Ok(());
        }
        line += 1;
        let text = match std::str::from_utf8(&buf) {
            Ok(text) => text.trim(),
            Err(_) => {
                emit(Err(reject(
                    object,
                    line,
                    None,
                    "malformed_line",
                    "the line is not valid UTF-8".into(),
                )));
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        // Scans that build nothing but the key validate the line; the fields stay text.
        let (key_value, fields) =
            match field_of(text, primary_key).and_then(|v| Ok((v, RowFields::from_text(text)?))) {
                Ok(parsed) => parsed,
                Err(_) => {
                    // The error path parses the whole line again to say what is wrong.
                    let reason = match serde_json::from_str::<Value>(text) {
                        Ok(other) => format!("expected a JSON object, found {}", json_type(&other)),
                        Err(err) => format!("invalid JSON ({})", err_without_position(&err)),
                    };
                    emit(Err(reject(object, line, None, "malformed_line", reason)));
                    continue;
                }
            };
        emit(match key_from(key_value.as_ref(), primary_key) {
            Ok(key) => Ok(SourceRow { key, fields, line }),
            Err((code, reason)) => Err(reject(object, line, None, code, reason)),
        });
    }
}

fn err_without_position(err: &serde_json::Error) -> String {
    format!("{:?} error at column {}", err.classify(), err.column())
}

fn read_csv(
    reader: impl BufRead,
    object: &str,
    primary_key: &str,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), (u64, std::io::Error)> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let headers = match csv.headers() {
        Ok(headers) => headers.clone(),
        Err(err) => return csv_failure(err, object, 1, emit),
    };
    let columns = headers.len();
    let mut record = csv::StringRecord::new();
    loop {
        let line = csv.position().line() + u64::from(csv.position().line() == 0);
        match csv.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line());
                if record.len() != columns {
                    emit(Err(reject(
                        object,
                        line,
                        None,
                        "malformed_line",
                        format!(
                            "expected {columns} fields as in the header, found {}",
                            record.len()
                        ),
                    )));
                    continue;
                }
                let fields: Map<String, Value> = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(name, value)| (name.to_owned(), Value::String(value.to_owned())))
                    .collect();
                emit(match key_from(fields.get(primary_key), primary_key) {
                    Ok(key) => Ok(SourceRow {
                        key,
                        fields: RowFields::from_map(&fields),
                        line,
                    }),
                    Err((code, reason)) => Err(reject(object, line, None, code, reason)),
                });
            }
            Err(err) => {
                let line = err.position().map_or(line, |p| p.line());
                match err.kind() {
                    csv::ErrorKind::Utf8 { .. } => emit(Err(reject(
                        object,
                        line,
                        None,
                        "malformed_line",
                        "the record is not valid UTF-8".into(),
                    ))),
                    _ => return csv_failure(err, object, line, emit),
                }
            }
        }
    }
}

fn csv_failure(
    err: csv::Error,
    object: &str,
    line: u64,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), (u64, std::io::Error)> {
    match err.into_kind() {
        csv::ErrorKind::Io(io) => Err((line, io)),
        other => {
            emit(Err(reject(
                object,
                line,
                None,
                "malformed_line",
                format!("invalid CSV: {other:?}"),
            )));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(bytes: &[u8], object: &str) -> (Vec<SourceRow>, Vec<Rejection>) {
        let encoding = encoding_for(object, None).unwrap();
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        read_object(bytes, object, encoding, "id", &mut |r| match r {
            Ok(row) => rows.push(row),
            Err(rej) => rejected.push(rej),
        })
        .unwrap();
        (rows, rejected)
    }

    fn keys_of(bytes: &[u8], object: &str) -> Vec<String> {
        let encoding = encoding_for(object, None).unwrap();
        let mut keys = Vec::new();
        read_keys(bytes, object, encoding, "id", &mut |k| {
            keys.push(k.to_owned())
        })
        .unwrap();
        keys
    }

    #[test]
    fn the_key_pass_finds_exactly_the_keys_of_the_rows_the_full_read_gives() {
        let lines = concat!(
            "{\"id\": \" a-1 \", \"v\": {\"nested\": [1, 2, {\"id\": \"inner\"}]}}\n",
            "{\"v\": 1, \"id\": 42}\n",
            "{\"id\": 1.5e3}\n",
            "{\"id\": \"x\", \"id\": \"last-wins\"}\n",
            "{\"\\u0069d\": \"escaped-name\"}\n",
            "\n",
            "not json\n",
            "[1, 2]\n",
            "{\"id\": \"trailing\"} garbage\n",
            "{\"id\": null}\n",
            "{\"id\": true}\n",
            "{\"id\": \"   \"}\n",
            "{\"other\": 1}\n",
            "{\"id\": \"ok-2\", \"name\": \"\\\"quoted\\\"\"}\n",
        );
        let (rows, _) = read_all(lines.as_bytes(), "x.jsonl");
        let full: Vec<String> = rows.iter().map(|r| r.key.as_str().to_owned()).collect();
        assert_eq!(
            full,
            ["a-1", "42", "1500.0", "last-wins", "escaped-name", "ok-2"]
        );
        assert_eq!(keys_of(lines.as_bytes(), "x.jsonl"), full);
    }

    #[test]
    fn the_key_pass_reads_csv_and_gzip_like_the_full_read() {
        let csv = "id,name\n a ,x\nb,\"y, z\"\n,empty\nshort\n";
        let (rows, _) = read_all(csv.as_bytes(), "x.csv");
        let full: Vec<String> = rows.iter().map(|r| r.key.as_str().to_owned()).collect();
        assert_eq!(keys_of(csv.as_bytes(), "x.csv"), full);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"id\": \"g1\"}\n{\"id\": \"g2\"}\n")
            .unwrap();
        let gz = gz.finish().unwrap();
        let truncated = &gz[..gz.len() - 6];
        let (rows, _) = read_all(truncated, "x.jsonl.gz");
        let full: Vec<String> = rows.iter().map(|r| r.key.as_str().to_owned()).collect();
        assert_eq!(keys_of(truncated, "x.jsonl.gz"), full);
        assert_eq!(keys_of(&gz, "x.jsonl.gz"), ["g1", "g2"]);
    }

    #[test]
    fn encodings_come_from_object_names() {
        let e = encoding_for("x/part-0001.csv.gz", None).unwrap();
        assert_eq!(e.format, SourceFormat::Csv);
        assert!(e.gzip);
        assert_eq!(
            encoding_for("a.ndjson", None).unwrap().format,
            SourceFormat::Jsonl
        );
        assert!(encoding_for("a.parquet", None).is_none());
        assert_eq!(
            encoding_for("a.txt", Some(SourceFormat::Csv))
                .unwrap()
                .format,
            SourceFormat::Csv
        );
    }

    #[test]
    fn a_malformed_jsonl_line_is_rejected_with_its_line_and_the_rest_proceeds() {
        let data =
            b"{\"id\":1,\"n\":\"a\"}\n{\"id\":2,\n\n{\"n\":\"no key\"}\n[1,2]\n{\"id\":\"5\"}\n";
        let (rows, rejected) = read_all(data, "exports/a.jsonl");
        assert_eq!(
            rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            vec!["1", "5"]
        );
        let lines: Vec<(u64, &str)> = rejected.iter().map(|r| (r.line, r.code.as_str())).collect();
        assert_eq!(
            lines,
            vec![
                (2, "malformed_line"),
                (4, "missing_primary_key"),
                (5, "malformed_line")
            ]
        );
        assert!(rejected.iter().all(|r| r.object == "exports/a.jsonl"));
    }

    #[test]
    fn rejection_reasons_do_not_echo_row_values() {
        let data = b"{\"id\":\"1\",\"secret\":\"hunter2\"\n";
        let (_, rejected) = read_all(data, "a.jsonl");
        assert_eq!(rejected.len(), 1);
        assert!(
            !rejected[0].reason.contains("hunter2"),
            "{}",
            rejected[0].reason
        );
    }

    #[test]
    fn csv_rows_become_string_fields_and_short_records_are_rejected() {
        let data = b"id,name,email\n1,Ada,ada@example.com\n2,Bob\n3,\"Eve, Jr\",eve@example.com\n";
        let (rows, rejected) = read_all(data, "b.csv");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1].fields.to_map()["name"],
            Value::String("Eve, Jr".into())
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].line, 3);
    }

    #[test]
    fn gzip_objects_are_decoded_as_a_stream() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in 0..1000 {
            writeln!(encoder, "{{\"id\":{i}}}").unwrap();
        }
        let bytes = encoder.finish().unwrap();
        let (rows, rejected) = read_all(&bytes, "c.jsonl.gz");
        assert_eq!(rows.len(), 1000);
        assert!(rejected.is_empty());
    }

    #[test]
    fn truncated_gzip_keeps_the_rows_before_and_rejects_the_rest() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in 0..1000 {
            writeln!(encoder, "{{\"id\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50)).unwrap();
        }
        let bytes = encoder.finish().unwrap();
        let (rows, rejected) = read_all(&bytes[..bytes.len() / 2], "d.jsonl.gz");
        assert!(rows.len() < 1000);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].code, "unreadable_object");
    }

    /// Issue 13, item 8: a key longer than 1,024 bytes was rejected as a missing key,
    /// with no sign of which key it was. It has its own code and shows the key's start.
    #[test]
    fn a_key_too_long_for_the_index_is_rejected_as_such_with_its_start() {
        let long = format!("acct-{}", "é".repeat(600));
        let data = format!(
            "{}\n{}\n",
            serde_json::json!({"id": long}),
            serde_json::json!({"id": "ok"})
        );
        let (rows, rejected) = read_all(data.as_bytes(), "k.jsonl");
        assert_eq!(rows.len(), 1);
        assert_eq!(rejected.len(), 1);
        let rejection = &rejected[0];
        assert_eq!(
            (
                rejection.code.as_str(),
                rejection.line,
                rejection.key.is_none()
            ),
            ("primary_key_too_long", 1, true)
        );
        assert!(
            rejection.reason.contains("\"acct-éé"),
            "{}",
            rejection.reason
        );
        assert!(
            rejection.reason.contains("1205 bytes"),
            "{}",
            rejection.reason
        );
        assert!(rejection
            .reason
            .contains("not kept in the failed-row index"));
        let csv = format!("id,v\n{long},1\n");
        let (_, rejected) = read_all(csv.as_bytes(), "k.csv");
        assert_eq!(rejected[0].code, "primary_key_too_long");
    }

    #[test]
    fn numeric_keys_become_text_and_other_types_are_refused() {
        let mut fields = Map::new();
        fields.insert("id".into(), serde_json::json!(12));
        assert_eq!(key_of(&fields, "id").unwrap().as_str(), "12");
        fields.insert("id".into(), serde_json::json!(true));
        assert!(key_of(&fields, "id").unwrap_err().contains("a boolean"));
    }
}
