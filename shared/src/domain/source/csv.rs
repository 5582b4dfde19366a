//! CSV with a header row: every cell a string, kept exactly (never trimmed).
//!
//! The dialect is the common one (that of the `csv` crate's defaults): `,` between
//! fields, `"` around a field that holds them (`""` for a quote inside), a record ends at
//! `\n`, `\r\n` or a lone `\r` outside quotes, blank lines are skipped, a UTF-8 byte
//! order mark at the start of the object is ignored. Records are delimited here, byte by
//! byte, so that none is ever held longer than the cap:
//!
//! - **A record is at most [`MAX_LINE_BYTES`]** (counted in the bytes of the input,
//!   without its line end; a quoted field may span lines). A longer one is rejected as
//!   `line_too_long` at its first line — the code JSON Lines uses for the same limit, so
//!   that one rule and one code cover "a source row longer than 1 MiB" whatever the
//!   format — and read past without being held; the records after it are read with
//!   their lines. Memory while reading an object is bounded by the cap whatever the
//!   input: at most one record's cells of up to [`MAX_LINE_BYTES`] (plus one offset
//!   per cell), the header row (itself at most the cap) and one row's JSON text built
//!   from them.
//! - **A header that names a column twice** (a parsed row would keep only the last
//!   value), or that is longer than the cap or not UTF-8 (no column names to read the
//!   records by): the object is unreadable (`unreadable_object`, with the reason).
//! - **A quote that is never closed** would read every later record into that one
//!   value: the record is rejected as `unterminated_quote` at its first line, so the
//!   records it swallowed are neither merged into it nor delivered. This holds whatever
//!   the length of what follows the quote: past the cap the rest of the object is read
//!   to its end without being held (a quote open at the end of the object is the cause
//!   an operator can fix; `line_too_long` would hide it), and the reason gives its size.
//! - A record with another field count than the header, or not valid UTF-8, is
//!   `malformed_line`.
//!
//! A row's fields are written as JSON text straight from its cells, in the name order a
//! parsed map of them kept (so the text is the same), without building that map.
//!
//! A record's line is that of its first byte. `\n`, `\r\n` and a lone `\r` each end a
//! line between records; inside a quoted field a `\n` ends a line and a `\r` is a
//! character of the value.

use std::{
    collections::HashMap,
    io::{BufRead, Read},
};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{
    key_text, lines::BYTE_ORDER_MARK, no_value, reject, Rejection, SourceRow, MAX_LINE_BYTES,
};
use crate::domain::row::RowFields;

/// Where the reader is in a record (the `csv` crate's default dialect: `,`, `"` doubled
/// to escape, any of `\r`, `\n` ends a record outside quotes).
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

/// What [`Records::next_record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordRead {
    /// A record, at [`Records::line`], whose cells are in [`Records::cells`].
    Record,
    /// A record longer than the cap, read past; no cell is held.
    TooLong {
        /// Its length in bytes (without its line end).
        bytes: u64,
    },
    /// The object ended inside a quoted field.
    Unterminated {
        /// The line the quote opened on.
        since: u64,
        /// The last line of the object.
        last_line: u64,
        /// The record's length in bytes, to the end of the object.
        bytes: u64,
    },
    /// The end of the object.
    End,
}

/// Splits CSV into records, holding at most `cap` bytes of one.
pub(super) struct Records<R> {
    reader: R,
    cap: usize,
    /// The line of the next byte.
    next_line: u64,
    /// The last byte read ended a record with `\r` (a `\n` right after it is the same
    /// line end).
    after_cr: bool,
    /// The latest record's first line.
    line: u64,
    /// The latest record's cells, one after another.
    cells: Vec<u8>,
    /// Where each cell of the latest record ends in `cells`.
    ends: Vec<usize>,
}

impl<R: BufRead> Records<R> {
    /// Records of `reader`, each held up to `cap` bytes.
    pub(super) fn new(reader: R, cap: usize) -> Self {
        Self {
            reader,
            cap,
            next_line: 1,
            after_cr: false,
            line: 1,
            cells: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// The latest record's first line.
    pub(super) fn line(&self) -> u64 {
        self.line
    }

    /// The latest record's cells (after [`RecordRead::Record`]).
    pub(super) fn cells(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let cell = self.cells.get(start..end).unwrap_or_default();
            start = end;
            cell
        })
    }

