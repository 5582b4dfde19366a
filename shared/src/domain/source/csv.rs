//! CSV with a header row: every cell a string, kept exactly (never trimmed).
//!
//! Two things the `csv` crate accepts silently are refused:
//! - a header that names a column twice (a parsed row would keep only the last value):
//!   the object is unreadable (`unreadable_object`, the reason names the column);
//! - a quote that is never closed (the parser would read every later record into that
//!   one value): the record is rejected as `unterminated_quote` at its line, so the
//!   records it swallowed are neither merged into it nor delivered.

use std::{
    cell::Cell,
    collections::HashMap,
    io::{BufRead, Read},
    rc::Rc,
};

use serde_json::{Map, Value};

use super::{key_in, reject, Rejection, SourceRow};
use crate::domain::row::RowFields;

/// The quoting state of the `csv` crate's parser (default dialect: `,`, `"` doubled to
/// escape, any of `\r`, `\n` ends a record), followed over the bytes it reads, so that
/// the end of the input is known to fall inside a quoted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// At the start of a field.
    FieldStart,
    /// In an unquoted field (a quote here is a literal character).
    Unquoted,
    /// In a quoted field, since the given line.
    Quoted { since: u64 },
    /// Just after a quote inside a quoted field (closing it, or the first of `""`).
    QuoteInQuoted { since: u64 },
}

/// Feeds the `csv` reader and tracks [`Quoting`] over every byte it hands on.
struct QuoteTracker<R> {
    inner: R,
    state: Rc<Cell<(Quoting, u64)>>,
}

impl<R: Read> Read for QuoteTracker<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        let (mut state, mut line) = self.state.get();
        for &byte in &out[..n] {
            if byte == b'\n' {
                line = line.saturating_add(1);
            }
            state = match (state, byte) {
                (Quoting::FieldStart, b'"') => Quoting::Quoted { since: line },
                (Quoting::FieldStart | Quoting::Unquoted, b',' | b'\n' | b'\r') => {
                    Quoting::FieldStart
                }
                (Quoting::FieldStart | Quoting::Unquoted, _) => Quoting::Unquoted,
                (Quoting::Quoted { since }, b'"') => Quoting::QuoteInQuoted { since },
                (Quoting::Quoted { since }, _) => Quoting::Quoted { since },
                (Quoting::QuoteInQuoted { since }, b'"') => Quoting::Quoted { since },
                (Quoting::QuoteInQuoted { .. }, b',' | b'\n' | b'\r') => Quoting::FieldStart,
                (Quoting::QuoteInQuoted { .. }, _) => Quoting::Unquoted,
            };
        }
        self.state.set((state, line));
        Ok(n)
    }
}

/// Reads every record as a row or a rejection; `Err` (with the line) when reading fails
/// or the header names a column twice.
pub(super) fn read_rows(
    reader: impl BufRead,
    object: &str,
    primary_key: &str,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), (u64, std::io::Error)> {
    let state = Rc::new(Cell::new((Quoting::FieldStart, 1)));
    let tracked = QuoteTracker {
        inner: reader,
        state: Rc::clone(&state),
    };
    let mut csv = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(tracked);
    let headers = match csv.headers() {
        Ok(headers) => headers.clone(),
        Err(err) => return failure(err, object, 1, emit),
    };
    check_header(&headers).map_err(|reason| {
        (
            1,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    })?;
    let columns = headers.len();
    let mut record = ::csv::StringRecord::new();
    // The latest record waits for the next one: only at the end of the input is it
    // known whether it ends inside a quote that was never closed.
    let mut pending: Option<(u64, Result<SourceRow, Rejection>)> = None;
    loop {
        let line = csv.position().line() + u64::from(csv.position().line() == 0);
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line());
                let row = row_of(&headers, &record, columns, object, line, primary_key);
                if let Some((_, earlier)) = pending.replace((line, row)) {
                    emit(earlier);
                }
            }
            Err(err) => {
                let line = err.position().map_or(line, |p| p.line());
                if let Some((_, earlier)) = pending.take() {
                    emit(earlier);
                }
                match err.kind() {
                    ::csv::ErrorKind::Utf8 { .. } => emit(Err(reject(
                        object,
                        line,
                        None,
                        "malformed_line",
                        "the record is not valid UTF-8".into(),
                    ))),
                    _ => return failure(err, object, line, emit),
                }
            }
        }
    }
    let (quoting, last_line) = state.get();
    match (quoting, pending) {
        (Quoting::Quoted { since }, pending) => {
            let line = pending.map_or(1, |(line, _)| line);
            emit(Err(reject(
                object,
                line,
                None,
                "unterminated_quote",
                format!(
                    "a quoted field opened on line {since} is never closed; lines {since} to {last_line} were not read as records"
                ),
            )));
        }
        (_, Some((_, row))) => emit(row),
        (_, None) => {}
    }
    Ok(())
}

/// A header that names a column twice is refused, naming the column.
fn check_header(headers: &::csv::StringRecord) -> Result<(), String> {
    let mut seen = HashMap::new();
    for (position, name) in headers.iter().enumerate() {
        if let Some(first) = seen.insert(name, position) {
            return Err(format!(
                "the CSV header names column '{name}' twice (columns {} and {})",
                first + 1,
                position + 1
            ));
        }
    }
    Ok(())
}

fn row_of(
    headers: &::csv::StringRecord,
    record: &::csv::StringRecord,
    columns: usize,
    object: &str,
    line: u64,
    primary_key: &str,
) -> Result<SourceRow, Rejection> {
    if record.len() != columns {
        return Err(reject(
            object,
            line,
            None,
            "malformed_line",
            format!(
                "expected {columns} fields as in the header, found {}",
                record.len()
            ),
        ));
    }
    let fields: Map<String, Value> = headers
        .iter()
        .zip(record.iter())
        .map(|(name, value)| (name.to_owned(), Value::String(value.to_owned())))
        .collect();
    let key = key_in(&fields, primary_key)
        .map_err(|(code, reason)| reject(object, line, None, code, reason))?;
    let fields = RowFields::from_map(&fields).map_err(|err| {
        reject(
            object,
            line,
            None,
            "malformed_line",
            format!("the record cannot be written as JSON: {err}"),
        )
    })?;
    Ok(SourceRow { key, fields, line })
}

fn failure(
    err: ::csv::Error,
    object: &str,
    line: u64,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), (u64, std::io::Error)> {
    match err.into_kind() {
        ::csv::ErrorKind::Io(io) => Err((line, io)),
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
