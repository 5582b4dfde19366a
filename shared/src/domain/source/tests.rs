//! Parsing tests: rows, rejections, keys, encodings.

use super::lines::{read_line_capped, LineRead};
use super::*;
use std::io::Write;

mod csv_records;

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
        [" a-1 ", "42", "1.5e3", "last-wins", "escaped-name", "ok-2"]
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
    let data = b"{\"id\":1,\"n\":\"a\"}\n{\"id\":2,\n\n{\"n\":\"no key\"}\n[1,2]\n{\"id\":\"5\"}\n";
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
        rows[1].fields.to_map().unwrap()["name"],
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

fn keys_and_codes(bytes: &[u8], object: &str) -> (Vec<String>, Vec<(u64, String)>) {
    let (rows, rejected) = read_all(bytes, object);
    (
        rows.iter().map(|r| r.key.as_str().to_owned()).collect(),
        rejected.iter().map(|r| (r.line, r.code.clone())).collect(),
    )
}

/// Issue 13, item 4: integer keys beyond 64 bits lost precision and collided
/// (`…123` and `…124`), and number spellings changed the key (`7.50` → `7.5`,
/// `1e2` → `100.0`). A number key is its literal JSON text.
#[test]
fn number_keys_are_the_text_the_source_wrote() {
    let lines = concat!(
        "{\"id\": 12345678901234567890123}\n",
        "{\"id\": 12345678901234567890124}\n",
        "{\"id\": 98765432109876543210987}\n",
        "{\"id\": 7.50}\n",
        "{\"id\": 7.5}\n",
        "{\"id\": 1e2}\n",
        "{\"id\": 100}\n",
        "{\"id\": -0}\n",
    );
    let expected = [
        "12345678901234567890123",
        "12345678901234567890124",
        "98765432109876543210987",
        "7.50",
        "7.5",
        "1e2",
        "100",
        "-0",
    ];
    let (keys, rejected) = keys_and_codes(lines.as_bytes(), "n.jsonl");
    assert_eq!(keys, expected);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(keys_of(lines.as_bytes(), "n.jsonl"), expected);
}

/// Issue 13, item 5: keys were trimmed, so `"x"`, `" x"`, `"x "` and `"x\u00a0"`
/// collided and `"cr\r"` was delivered as `cr`. Keys are kept exactly as written
/// (JSON escapes decoded); only a key that is empty or all whitespace is refused.
#[test]
fn keys_are_kept_exactly_never_trimmed() {
    let lines = concat!(
        "{\"id\": \"x\"}\n",
        "{\"id\": \" x\"}\n",
        "{\"id\": \"x \"}\n",
        "{\"id\": \"x\\u00a0\"}\n",
        "{\"id\": \"cr\\r\"}\n",
        "{\"id\": \" \\t \"}\n",
        "{\"id\": \"\"}\n",
    );
    let expected = ["x", " x", "x ", "x\u{a0}", "cr\r"];
    let (keys, rejected) = keys_and_codes(lines.as_bytes(), "k.jsonl");
    assert_eq!(keys, expected);
    assert_eq!(
        rejected,
        [
            (6, "missing_primary_key".into()),
            (7, "missing_primary_key".into())
        ]
    );
    assert_eq!(keys_of(lines.as_bytes(), "k.jsonl"), expected);
    let csv = "id,v\nx,1\n x,2\nx ,3\n\"cr\r\",4\n   ,5\n";
    let (keys, rejected) = keys_and_codes(csv.as_bytes(), "k.csv");
    assert_eq!(keys, ["x", " x", "x ", "cr\r"]);
    assert_eq!(rejected, [(6, "missing_primary_key".into())]);
    assert_eq!(keys_of(csv.as_bytes(), "k.csv"), ["x", " x", "x ", "cr\r"]);
}

/// A reader of one huge line between two ordinary rows, produced as it is read.
struct HugeLine {
    head: &'static [u8],
    filler: usize,
    tail: &'static [u8],
}

impl Read for HugeLine {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.head.is_empty() {
            let n = self.head.len().min(out.len());
            out[..n].copy_from_slice(&self.head[..n]);
            self.head = &self.head[n..];
            return Ok(n);
        }
        if self.filler > 0 {
            let n = self.filler.min(out.len());
            out[..n].fill(b'x');
            self.filler -= n;
            return Ok(n);
        }
        let n = self.tail.len().min(out.len());
        out[..n].copy_from_slice(&self.tail[..n]);
        self.tail = &self.tail[n..];
        Ok(n)
    }
}

fn huge_line(filler: usize) -> HugeLine {
    HugeLine {
        head: b"{\"id\": \"before\"}\n{\"id\": \"huge\", \"notes\": \"",
        filler,
        tail: b"\"}\n{\"id\": \"after\"}\n",
    }
}

