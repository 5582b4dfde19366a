//! JSON Lines: one JSON object per line, a byte order mark at the start ignored, lines
//! longer than [`MAX_LINE_BYTES`] rejected without being held.

use std::io::BufRead;

use super::{
    err_without_position, json_type_of_text, key_from_raw,
    lines::{read_line_capped, LineRead, BYTE_ORDER_MARK, MAX_LINE_BYTES},
    reject, Rejection, SourceRow,
};
use crate::domain::{
    ids::PrimaryKey,
    row::{raw_field_of, RowFields},
};

/// One line's text: the line without a leading byte order mark (first line only) and
/// without surrounding whitespace; `Err` when it is not UTF-8.
fn line_text(buf: &[u8], line: u64) -> Result<&str, ()> {
    let bytes = match buf.strip_prefix(BYTE_ORDER_MARK) {
        Some(rest) if line == 1 => rest,
        _ => buf,
    };
    std::str::from_utf8(bytes).map(str::trim).map_err(|_| ())
}

/// A line's key, the line validated as one JSON object on the way (nothing but the key
/// is built). `Err` carries the rejection's code and reason.
fn line_key(text: &str, primary_key: &str) -> Result<PrimaryKey, (&'static str, String)> {
    match raw_field_of(text, primary_key) {
        Ok(raw) => key_from_raw(raw, primary_key),
        Err(_) => Err(("malformed_line", malformed_reason(text))),
    }
}

/// Words why a line is not a JSON object without building its value: the JSON is
/// checked by a pass that keeps nothing, the type named from the first character.
fn malformed_reason(text: &str) -> String {
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => format!("expected a JSON object, found {}", json_type_of_text(text)),
        Err(err) => format!("invalid JSON ({})", err_without_position(&err)),
    }
}

fn too_long(object: &str, line: u64, bytes: u64) -> Rejection {
    reject(
        object,
        line,
        None,
        "line_too_long",
        format!(
            "the line is {bytes} bytes, longer than the {MAX_LINE_BYTES} a row may have (one queue message)"
        ),
    )
}

/// Reads every line as a row or a rejection; `Err` (with the line) when reading fails.
pub(super) fn read_rows(
    mut reader: impl BufRead,
    object: &str,
    primary_key: &str,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), (u64, std::io::Error)> {
    let mut buf = Vec::with_capacity(1024);
    let mut line = 0u64;
    loop {
        let read = read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES)
            .map_err(|e| (line.saturating_add(1), e))?;
        line = line.saturating_add(1);
        match read {
            LineRead::End => return Ok(()),
            LineRead::TooLong { bytes } => {
                emit(Err(too_long(object, line, bytes)));
                continue;
            }
            LineRead::Line => {}
        }
        let Ok(text) = line_text(&buf, line) else {
            emit(Err(reject(
                object,
                line,
                None,
                "malformed_line",
                "the line is not valid UTF-8".into(),
            )));
            continue;
        };
        if text.is_empty() {
            continue;
        }
        let row = line_key(text, primary_key).and_then(|key| {
            let fields = RowFields::from_text(text)
                .map_err(|_| ("malformed_line", malformed_reason(text)))?;
            Ok(SourceRow { key, fields, line })
        });
        emit(row.map_err(|(code, reason)| reject(object, line, None, code, reason)));
    }
}

/// Reads only the keys of the lines [`read_rows`] would give rows for.
pub(super) fn read_keys(
    mut reader: impl BufRead,
    primary_key: &str,
    emit: &mut dyn FnMut(&str),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut line = 0u64;
    loop {
        let read = read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES)?;
        line = line.saturating_add(1);
        match read {
            LineRead::End => return Ok(()),
            LineRead::TooLong { .. } => continue,
            LineRead::Line => {}
        }
        let Ok(text) = line_text(&buf, line) else {
            continue;
        };
        if let Ok(key) = line_key(text, primary_key) {
            emit(key.as_str());
        }
    }
}
