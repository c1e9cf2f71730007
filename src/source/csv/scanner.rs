//! The byte layer of the CSV reader: RFC 4180 records and their fields, physical line numbers
//! (`\n`, `\r\n` and a bare `\r` each end one line), and quote state. It knows nothing of
//! columns: what a record means, and whether its shape is acceptable, is `rows.rs`'s business.
//!
//! Record boundaries are RFC 4180's: a quote that closes holds whatever it holds, line ends and
//! commas included, so a record is never cut inside one. The one departure is a quote still open
//! at the end of the input: the record is reported from its opening, and reading goes back to the
//! line after the quote's first line end, so an unterminated quote never swallows the records
//! after it. That is the only case where bytes are read twice, which is why the input must seek.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use super::MAX_RECORD_BYTES;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One record's fields, in one reused buffer: memory stays at most [`MAX_RECORD_BYTES`] whatever
/// the input holds.
#[derive(Debug, Default)]
pub(super) struct Record {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// Fields seen, including those not stored once the record passed [`MAX_RECORD_BYTES`].
    fields: usize,
    /// The record passed [`MAX_RECORD_BYTES`]: fields after that point are counted, not stored.
    pub(super) overflow: bool,
    /// Some field opened with a quote: the record is a row even if every field is blank.
    pub(super) quoted: bool,
}

impl Record {
    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.fields = 0;
        self.overflow = false;
        self.quoted = false;
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.data.len() + bytes.len() + 8 * self.ends.len() > MAX_RECORD_BYTES {
            self.overflow = true;
            return;
        }
        self.data.extend_from_slice(bytes);
    }

    fn end_field(&mut self) {
        self.fields += 1;
        if !self.overflow {
            self.ends.push(self.data.len());
        }
    }

    /// Drops the current field's bytes from `len` on (the field stays open).
    fn truncate_field(&mut self, len: usize) {
        if !self.overflow {
            self.data.truncate(len);
        }
    }

    /// Fields in the record, stored or not.
    pub(super) fn len(&self) -> usize {
        self.fields
    }

    /// Field `i`'s bytes, quotes removed and doubled quotes undone; `None` past the stored ones.
    pub(super) fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    /// The stored fields, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).filter_map(|i| self.get(i))
    }
}

/// A quoted field that spans lines, as first seen.
#[derive(Debug, Clone, Copy)]
pub(super) struct MultiLine {
    pub(super) field: usize,
    /// Line of the opening quote.
    pub(super) line: u64,
    /// Offset and line just after the first line end inside the quotes: where reading goes on
    /// if the quote turns out to be unterminated.
    pub(super) after_first_break: (u64, u64),
}

/// A quote still open at the end of the input. The record is reported from its opening, and
/// reading has gone back to the line after the quote's first line: the quoted field keeps its
/// first line only.
#[derive(Debug, Clone, Copy)]
pub(super) struct BadQuote {
    pub(super) open: MultiLine,
    /// The input's last line, where the scan for the closing quote stopped.
    pub(super) last_line: u64,
}

/// Text follows a closing quote (`"a"b`) instead of a comma or a line end. The rest is read
/// into the field up to the next separator, as the record's bytes; the row decides what that
/// means.
#[derive(Debug, Clone, Copy)]
pub(super) struct AfterQuote {
    pub(super) field: usize,
    pub(super) open_line: u64,
    pub(super) close_line: u64,
    pub(super) byte: u8,
}

/// What one call of [`Scanner::next_record`] found, besides the record's fields.
#[derive(Debug)]
pub(super) struct Scanned {
    /// First and last physical line of the record.
    pub(super) line: u64,
    pub(super) last_line: u64,
    pub(super) bad_quote: Option<BadQuote>,
    /// The first closing quote followed by text.
    pub(super) after_quote: Option<AfterQuote>,
    /// The first quoted field that spans lines, and the line its quote closed on.
    pub(super) multi_line: Option<(MultiLine, u64)>,
}