/// Issue 13, item 3: one malformed 50 MB line took 1.4–1.7 GB (the whole line was
/// buffered, then parsed into a `Value` to word the error). Lines longer than
/// [`MAX_LINE_BYTES`] are rejected as `line_too_long` and read past; the rest proceeds.
#[test]
fn a_line_longer_than_the_cap_is_rejected_and_the_rest_proceeds() {
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    let encoding = encoding_for("h.jsonl", None).unwrap();
    read_object(
        huge_line(20 << 20),
        "h.jsonl",
        encoding,
        "id",
        &mut |r| match r {
            Ok(row) => rows.push(row.key.as_str().to_owned()),
            Err(rej) => rejected.push(rej),
        },
    )
    .unwrap();
    assert_eq!(rows, ["before", "after"]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].line, rejected[0].code.as_str()),
        (2, "line_too_long")
    );
    assert_eq!(rejected[0].object, "h.jsonl");
    let mut keys = Vec::new();
    read_keys(huge_line(20 << 20), "h.jsonl", encoding, "id", &mut |k| {
        keys.push(k.to_owned())
    })
    .unwrap();
    assert_eq!(keys, ["before", "after"]);
}

/// Issue 13, item 3: reading past a too-long line buffers at most the cap (the
/// bytes held are counted, not timed or measured from the process).
#[test]
fn reading_past_a_too_long_line_buffers_at_most_the_cap() {
    let mut reader = BufReader::with_capacity(64 * 1024, huge_line(20 << 20));
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    loop {
        match read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES).unwrap() {
            LineRead::End => break,
            LineRead::Line => lines.push(Ok(buf.len())),
            LineRead::TooLong { bytes } => lines.push(Err(bytes)),
        }
        assert!(buf.capacity() <= 2 * MAX_LINE_BYTES, "{}", buf.capacity());
    }
    assert_eq!(lines.len(), 3);
    assert!(
        matches!(lines[1], Err(bytes) if bytes > 20 << 20),
        "{lines:?}"
    );
}

/// Errors are worded by kind and column (without building the line's value).
#[test]
fn errors_are_worded_by_kind_and_column() {
    let (_, rejected) = read_all(b"[1, 2]\n\"text\"\n{\"id\": 1,}\n", "w.jsonl");
    let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons[0], "expected a JSON object, found an array");
    assert_eq!(reasons[1], "expected a JSON object, found a string");
    assert!(reasons[2].starts_with("invalid JSON"), "{}", reasons[2]);
}

/// Issue 13, item 6: an unterminated quote swallowed the records after it into one
/// value (`planned 2, rejected 0` for 4 records). The record is rejected as
/// `unterminated_quote` at its line; the rows before it are kept.
#[test]
fn an_unterminated_csv_quote_is_rejected_with_its_line() {
    let csv = "id,name\n0,Zed\n1,\"Ada\n2,Bob\n3,Cy\n";
    let (keys, rejected) = keys_and_codes(csv.as_bytes(), "q.csv");
    assert_eq!(keys, ["0"]);
    assert_eq!(rejected, [(3, "unterminated_quote".into())]);
    assert_eq!(keys_of(csv.as_bytes(), "q.csv"), ["0"]);
    // A quoted field spanning lines and closed is a value, not an error.
    let csv = "id,name\n1,\"Ada\nLovelace\"\n2,\"a \"\"b\"\"\"\n";
    let (keys, rejected) = keys_and_codes(csv.as_bytes(), "q.csv");
    assert_eq!(keys, ["1", "2"]);
    assert!(rejected.is_empty(), "{rejected:?}");
}

/// Issue 13, item 6: duplicate header columns silently kept the last value. The
/// object is unreadable, and the reason names the column.
#[test]
fn duplicate_csv_header_columns_make_the_object_unreadable() {
    let csv = "id,email,email\n1,a@example.com,b@example.com\n";
    let (rows, rejected) = read_all(csv.as_bytes(), "d.csv");
    assert!(rows.is_empty());
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].line, rejected[0].code.as_str()),
        (1, "unreadable_object")
    );
    assert!(
        rejected[0].reason.contains("'email'"),
        "{}",
        rejected[0].reason
    );
}

/// Issue 13, item 9: a UTF-8 byte order mark at the start of a JSON Lines object
/// cost its first row (plain and gzip).
#[test]
fn a_byte_order_mark_does_not_cost_the_first_row() {
    let data = "\u{feff}{\"id\": \"first\"}\n{\"id\": \"second\"}\n";
    let (keys, rejected) = keys_and_codes(data.as_bytes(), "b.jsonl");
    assert_eq!(keys, ["first", "second"]);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(keys_of(data.as_bytes(), "b.jsonl"), ["first", "second"]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let (keys, rejected) = keys_and_codes(&gz, "b.jsonl.gz");
    assert_eq!(keys, ["first", "second"]);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(keys_of(&gz, "b.jsonl.gz"), ["first", "second"]);
}

#[test]
fn numeric_keys_become_text_and_other_types_are_refused() {
    let mut fields = Map::new();
    fields.insert("id".into(), serde_json::json!(12));
    assert_eq!(key_of(&fields, "id").unwrap().as_str(), "12");
    fields.insert("id".into(), serde_json::json!(true));
    assert!(key_of(&fields, "id").unwrap_err().contains("a boolean"));
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