    /// How many cells the latest record has.
    pub(super) fn cell_count(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of memory held for records (what the cap bounds): cells and their ends.
    #[cfg(test)]
    pub(super) fn held_capacity(&self) -> usize {
        self.cells.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }

    /// Reads the next record, skipping blank lines before it.
    pub(super) fn next_record(&mut self) -> std::io::Result<RecordRead> {
        self.cells.clear();
        self.ends.clear();
        let mut started = false;
        let mut quoting = Quoting::FieldStart;
        let mut bytes: u64 = 0;
        let mut too_long = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if available.is_empty() {
                return Ok(match (started, quoting, too_long) {
                    (false, ..) => RecordRead::End,
                    (true, Quoting::Quoted { since }, _) => RecordRead::Unterminated {
                        since,
                        last_line: self.next_line,
                        bytes,
                    },
                    (true, _, true) => RecordRead::TooLong { bytes },
                    (true, _, false) => {
                        self.ends.push(self.cells.len());
                        RecordRead::Record
                    }
                });
            }
            let mut used = 0;
            let mut ended = false;
            for &byte in available {
                used += 1;
                if !started {
                    match byte {
                        b'\n' => {
                            if !self.after_cr {
                                self.next_line = self.next_line.saturating_add(1);
                            }
                            self.after_cr = false;
                            continue;
                        }
                        b'\r' => {
                            self.next_line = self.next_line.saturating_add(1);
                            self.after_cr = true;
                            continue;
                        }
                        _ => {
                            started = true;
                            self.after_cr = false;
                            self.line = self.next_line;
                        }
                    }
                }
                let outside = !matches!(quoting, Quoting::Quoted { .. });
                if outside && (byte == b'\n' || byte == b'\r') {
                    self.next_line = self.next_line.saturating_add(1);
                    self.after_cr = byte == b'\r';
                    ended = true;
                    break;
                }
                bytes = bytes.saturating_add(1);
                if !too_long && bytes > self.cap as u64 {
                    too_long = true;
                    self.cells.clear();
                    self.ends.clear();
                }
                let (next, keep) = match (quoting, byte) {
                    (Quoting::FieldStart, b'"') => (
                        Quoting::Quoted {
                            since: self.next_line,
                        },
                        None,
                    ),
                    (
                        Quoting::FieldStart | Quoting::Unquoted | Quoting::QuoteInQuoted { .. },
                        b',',
                    ) => {
                        if !too_long {
                            self.ends.push(self.cells.len());
                        }
                        (Quoting::FieldStart, None)
                    }
                    (Quoting::FieldStart | Quoting::Unquoted, _) => (Quoting::Unquoted, Some(byte)),
                    (Quoting::Quoted { since }, b'"') => (Quoting::QuoteInQuoted { since }, None),
                    (Quoting::Quoted { since }, _) => {
                        if byte == b'\n' {
                            self.next_line = self.next_line.saturating_add(1);
                        }
                        (Quoting::Quoted { since }, Some(byte))
                    }
                    (Quoting::QuoteInQuoted { since }, b'"') => {
                        (Quoting::Quoted { since }, Some(b'"'))
                    }
                    (Quoting::QuoteInQuoted { .. }, _) => (Quoting::Unquoted, Some(byte)),
                };
                quoting = next;
                if let (Some(byte), false) = (keep, too_long) {
                    self.cells.push(byte);
                }
            }
            self.reader.consume(used);
            if ended {
                if too_long {
                    return Ok(RecordRead::TooLong { bytes });
                }
                self.ends.push(self.cells.len());
                return Ok(RecordRead::Record);
            }
        }
    }
}

/// The header's column names, and the order (by name) a row's fields are written in.
struct Header {
    names: Vec<String>,
    /// Column positions sorted by name: the order a parsed map of the cells kept, and so
    /// the fields' order in the row's JSON text.
    by_name: Vec<usize>,
    /// The primary key's column.
    key_column: Option<usize>,
}