/// The physical reader: bytes, the current line and offset.
pub(super) struct Scanner<R> {
    input: BufReader<R>,
    /// 1-based line of the next byte.
    line: u64,
    /// Offset of the next byte.
    offset: u64,
    /// Offset where the current line began.
    line_start: u64,
    /// Furthest offset read (reading goes back after an unterminated quote).
    furthest: u64,
    /// Most bytes one record may run over, and what it is called in the error.
    bound: (u64, &'static str),
}

impl<R: Read + Seek> Scanner<R> {
    /// A scanner over `inner` buffered `capacity` bytes at a time (any capacity from 1 reads
    /// the same records: tests run it with 1–9), past a UTF-8 byte order mark if there is one.
    pub(super) fn new(inner: R, capacity: usize) -> io::Result<Scanner<R>> {
        let mut scanner = Scanner {
            input: BufReader::with_capacity(capacity, inner),
            line: 1,
            offset: 0,
            line_start: 0,
            furthest: 0,
            bound: (u64::MAX, "one record"),
        };
        for expected in BOM {
            if scanner.peek()? != Some(*expected) {
                scanner.seek((0, 1))?;
                return Ok(scanner);
            }
            scanner.bump(1);
        }
        scanner.line_start = scanner.offset;
        Ok(scanner)
    }

    /// A record running over more than `bytes` of input is an error (`InvalidData`), raised
    /// while streaming: the input is no CSV the tool can read.
    pub(super) fn bound(&mut self, bytes: u64, what: &'static str) {
        self.bound = (bytes, what);
    }

