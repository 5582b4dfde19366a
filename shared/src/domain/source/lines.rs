//! Lines of a JSON Lines object, read with a cap so that one huge line costs no more
//! memory than an ordinary one.

use std::io::BufRead;

/// The longest line (JSON Lines) or record (CSV) resync reads: 1 MiB, four times the
/// 256 KiB of one SQS message.
///
/// A row travels to delivery in one queue message (the row plus a small envelope) of at
/// most 256 KiB, so no line longer than that is ever delivered. Lines up to this cap are
/// still parsed, so that a row too large for a message is rejected as `row_too_large`
/// *with its key* (it reaches the failed-row index, where an operator sees which row it
/// is). Longer lines are rejected as `line_too_long` (no key: finding it would mean
/// holding the line) and read past without being held, so reading an object buffers at
/// most this many bytes of a line whatever its length.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// The UTF-8 byte order mark some exporters write at the start of a text file.
pub const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// What [`read_line_capped`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRead {
    /// A line (without its `\n`) is in the buffer.
    Line,
    /// A line longer than the cap was read past; the buffer is empty.
    TooLong {
        /// The line's length in bytes (without its `\n`).
        bytes: u64,
    },
    /// The end of the input.
    End,
}

/// Reads the next line into `buf` (cleared first), holding at most `cap` bytes of it:
/// a longer line is consumed up to its `\n` without being kept.
pub fn read_line_capped(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut seen: u64 = 0;
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            return Ok(match (seen, too_long) {
                (0, _) => LineRead::End,
                (bytes, true) => LineRead::TooLong { bytes },
                _ => LineRead::Line,
            });
        }
        let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        let taken = chunk.len();
        seen = seen.saturating_add(taken as u64);
        if !too_long {
            if buf.len() + taken > cap {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        reader.consume(taken + usize::from(ends));
        if ends {
            return Ok(if too_long {
                LineRead::TooLong { bytes: seen }
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_at_and_over_the_cap() {
        let data = b"abc\nabcd\n\nabcde";
        let mut reader = std::io::BufReader::with_capacity(2, &data[..]);
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        loop {
            match read_line_capped(&mut reader, &mut buf, 4).unwrap() {
                LineRead::End => break,
                LineRead::Line => seen.push(Ok(String::from_utf8(buf.clone()).unwrap())),
                LineRead::TooLong { bytes } => seen.push(Err(bytes)),
            }
        }
        assert_eq!(
            seen,
            [
                Ok("abc".into()),
                Ok("abcd".into()),
                Ok(String::new()),
                Err(5)
            ]
        );
    }
}