/// Reads every record as a row or a rejection; `Err` (with the line) when reading fails
/// or the header cannot be used (a column named twice, longer than the cap, not UTF-8).
pub(super) fn read_rows(
    mut reader: impl BufRead,
    object: &str,
    primary_key: &str,
    emit: &mut dyn FnMut(Result<SourceRow, Rejection>),
) -> Result<(), (u64, std::io::Error)> {
    let mut head = Vec::with_capacity(BYTE_ORDER_MARK.len());
    (&mut reader)
        .take(BYTE_ORDER_MARK.len() as u64)
        .read_to_end(&mut head)
        .map_err(|err| (1, err))?;
    if head == BYTE_ORDER_MARK {
        head.clear();
    }
    let mut records = Records::new(std::io::Cursor::new(head).chain(reader), MAX_LINE_BYTES);
    let unusable = |line, reason: String| {
        (
            line,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    };
    let header = match records.next_record().map_err(|err| (1, err))? {
        RecordRead::End => return Ok(()),
        RecordRead::Record => header_of(&records, primary_key)
            .map_err(|reason| unusable(records.line(), reason))?,
        RecordRead::TooLong { bytes } => {
            return Err(unusable(
                records.line(),
                format!(
                    "the CSV header row is {bytes} bytes, longer than the {MAX_LINE_BYTES} a record may have"
                ),
            ))
        }
        RecordRead::Unterminated {
            since,
            last_line,
            bytes,
        } => {
            emit(Err(unterminated(object, records.line(), since, last_line, bytes)));
            return Ok(());
        }
    };
    loop {
        let read = records
            .next_record()
            .map_err(|err| (records.next_line, err))?;
        let line = records.line();
        match read {
            RecordRead::End => return Ok(()),
            RecordRead::Record => emit(row_of(&header, &records, object, primary_key)),
            RecordRead::TooLong { bytes } => emit(Err(reject(
                object,
                line,
                None,
                "line_too_long",
                format!(
                    "the CSV record is {bytes} bytes, longer than the {MAX_LINE_BYTES} a row may have (one queue message)"
                ),
            ))),
            RecordRead::Unterminated {
                since,
                last_line,
                bytes,
            } => {
                emit(Err(unterminated(object, line, since, last_line, bytes)));
                return Ok(());
            }
        }
    }
}

fn unterminated(object: &str, line: u64, since: u64, last_line: u64, bytes: u64) -> Rejection {
    let size = if bytes > MAX_LINE_BYTES as u64 {
        format!(
            " ({bytes} bytes, longer than the {MAX_LINE_BYTES} a record may have, read past without being held)"
        )
    } else {
        String::new()
    };
    reject(
        object,
        line,
        None,
        "unterminated_quote",
        format!(
            "a quoted field opened on line {since} is never closed; lines {since} to {last_line}{size} were not read as records"
        ),
    )
}

/// The header's names; refused (with the reason) when one is not UTF-8 or a name is
/// given twice.
fn header_of<R: BufRead>(records: &Records<R>, primary_key: &str) -> Result<Header, String> {
    let mut names = Vec::with_capacity(records.cell_count());
    for (position, cell) in records.cells().enumerate() {
        let name = std::str::from_utf8(cell).map_err(|_| {
            format!(
                "the CSV header's column {} is not valid UTF-8",
                position + 1
            )
        })?;
        names.push(name.to_owned());
    }
    let mut seen = HashMap::with_capacity(names.len());
    for (position, name) in names.iter().enumerate() {
        if let Some(first) = seen.insert(name.as_str(), position) {
            return Err(format!(
                "the CSV header names column '{name}' twice (columns {} and {})",
                first + 1,
                position + 1
            ));
        }
    }
    let mut by_name: Vec<usize> = (0..names.len()).collect();
    by_name.sort_by(|&a, &b| names[a].cmp(&names[b]));
    let key_column = names.iter().position(|name| name == primary_key);
    Ok(Header {
        names,
        by_name,
        key_column,
    })
}

/// A record's cells under the header's names, written in name order.
struct NamedCells<'a> {
    header: &'a Header,
    cells: &'a [&'a str],
}

impl Serialize for NamedCells<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.cells.len()))?;
        for &column in &self.header.by_name {
            if let (Some(name), Some(cell)) =
                (self.header.names.get(column), self.cells.get(column))
            {
                map.serialize_entry(name, cell)?;
            }
        }
        map.end()
    }
}

fn row_of<R: BufRead>(
    header: &Header,
    records: &Records<R>,
    object: &str,
    primary_key: &str,
) -> Result<SourceRow, Rejection> {
    let line = records.line();
    let mut cells = Vec::with_capacity(records.cell_count());
    for cell in records.cells() {
        match std::str::from_utf8(cell) {
            Ok(cell) => cells.push(cell),
            Err(_) => {
                return Err(reject(
                    object,
                    line,
                    None,
                    "malformed_line",
                    "the record is not valid UTF-8".into(),
                ))
            }
        }
    }
    let columns = header.names.len();
    if cells.len() != columns {
        return Err(reject(
            object,
            line,
            None,
            "malformed_line",
            format!(
                "expected {columns} fields as in the header, found {}",
                cells.len()
            ),
        ));
    }
    let key = match header.key_column.and_then(|column| cells.get(column)) {
        Some(cell) => key_text((*cell).to_owned(), primary_key),
        None => Err(("missing_primary_key", no_value(primary_key))),
    }
    .map_err(|(code, reason)| reject(object, line, None, code, reason))?;
    let fields = serde_json::to_string(&NamedCells {
        header,
        cells: &cells,
    })
    .and_then(RowFields::from_text)
    .map_err(|err| {
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