    fn within_bound(&self, start: u64) -> io::Result<()> {
        let (limit, what) = self.bound;
        if self.offset - start > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{what} runs on for more than {} without ending; is this a CSV file?",
                    show_bytes(limit)
                ),
            ));
        }
        Ok(())
    }

    /// 1-based line of the next byte.
    pub(super) fn line(&self) -> u64 {
        self.line
    }

    /// Bytes consumed so far, for a progress bar.
    pub(super) fn bytes_read(&self) -> u64 {
        self.furthest.max(self.offset)
    }

    /// Reads the next record into `record`, or `None` at the end of the input. Blank lines are
    /// records too (one empty or whitespace field); skipping them is the rows' rule.
    pub(super) fn next_record(&mut self, record: &mut Record) -> io::Result<Option<Scanned>> {
        let Some(scanned) = self.scan_record(record)? else {
            return Ok(None);
        };
        self.furthest = self.furthest.max(self.offset);
        if let Some(bad) = &scanned.bad_quote {
            // The lines the unterminated quote took in are read again as records.
            self.seek(bad.open.after_first_break)?;
        }
        Ok(Some(scanned))
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        Ok(self.input.fill_buf()?.first().copied())
    }

    fn bump(&mut self, n: usize) {
        self.input.consume(n);
        self.offset += n as u64;
    }

    /// Consumes one line end (`\n`, `\r\n` or a bare `\r`) starting at the next byte, copying it
    /// into `into` when given.
    fn line_end(&mut self, first: u8, into: Option<&mut Record>) -> io::Result<()> {
        self.bump(1);
        let crlf = first == b'\r' && self.peek()? == Some(b'\n');
        if crlf {
            self.bump(1);
        }
        if let Some(record) = into {
            let one = [first];
            record.push(if crlf { b"\r\n" } else { &one });
        }
        self.line += 1;
        self.line_start = self.offset;
        Ok(())
    }

    fn seek(&mut self, (offset, line): (u64, u64)) -> io::Result<()> {
        self.input.seek(SeekFrom::Start(offset))?;
        self.offset = offset;
        self.line = line;
        self.line_start = offset;
        Ok(())
    }

    /// Takes what the input's buffer holds into `record`, up to the first byte `stop` accepts
    /// (left unread), checking the record's bound; `false` at the end of the input.
    #[inline]
    fn take_until(
        &mut self,
        record: &mut Record,
        start_offset: u64,
        stop: impl Fn(u8) -> bool,
    ) -> io::Result<bool> {
        let buf = self.input.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        let n = buf.iter().position(|&b| stop(b)).unwrap_or(buf.len());
        record.push(&buf[..n]);
        self.bump(n);
        self.within_bound(start_offset)?;
        Ok(true)
    }

    /// One record from the current position, or `None` at the end of the input.
    fn scan_record(&mut self, record: &mut Record) -> io::Result<Option<Scanned>> {
        if self.peek()?.is_none() {
            return Ok(None);
        }
        let start_line = self.line;
        let start_offset = self.offset;
        record.clear();
        let mut multi_line: Option<(MultiLine, u64)> = None;
        let mut after_quote: Option<AfterQuote> = None;
        let end_line;
        loop {
            let field = record.fields;
            let field_start = record.data.len();
            if self.peek()? == Some(b'"') {
                record.quoted = true;
                self.bump(1);
                let open_line = self.line;
                let mut multi: Option<MultiLine> = None;
                let mut first_break_len = 0;
                // Inside the quotes, up to the closing quote. Past the record's cap nothing is
                // stored, but the scan goes on to the closing quote: a long field is one record.
                let closed = loop {
                    let quoted_text = |b| matches!(b, b'"' | b'\r' | b'\n');
                    if !self.take_until(record, start_offset, quoted_text)? {
                        break false;
                    }
                    match self.peek()? {
                        Some(b'"') => {
                            self.bump(1);
                            if self.peek()? == Some(b'"') {
                                self.bump(1);
                                record.push(b"\"");
                            } else {
                                break true;
                            }
                        }
                        Some(b @ (b'\r' | b'\n')) => {
                            if multi.is_none() {
                                first_break_len = record.data.len();
                            }
                            self.line_end(b, Some(record))?;
                            multi.get_or_insert(MultiLine {
                                field,
                                line: open_line,
                                after_first_break: (self.offset, self.line),
                            });
                        }
                        _ => {}
                    }
                };
                if !closed {
                    if let Some(open) = multi {
                        return Ok(Some(self.bad_quote(
                            record,
                            start_line,
                            open,
                            field_start,
                            first_break_len,
                        )));
                    }
                    // Open quote on the input's last line: nothing was taken in.
                    record.end_field();
                    return Ok(Some(Scanned {
                        line: start_line,
                        last_line: self.line,
                        bad_quote: Some(BadQuote {
                            open: MultiLine {
                                field,
                                line: open_line,
                                after_first_break: (self.offset, self.line),
                            },
                            last_line: self.line,
                        }),
                        after_quote: None,
                        multi_line: None,
                    }));
                }
                let close_line = self.line;
                match self.peek()? {
                    None | Some(b',' | b'\r' | b'\n') => {}
                    // `"ab"c`: the rest is read into the field.
                    Some(byte) => {
                        after_quote.get_or_insert(AfterQuote {
                            field,
                            open_line,
                            close_line,
                            byte,
                        });
                    }
                }
                if multi_line.is_none() {
                    multi_line = multi.map(|m| (m, close_line));
                }
            }
            // Unquoted text (or the rest of a field after a stray quote) up to the separator.
            let ended = loop {
                let unquoted_text = |b| matches!(b, b',' | b'\r' | b'\n');
                if !self.take_until(record, start_offset, unquoted_text)? {
                    break None;
                }
                match self.peek()? {
                    Some(b @ (b',' | b'\r' | b'\n')) => break Some(b),
                    Some(_) => {}
                    None => break None,
                }
            };
            record.end_field();
            match ended {
                Some(b',') => self.bump(1),
                Some(b) => {
                    end_line = self.line;
                    self.line_end(b, None)?;
                    break;
                }
                None => {
                    end_line = self.line;
                    break;
                }
            }
        }
        Ok(Some(Scanned {
            line: start_line,
            last_line: end_line,
            bad_quote: None,
            after_quote,
            multi_line,
        }))
    }

    /// Ends the record at an unterminated quote: the quoted field keeps its first line only.
    fn bad_quote(
        &mut self,
        record: &mut Record,
        line: u64,
        open: MultiLine,
        field_start: usize,
        first_break_len: usize,
    ) -> Scanned {
        // At end of input just after a line end, the last line is the one that line end closed.
        let at_line_start = self.offset == self.line_start;
        let last_line = if at_line_start && self.line > open.line {
            self.line - 1
        } else {
            self.line
        };
        record.truncate_field(first_break_len.max(field_start));
        record.end_field();
        Scanned {
            line,
            last_line,
            bad_quote: Some(BadQuote { open, last_line }),
            after_quote: None,
            multi_line: None,
        }
    }
}

/// `64 KiB`, `64 MiB`.
fn show_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}
