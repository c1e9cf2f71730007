//! The CSV source: streams an administrator's user list (SPEC.md "CSV input") into
//! [`NewItem`]s, one row at a time, and checks a file's header before a run is created
//! ([`check_header`]).
//!
//! Files run to hundreds of thousands of rows, so nothing is collected: one record buffer is
//! reused for every row and capped at [`MAX_RECORD_BYTES`], so memory stays flat whatever the
//! file holds. The reader is a small RFC 4180 scanner of its own rather than the `csv` crate,
//! because it must know exact physical line numbers, accept a bare CR as a line end
//! (spreadsheets' "CSV (Macintosh)"), and recover from a quote left open at the end of the file
//! by reading the lines it swallowed again as rows: a general-purpose parser does none of these.
//! A quote that closes is never re-read: its row is one record, as RFC 4180 reads it, and a
//! row of the wrong shape is one `bad_input` item naming its line span.
//!
//! A row that cannot be used never stops ingestion: it becomes an item with `bad_input` naming
//! the file, the line and the field. Only a file that cannot be opened, has no usable header, or
//! fails to read mid-way is a [`SourceError`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use crate::item::{NewItem, Overrides, UserKey};
use crate::validate::{email_syntax_error, is_language_tag, upn_length_error};

/// Why a CSV file cannot be read at all. Display: `users.csv: line 1: …`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}: cannot open: {source}")]
    Open {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}: line {line}: no header row (the file is empty or blank)")]
    NoHeader { file: String, line: u64 },
    /// `hint` lists the headers found and, when the file splits better on `;` or a tab, says so.
    #[error("{file}: line {line}: header has neither `id` nor `userPrincipalName`{hint}")]
    NoKeyColumn {
        file: String,
        line: u64,
        hint: String,
    },
    #[error("{file}: line {line}: header column {column} is not valid UTF-8")]
    HeaderNotUtf8 {
        file: String,
        line: u64,
        column: usize,
    },
    #[error("{file}: line {line}: header: {why}")]
    BadHeader {
        file: String,
        line: u64,
        why: String,
    },
    #[error("{file}: line {line}: read error: {source}")]
    Read {
        file: String,
        line: u64,
        #[source]
        source: io::Error,
    },
}

/// Checks that `path` is a CSV file the tool can use — it opens, has a header row, and the header
/// names `id` or `userPrincipalName` — reading only up to the header. Meant to run before a run
/// is created, so an unusable input is refused (exit 2) instead of leaving an empty run behind.
/// Returns the header's warnings (unknown or repeated columns).
pub fn check_header(path: &Path) -> Result<Vec<String>, SourceError> {
    CsvSource::open(path, 0).map(|source| source.warnings)
}

/// A record (with its quoted fields) is never held beyond this size: a longer row is one
/// `bad_input` item, however many lines its quotes span. Far above any real row.
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// Longest stretch of input one record may run over before the file is refused, while
/// streaming: past [`MAX_RECORD_BYTES`] nothing is stored but the scan goes on to the record's
/// end, so a legitimate long quoted field stays one `bad_input` row; a record still open after
/// this many bytes (`/dev/zero`, a binary file, a field that never closes) is no CSV the tool can
/// read, and reading stops at once instead of scanning without end.
pub const MAX_SCANNED_RECORD_BYTES: u64 = 64 << 20;

/// The header row is refused as soon as it runs past the record cap: it is stored whole.
pub const MAX_HEADER_BYTES: u64 = MAX_RECORD_BYTES as u64;

/// A warning names at most this many columns, then says how many more there are.
const MAX_NAMED_COLUMNS: usize = 20;

/// The columns SPEC.md defines; header names match them case-insensitively, no aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Id,
    UserPrincipalName,
    ExternalEmail,
    SendInvitationMessage,
    InviteRedirectUrl,
    MessageLanguage,
    CustomizedMessageBody,
    CcRecipient,
}

impl Column {
    const ALL: [Column; 8] = [
        Column::Id,
        Column::UserPrincipalName,
        Column::ExternalEmail,
        Column::SendInvitationMessage,
        Column::InviteRedirectUrl,
        Column::MessageLanguage,
        Column::CustomizedMessageBody,
        Column::CcRecipient,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::UserPrincipalName => "userPrincipalName",
            Column::ExternalEmail => "externalEmail",
            Column::SendInvitationMessage => "sendInvitationMessage",
            Column::InviteRedirectUrl => "inviteRedirectUrl",
            Column::MessageLanguage => "messageLanguage",
            Column::CustomizedMessageBody => "customizedMessageBody",
            Column::CcRecipient => "ccRecipient",
        }
    }

    fn from_header(name: &str) -> Option<Column> {
        Column::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

/// A field's value after decoding and trimming.
enum Field<'r> {
    Absent,
    Text(&'r str),
    NotUtf8,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One record's fields, in one reused buffer.
#[derive(Debug, Default)]
struct Record {
    data: Vec<u8>,
    ends: Vec<usize>,
    /// Fields seen, including those not stored once the record passed [`MAX_RECORD_BYTES`].
    fields: usize,
    overflow: bool,
    /// Some field opened with a quote: the record is a row even if every field is blank.
    quoted: bool,
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

    fn len(&self) -> usize {
        self.fields
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).filter_map(|i| self.get(i))
    }
}

/// A quoted field that spans lines, as first seen.
#[derive(Debug, Clone, Copy)]
struct MultiLine {
    field: usize,
    /// Line of the opening quote.
    line: u64,
    /// Offset and line just after the first line end inside the quotes: where reading goes on
    /// if the quote turns out to be unterminated.
    after_first_break: (u64, u64),
}

/// A quote still open at the end of the file. It is the one case where lines are read again:
/// the record is reported from its opening, and reading goes on with the line after it, so an
/// unterminated quote never swallows the rows after it.
#[derive(Debug, Clone, Copy)]
struct BadQuote {
    open: MultiLine,
    /// The file's last line, where the scan for the closing quote stopped.
    last_line: u64,
}

/// A row whose quotes closed but whose shape is wrong. Every RFC 4180 reader sees one record
/// here, so it stays one `bad_input` item: its lines are never read again as rows, whatever the
/// quotes hold (a notes cell with a pasted user list in it must not convert those users).
#[derive(Debug, Clone, Copy)]
enum Malformed {
    /// Text follows a closing quote (`"a"b`) instead of a comma or a line end.
    AfterQuote {
        field: usize,
        open_line: u64,
        close_line: u64,
        byte: u8,
    },
    /// A field that cannot hold line breaks (every column but the message body and ignored
    /// ones) took some in.
    LineBreaks {
        field: usize,
        open_line: u64,
        close_line: u64,
    },
}

impl Malformed {
    fn field(self) -> usize {
        match self {
            Malformed::AfterQuote { field, .. } | Malformed::LineBreaks { field, .. } => field,
        }
    }
}

/// The physical reader: bytes, the current line and offset.
struct Scanner {
    input: BufReader<File>,
    /// 1-based line of the next byte.
    line: u64,
    /// Offset of the next byte.
    offset: u64,
    /// Offset where the current line began.
    line_start: u64,
}

impl Scanner {
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
}

/// What one call of [`CsvSource::read_record`] found.
#[derive(Debug)]
struct Read {
    /// First and last physical line of the record.
    line: u64,
    last_line: u64,
    bad_quote: Option<BadQuote>,
    malformed: Option<Malformed>,
}

impl Read {
    /// " (row spans lines 2–4 …)" for a record of several lines, else nothing.
    fn span(&self) -> String {
        if self.last_line > self.line {
            format!(
                " (one row spanning lines {}–{}: none of its lines is read as a row of its own)",
                self.line, self.last_line
            )
        } else {
            String::new()
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

/// Streaming reader of one CSV input file.
pub struct CsvSource {
    file: String,
    scanner: Scanner,
    record: Record,
    /// Index of each [`Column`] in the header (first occurrence), by `Column as usize`.
    columns: [Option<usize>; 8],
    width: usize,
    warnings: Vec<String>,
    total_bytes: u64,
    /// Furthest offset read (reading goes back after an unterminated quote).
    furthest: u64,
    /// Fields of the current record that hold what the row says (fewer than all after an
    /// unterminated quote).
    usable: usize,
    skip_through_line: u64,
    done: bool,
}

impl CsvSource {
    /// Opens `path` and reads the header. Rows whose first line is ≤ `skip_through_line` were
    /// ingested by an earlier attempt (resume) and are skipped; 0 skips nothing.
    pub fn open(path: &Path, skip_through_line: u64) -> Result<CsvSource, SourceError> {
        let file_name = path.display().to_string();
        let open_err = |source| SourceError::Open {
            file: file_name.clone(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory",
            )));
        }
        let mut scanner = Scanner {
            input: BufReader::with_capacity(64 * 1024, file),
            line: 1,
            offset: 0,
            line_start: 0,
        };
        if scanner.input.fill_buf().map_err(open_err)?.starts_with(BOM) {
            scanner.bump(BOM.len());
            scanner.line_start = scanner.offset;
        }
        let mut source = CsvSource {
            file: file_name,
            scanner,
            record: Record::default(),
            columns: [None; 8],
            width: 0,
            warnings: Vec::new(),
            total_bytes: meta.len(),
            furthest: 0,
            usable: 0,
            skip_through_line,
            done: false,
        };
        let Some(read) = source.read_record()? else {
            return Err(SourceError::NoHeader {
                file: source.file,
                line: 1,
            });
        };
        if let Some(bad) = read.bad_quote {
            return Err(SourceError::BadHeader {
                file: source.file,
                line: read.line,
                why: format!("column {}: {}", bad.open.field + 1, quote_problem(&bad)),
            });
        }
        if let Some(bad) = read.malformed {
            return Err(SourceError::BadHeader {
                file: source.file,
                line: read.line,
                why: format!("column {}: {}", bad.field() + 1, malformed_problem(bad)),
            });
        }
        if source.record.overflow {
            return Err(SourceError::BadHeader {
                file: source.file,
                line: read.line,
                why: format!("longer than {} MiB", MAX_RECORD_BYTES >> 20),
            });
        }
        source.read_header(read.line)?;
        Ok(source)
    }

    /// Notices for the operator about the file as a whole (unknown or repeated columns).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bytes consumed so far, for a progress bar.
    pub fn bytes_read(&self) -> u64 {
        self.furthest.max(self.scanner.offset)
    }

    /// Size of the file when it was opened.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn read_header(&mut self, line: u64) -> Result<(), SourceError> {
        let mut unknown = Vec::new();
        let mut unknown_count = 0usize;
        let mut repeated = Vec::new();
        for (i, raw) in self.record.iter().enumerate() {
            let name = std::str::from_utf8(raw)
                .map_err(|_| SourceError::HeaderNotUtf8 {
                    file: self.file.clone(),
                    line,
                    column: i + 1,
                })?
                .trim();
            match Column::from_header(name) {
                Some(c) if self.columns[c as usize].is_none() => self.columns[c as usize] = Some(i),
                Some(c) => {
                    if !repeated.contains(&c.name()) {
                        repeated.push(c.name());
                    }
                }
                None => {
                    unknown_count += 1;
                    if unknown.len() < MAX_NAMED_COLUMNS {
                        unknown.push(if name.is_empty() {
                            format!("(unnamed column {})", i + 1)
                        } else {
                            show_name(name)
                        });
                    }
                }
            }
        }
        self.width = self.record.len();
        if self.columns[Column::Id as usize].is_none()
            && self.columns[Column::UserPrincipalName as usize].is_none()
        {
            let names: Vec<String> = self
                .record
                .iter()
                .map(|raw| String::from_utf8_lossy(raw).trim().to_string())
                .collect();
            return Err(SourceError::NoKeyColumn {
                file: self.file.clone(),
                line,
                hint: header_hint(&names),
            });
        }
        if unknown_count > 0 {
            let more = unknown_count - unknown.len();
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            self.warnings.push(format!(
                "{}: ignoring unknown columns: {}{tail}",
                self.file,
                unknown.join(", ")
            ));
        }
        if !repeated.is_empty() {
            self.warnings.push(format!(
                "{}: repeated columns, only the first of each is used: {}",
                self.file,
                repeated.join(", ")
            ));
        }
        Ok(())
    }

    fn read_err(&self, source: io::Error) -> SourceError {
        SourceError::Read {
            file: self.file.clone(),
            line: self.scanner.line,
            source,
        }
    }

    /// Reads the next non-blank record into `self.record`; `None` at end of file.
    fn read_record(&mut self) -> Result<Option<Read>, SourceError> {
        loop {
            match self.scan_record() {
                Err(e) => return Err(self.read_err(e)),
                Ok(None) => return Ok(None),
                Ok(Some(read)) => {
                    self.furthest = self.furthest.max(self.scanner.offset);
                    if let Some(bad) = &read.bad_quote {
                        // The lines the unterminated quote took in are read again as rows.
                        let resume = bad.open.after_first_break;
                        self.scanner.seek(resume).map_err(|e| self.read_err(e))?;
                        self.usable = bad.open.field;
                        return Ok(Some(read));
                    }
                    self.usable = read.malformed.map_or(self.record.len(), Malformed::field);
                    if !self.is_blank_line() {
                        return Ok(Some(read));
                    }
                }
            }
        }
    }

    /// An empty or whitespace-only line: one unquoted field of spaces. Skipped; a line with a
    /// comma or a quote (`""` included) is a row, even when every field is blank.
    fn is_blank_line(&self) -> bool {
        self.record.len() == 1
            && !self.record.quoted
            && !self.record.overflow
            && self
                .record
                .get(0)
                .is_some_and(|f| f.iter().all(|b| *b == b' ' || *b == b'\t'))
    }

    /// One record from the scanner's position, or `None` at end of file. Record boundaries are
    /// RFC 4180's: a closed quote holds whatever it holds, so a row is never cut inside one.
    fn scan_record(&mut self) -> io::Result<Option<Read>> {
        if self.scanner.peek()?.is_none() {
            return Ok(None);
        }
        let start_line = self.scanner.line;
        let start_offset = self.scanner.offset;
        let (limit, what) = if self.width == 0 {
            (MAX_HEADER_BYTES, "the header row")
        } else {
            (MAX_SCANNED_RECORD_BYTES, "one row")
        };
        let too_long = move |scanner: &Scanner| -> io::Result<()> {
            if scanner.offset - start_offset > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{what} runs on for more than {} without ending; is this a CSV file?",
                        show_bytes(limit)
                    ),
                ));
            }
            Ok(())
        };
        self.record.clear();
        // The first quoted field that spans lines, and the line its quote closed on.
        let mut first_multi_line: Option<(MultiLine, u64)> = None;
        let mut malformed: Option<Malformed> = None;
        let end_line;
        loop {
            let field = self.record.fields;
            let field_start = self.record.data.len();
            if self.scanner.peek()? == Some(b'"') {
                self.record.quoted = true;
                self.scanner.bump(1);
                let open_line = self.scanner.line;
                let mut multi: Option<MultiLine> = None;
                let mut first_break_len = 0;
                // Inside the quotes, up to the closing quote. Past the record's cap nothing is
                // stored, but the scan goes on to the closing quote: a long field is one row.
                let closed = loop {
                    let buf = self.scanner.input.fill_buf()?;
                    if buf.is_empty() {
                        break false;
                    }
                    let n = buf
                        .iter()
                        .position(|b| matches!(b, b'"' | b'\r' | b'\n'))
                        .unwrap_or(buf.len());
                    let chunk = &buf[..n];
                    self.record.push(chunk);
                    self.scanner.bump(n);
                    too_long(&self.scanner)?;
                    match self.scanner.peek()? {
                        Some(b'"') => {
                            self.scanner.bump(1);
                            if self.scanner.peek()? == Some(b'"') {
                                self.scanner.bump(1);
                                self.record.push(b"\"");
                            } else {
                                break true;
                            }
                        }
                        Some(b @ (b'\r' | b'\n')) => {
                            if multi.is_none() {
                                first_break_len = self.record.data.len();
                            }
                            self.scanner.line_end(b, Some(&mut self.record))?;
                            multi.get_or_insert(MultiLine {
                                field,
                                line: open_line,
                                after_first_break: (self.scanner.offset, self.scanner.line),
                            });
                        }
                        _ => {}
                    }
                };
                if !closed {
                    if let Some(open) = multi {
                        return Ok(Some(self.bad_quote(
                            start_line,
                            open,
                            field_start,
                            first_break_len,
                        )));
                    }
                    // Open quote on the file's last line: nothing was taken in.
                    self.record.end_field();
                    return Ok(Some(Read {
                        line: start_line,
                        last_line: self.scanner.line,
                        bad_quote: Some(BadQuote {
                            open: MultiLine {
                                field,
                                line: open_line,
                                after_first_break: (self.scanner.offset, self.scanner.line),
                            },
                            last_line: self.scanner.line,
                        }),
                        malformed: None,
                    }));
                }
                let close_line = self.scanner.line;
                match self.scanner.peek()? {
                    None | Some(b',' | b'\r' | b'\n') => {}
                    // `"ab"c`: the rest is read into the field, and the row is `bad_input`.
                    Some(byte) => {
                        malformed.get_or_insert(Malformed::AfterQuote {
                            field,
                            open_line,
                            close_line,
                            byte,
                        });
                    }
                }
                if first_multi_line.is_none() {
                    first_multi_line = multi.map(|m| (m, close_line));
                }
            }
            // Unquoted text (or the rest of a field after a stray quote) up to the separator.
            let ended = loop {
                let buf = self.scanner.input.fill_buf()?;
                if buf.is_empty() {
                    break None;
                }
                let n = buf
                    .iter()
                    .position(|b| matches!(b, b',' | b'\r' | b'\n'))
                    .unwrap_or(buf.len());
                let chunk = &buf[..n];
                self.record.push(chunk);
                self.scanner.bump(n);
                too_long(&self.scanner)?;
                match self.scanner.peek()? {
                    Some(b @ (b',' | b'\r' | b'\n')) => break Some(b),
                    Some(_) => {}
                    None => break None,
                }
            };
            self.record.end_field();
            match ended {
                Some(b',') => self.scanner.bump(1),
                Some(b) => {
                    end_line = self.scanner.line;
                    self.scanner.line_end(b, None)?;
                    break;
                }
                None => {
                    end_line = self.scanner.line;
                    break;
                }
            }
        }
        if malformed.is_none() {
            if let Some((open, close_line)) = first_multi_line {
                if self.width > 0
                    && self.record.len() == self.width
                    && !self.may_span_lines(open.field)
                {
                    malformed = Some(Malformed::LineBreaks {
                        field: open.field,
                        open_line: open.line,
                        close_line,
                    });
                }
            }
        }
        Ok(Some(Read {
            line: start_line,
            last_line: end_line,
            bad_quote: None,
            malformed,
        }))
    }

    /// Whether field `index` may hold a line break: only the message body and columns the tool
    /// ignores (notes).
    fn may_span_lines(&self, index: usize) -> bool {
        match self.columns.iter().position(|c| *c == Some(index)) {
            None => true,
            Some(c) => Column::ALL[c] == Column::CustomizedMessageBody,
        }
    }

    /// Ends the record at an unterminated quote: the quoted field keeps its first line only.
    fn bad_quote(
        &mut self,
        line: u64,
        open: MultiLine,
        field_start: usize,
        first_break_len: usize,
    ) -> Read {
        // At end of file just after a line end, the last line is the one that line end closed.
        let at_line_start = self.scanner.offset == self.scanner.line_start;
        let last_line = if at_line_start && self.scanner.line > open.line {
            self.scanner.line - 1
        } else {
            self.scanner.line
        };
        self.record.truncate_field(first_break_len.max(field_start));
        self.record.end_field();
        Read {
            line,
            last_line,
            bad_quote: Some(BadQuote { open, last_line }),
            malformed: None,
        }
    }

    fn column_name(&self, index: usize) -> String {
        match self.columns.iter().position(|c| *c == Some(index)) {
            Some(c) => Column::ALL[c].name().to_string(),
            None => format!("column {}", index + 1),
        }
    }

    fn field(&self, column: Column) -> Field<'_> {
        let index = self.columns[column as usize].filter(|i| *i < self.usable);
        let Some(raw) = index.and_then(|i| self.record.get(i)) else {
            return Field::Absent;
        };
        match std::str::from_utf8(raw) {
            Ok(s) if s.trim().is_empty() => Field::Absent,
            Ok(s) => Field::Text(s.trim()),
            Err(_) => Field::NotUtf8,
        }
    }

    /// Turns the current record into an item; every problem found goes into `bad_input`.
    fn parse_row(&self, read: &Read) -> NewItem {
        let line = read.line;
        let mut problems = Vec::new();
        let shaped = read.bad_quote.is_none() && read.malformed.is_none() && !self.record.overflow;
        let aligned = shaped && self.record.len() == self.width;
        let all_blank = shaped
            && self
                .record
                .iter()
                .all(|f| f.iter().all(u8::is_ascii_whitespace));
        if let Some(bad) = &read.bad_quote {
            problems.push(format!(
                "field {}: {}",
                self.column_name(bad.open.field),
                quote_problem(bad)
            ));
        } else if let Some(bad) = read.malformed {
            problems.push(format!(
                "field {}: {}{}",
                self.column_name(bad.field()),
                malformed_problem(bad),
                read.span()
            ));
        } else if self.record.overflow {
            problems.push(format!(
                "row longer than {} MiB: not read{}",
                MAX_RECORD_BYTES >> 20,
                read.span()
            ));
        } else if all_blank {
            problems.push("every field is blank: no id and no userPrincipalName".to_string());
        } else if !aligned {
            problems.push(format!(
                "expected {} fields, found {}{}",
                self.width,
                self.record.len(),
                read.span()
            ));
        }
        let this: &CsvSource = self;
        let mut unreadable = Vec::new();
        let mut text = |column: Column| match this.field(column) {
            Field::Absent => None,
            Field::Text(s) => Some(s),
            Field::NotUtf8 => {
                unreadable.push(column);
                None
            }
        };

        let id = text(Column::Id);
        let upn = text(Column::UserPrincipalName);
        let mut overrides = Overrides::default();
        let mut external_email = None;
        // On a misaligned row the other columns may hold anything: only its key is read,
        // so the report can still say whose row it was.
        let (email, send, redirect, language, body, cc) = if aligned {
            (
                text(Column::ExternalEmail),
                text(Column::SendInvitationMessage),
                text(Column::InviteRedirectUrl),
                text(Column::MessageLanguage),
                text(Column::CustomizedMessageBody),
                text(Column::CcRecipient),
            )
        } else {
            (None, None, None, None, None, None)
        };
        for column in &unreadable {
            problems.push(format!("field {}: not valid UTF-8", column.name()));
        }
        let key_unreadable = unreadable
            .iter()
            .any(|c| matches!(c, Column::Id | Column::UserPrincipalName));

        let key = if let Some(id) = id {
            if !is_guid(id) {
                problems.push(format!("field id: {} is not an object id (GUID)", show(id)));
            }
            Some(UserKey::Id(id.to_string()))
        } else if let Some(upn) = upn {
            if let Some(why) = upn_length_error(upn) {
                problems.push(format!("field userPrincipalName: {} is {why}", show(upn)));
            } else if !is_upn(upn) {
                problems.push(format!(
                    "field userPrincipalName: {} is not a user principal name (needs exactly one @)",
                    show(upn)
                ));
            }
            Some(UserKey::UserPrincipalName(upn.to_string()))
        } else {
            if aligned && !all_blank && !key_unreadable {
                problems.push("no id and no userPrincipalName".to_string());
            }
            None
        };

        let email_check = |column: Column, value: &str, problems: &mut Vec<String>| {
            if let Some(why) = email_syntax_error(value) {
                problems.push(format!(
                    "field {}: {} is not a valid email address ({why})",
                    column.name(),
                    show(value)
                ));
            }
        };
        if let Some(email) = email {
            email_check(Column::ExternalEmail, email, &mut problems);
            external_email = Some(email.to_string());
        }
        if let Some(send) = send {
            match parse_bool(send) {
                Some(b) => overrides.send_invitation_message = Some(b),
                None => problems.push(format!(
                    "field sendInvitationMessage: {} is not true or false",
                    show(send)
                )),
            }
        }
        if let Some(url) = redirect {
            if is_http_url(url) {
                overrides.invite_redirect_url = Some(url.to_string());
            } else {
                problems.push(format!(
                    "field inviteRedirectUrl: {} is not an https:// or http:// URL",
                    show(url)
                ));
            }
        }
        if let Some(tag) = language {
            if is_language_tag(tag) {
                overrides.message_language = Some(tag.to_string());
            } else {
                problems.push(format!(
                    "field messageLanguage: {} is not a language tag like en-US",
                    show(tag)
                ));
            }
        }
        if let Some(body) = body {
            if body.len() > crate::config::MAX_MESSAGE_BYTES {
                problems.push(format!(
                    "field customizedMessageBody: {} bytes; at most {} KiB",
                    body.len(),
                    crate::config::MAX_MESSAGE_BYTES / 1024
                ));
            } else {
                overrides.customized_message_body = Some(body.to_string());
            }
        }
        if let Some(cc) = cc {
            email_check(Column::CcRecipient, cc, &mut problems);
            overrides.cc_recipient = Some(cc.to_string());
        }

        let bad_input = (!problems.is_empty())
            .then(|| format!("{}: line {line}: {}", self.file, problems.join("; ")));
        NewItem {
            line: Some(line),
            key,
            external_email,
            overrides,
            bad_input,
            snapshot: None,
        }
    }
}

impl Iterator for CsvSource {
    type Item = Result<NewItem, SourceError>;

    /// `Err` only for a read failure mid-file, after which the source is finished.
    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.read_record() {
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Some(read)) if read.line <= self.skip_through_line => {}
                Ok(Some(read)) => return Some(Ok(self.parse_row(&read))),
            }
        }
        None
    }
}

/// What the operator is told about an unterminated quote: where it opened, how many lines it
/// spans, and that those lines are not lost.
fn quote_problem(bad: &BadQuote) -> String {
    let open = bad.open.line;
    let spans = bad.last_line.saturating_sub(open) + 1;
    let lines = if spans == 1 { "line" } else { "lines" };
    let mut message = format!(
        "unterminated quote: the quote opened on line {open} is never closed (spans {spans} {lines})"
    );
    if spans > 1 {
        message.push_str(&format!(
            "; the lines after line {open} are read as rows of their own"
        ));
    }
    message
}

/// What the operator is told about a closed quote that broke its row.
fn malformed_problem(bad: Malformed) -> String {
    match bad {
        Malformed::AfterQuote {
            open_line,
            close_line,
            byte,
            ..
        } => {
            let opened = if open_line == close_line {
                String::new()
            } else {
                format!("opened on line {open_line} ")
            };
            format!(
                "text after a closing quote: the quote {opened}closes on line {close_line} followed by {} instead of a comma or a line end",
                show_byte(byte)
            )
        }
        Malformed::LineBreaks {
            open_line,
            close_line,
            ..
        } => format!(
            "line breaks this field cannot hold: the quote opened on line {open_line} closes only on line {close_line}"
        ),
    }
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("{:?}", b as char)
    } else {
        format!("byte 0x{b:02X}")
    }
}

/// A header name quoted for a warning, cut short like [`show`].
/// "; found: a, b, c" and, when the header splits into more names on `;` or a tab than on
/// commas (a spreadsheet saved in a European locale, or a TSV), the delimiter to save with.
fn header_hint(names: &[String]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(MAX_NAMED_COLUMNS)
        .map(|n| {
            if n.is_empty() {
                "(empty)".to_string()
            } else {
                show_name(n)
            }
        })
        .collect();
    let more = names.len().saturating_sub(shown.len());
    let mut hint = format!("; found: {}", shown.join(", "));
    if more > 0 {
        hint.push_str(&format!(" and {more} more"));
    }
    let joined = names.join(",");
    let better = [(';', "semicolons"), ('\t', "tabs")]
        .into_iter()
        .map(|(d, what)| (joined.split(d).count(), d, what))
        .filter(|(n, _, _)| *n > names.len())
        .max_by_key(|(n, _, _)| *n);
    if let Some((_, delimiter, what)) = better {
        let key_inside = joined.split(delimiter).any(|n| {
            let n = n.trim();
            n.eq_ignore_ascii_case("id") || n.eq_ignore_ascii_case("userPrincipalName")
        });
        hint.push_str(&format!(
            "; the header splits better on {what}{}: the file must be comma-separated: save it again as \"CSV UTF-8 (Comma delimited)\"",
            if key_inside { " and then names a key column" } else { "" }
        ));
    }
    hint
}

fn show_name(name: &str) -> String {
    const MAX: usize = 40;
    if name.chars().count() <= MAX {
        name.to_string()
    } else {
        let cut: String = name.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// 8-4-4-4-12 hexadecimal digits.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_upn(s: &str) -> bool {
    matches!(s.split_once('@'), Some((user, domain))
        if !user.is_empty() && !domain.is_empty() && !domain.contains('@'))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty()) && !s.chars().any(char::is_whitespace)
}

/// A value quoted for a message, cut short so a runaway field cannot flood the report.
fn show(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    const G1: &str = "11111111-1111-1111-1111-111111111111";
    const G2: &str = "22222222-2222-2222-2222-22222222222a";

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn write(content: &[u8]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        File::create(&path).unwrap().write_all(content).unwrap();
        Fixture { _dir: dir, path }
    }

    fn items(content: &str) -> Vec<NewItem> {
        items_from(content.as_bytes(), 0)
    }

    fn items_from(content: &[u8], skip: u64) -> Vec<NewItem> {
        let f = write(content);
        CsvSource::open(&f.path, skip)
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    fn open_err(content: &[u8]) -> String {
        let f = write(content);
        match CsvSource::open(&f.path, 0) {
            Ok(_) => panic!("expected an error for {content:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn lines(items: &[NewItem]) -> Vec<u64> {
        items.iter().map(|i| i.line.unwrap()).collect()
    }

    #[test]
    fn bom_crlf_and_case_insensitive_headers() {
        let got = items(&format!(
            "\u{FEFF}ID, UserPrincipalName ,EXTERNALEMAIL\r\n{G1},a@contoso.com, a@fabrikam.com \r\n,b@contoso.com,\r\n"
        ));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, Some(2));
        assert_eq!(got[0].key, Some(UserKey::Id(G1.into())));
        assert_eq!(got[0].external_email.as_deref(), Some("a@fabrikam.com"));
        assert_eq!(got[0].bad_input, None);
        assert_eq!(got[1].line, Some(3));
        assert_eq!(
            got[1].key,
            Some(UserKey::UserPrincipalName("b@contoso.com".into()))
        );
        assert_eq!(got[1].external_email, None);
        assert_eq!(got[1].bad_input, None);
    }

    #[test]
    fn quoted_multiline_fields_keep_line_numbers() {
        for eol in ["\n", "\r\n"] {
            let text = [
                "id,customizedMessageBody,externalEmail".to_string(),
                format!("{G1},\"Hello, \"\"partner\"\"{eol}second line{eol}third\",a@fabrikam.com"),
                format!("{G2},plain,b@fabrikam.com"),
                String::new(),
                format!("{G1},\"x{eol}\",c@fabrikam.com"),
                format!("{G2},last,d@fabrikam.com"),
            ]
            .join(eol);
            let got = items(&text);
            assert_eq!(lines(&got), vec![2, 5, 7, 9], "eol {eol:?}");
            assert_eq!(
                got[0].overrides.customized_message_body.as_deref(),
                Some(format!("Hello, \"partner\"{eol}second line{eol}third").as_str())
            );
            assert_eq!(got[0].external_email.as_deref(), Some("a@fabrikam.com"));
            assert!(got.iter().all(|i| i.bad_input.is_none()), "{got:?}");
        }
    }

    #[test]
    fn blank_lines_are_skipped_but_rows_of_blank_fields_are_bad_input() {
        let got = items(&format!("\n\nid\n\n{G1}\n   \n\t\n{G2}\n\n"));
        assert_eq!(lines(&got), vec![5, 8]);
        // A row of commas (a spreadsheet's trailing rows, or a user left out) names no user:
        // it is kept as bad_input so the report shows it, never dropped silently.
        let got = items(&format!(
            "id,userPrincipalName,externalEmail\n{G1},,\n,,\n , ,\n\"\",,\n,\n"
        ));
        assert_eq!(lines(&got), vec![2, 3, 4, 5, 6]);
        assert!(got[0].bad_input.is_none());
        check_blank_rows(&got[1..]);
        // A single quoted blank field is a row too, not a blank line.
        let got = items(&format!("id\n{G1}\n\"\"\n\" \"\n\n{G2}\n"));
        assert_eq!(lines(&got), vec![2, 3, 4, 6], "{got:?}");
        check_blank_rows(&got[1..3]);
        assert!(got[0].bad_input.is_none() && got[3].bad_input.is_none());
    }

    /// Each item is a row of blank fields, kept as `bad_input` with no user.
    fn check_blank_rows(got: &[NewItem]) {
        for item in got {
            let msg = item.bad_input.as_deref().expect("blank row is bad_input");
            assert!(
                msg.contains(&format!(
                    "line {}: every field is blank",
                    item.line.unwrap()
                )),
                "{msg}"
            );
            assert_eq!(item.key, None);
        }
    }

    #[test]
    fn cr_only_line_endings_are_read() {
        // Excel's "CSV (Macintosh)": a bare CR ends each line, quoted fields included.
        let text = format!(
            "id,customizedMessageBody,externalEmail\r{G1},\"Hello\rthere\",a@fabrikam.com\r\r{G2},x,b@fabrikam.com\r"
        );
        let f = write(text.as_bytes());
        let src = CsvSource::open(&f.path, 0).unwrap();
        assert!(src.warnings().is_empty(), "{:?}", src.warnings());
        let got: Vec<NewItem> = src.map(|r| r.unwrap()).collect();
        assert_eq!(lines(&got), vec![2, 5]);
        assert!(got.iter().all(|i| i.bad_input.is_none()), "{got:?}");
        assert_eq!(got[0].key, Some(UserKey::Id(G1.into())));
        assert_eq!(got[0].external_email.as_deref(), Some("a@fabrikam.com"));
        assert_eq!(
            got[0].overrides.customized_message_body.as_deref(),
            Some("Hello\rthere")
        );
        assert_eq!(got[1].external_email.as_deref(), Some("b@fabrikam.com"));
        // Mixed endings in one file still count one line per ending.
        let mixed = format!("id\r\n{G1}\r{G2}\n\r\n{G1}");
        assert_eq!(lines(&items(&mixed)), vec![2, 3, 5]);
    }

    #[test]
    fn unterminated_quote_is_its_own_bad_row_and_later_rows_are_read() {
        let g3 = "33333333-3333-3333-3333-333333333333";
        // Never closed: the quoted row is bad, and the lines it took in are rows of their own.
        let text = format!(
            "id,externalEmail,customizedMessageBody\n{G1},\"bob@fabrikam.com,hi\n{G2},c@fabrikam.com,hello\n{g3},d@fabrikam.com,x\n"
        );
        let got = items(&text);
        assert_eq!(lines(&got), vec![2, 3, 4], "{got:?}");
        let msg = got[0].bad_input.as_deref().expect("the quoted row is bad");
        assert!(
            msg.contains("users.csv: line 2: field externalEmail: unterminated quote: the quote opened on line 2 is never closed (spans 3 lines)"),
            "{msg}"
        );
        assert_eq!(got[0].key, Some(UserKey::Id(G1.into())), "whose row it was");
        assert!(got[1..].iter().all(|i| i.bad_input.is_none()), "{got:?}");
        assert_eq!(got[1].key, Some(UserKey::Id(G2.into())));
        assert_eq!(got[2].key, Some(UserKey::Id(g3.into())));

        // Resume skips by line exactly as the first reading counted them.
        assert_eq!(lines(&items_from(text.as_bytes(), 0)), vec![2, 3, 4]);
        assert_eq!(lines(&items_from(text.as_bytes(), 2)), vec![3, 4]);
        assert_eq!(lines(&items_from(text.as_bytes(), 3)), vec![4]);
    }

    /// The hostile-days finding: a notes cell with another user's row pasted into it, on a row
    /// with one field too many. Every RFC 4180 reader sees one record; so must this one, and
    /// nobody on its lines may become an item that converts.
    #[test]
    fn a_closed_quote_is_never_read_again_as_rows() {
        let pasted = "50d40596-fd29-50f4-930b-15ecf3b4c22b";
        let named = "3535df92-088c-5e62-a2d6-4e3cfa0512e6";
        for eol in ["\n", "\r\n", "\r"] {
            let text = format!(
                "id,notes{eol}{named},\"vendor note{eol}{pasted},pasted{eol}end of note\",extra{eol}"
            );
            let got = items(&text);
            assert_eq!(lines(&got), vec![2], "eol {eol:?}: {got:?}");
            let msg = got[0].bad_input.as_deref().expect("wrong field count");
            assert!(
                msg.contains("line 2: expected 2 fields, found 3 (one row spanning lines 2–4"),
                "{msg}"
            );
            assert!(!got
                .iter()
                .any(|i| i.key == Some(UserKey::Id(pasted.into()))));
            // One field too few: the same.
            let text = format!(
                "id,notes,externalEmail{eol}{named},\"vendor note{eol}{pasted},pasted,a@fabrikam.com{eol}end\"{eol}{G1},x,b@fabrikam.com{eol}"
            );
            let got = items(&text);
            assert_eq!(lines(&got), vec![2, 5], "eol {eol:?}: {got:?}");
            assert!(got[0]
                .bad_input
                .as_deref()
                .unwrap()
                .contains("expected 3 fields, found 2"));
            assert!(got[1].bad_input.is_none(), "{got:?}");
        }

        let g3 = "33333333-3333-3333-3333-333333333333";
        // "Closed" by another row's opening quote: text follows it. One row, lines 2–4.
        let text = format!(
            "id,externalEmail,customizedMessageBody\n{G1},\"bob@fabrikam.com,hi\n{G2},c@fabrikam.com,hello\n{g3},d@fabrikam.com,\"multi\nline\"\n{G1},e@fabrikam.com,ok\n"
        );
        let got = items(&text);
        assert_eq!(lines(&got), vec![2, 5, 6], "{got:?}");
        let msg = got[0].bad_input.as_deref().unwrap();
        assert!(
            msg.contains("line 2: field externalEmail: text after a closing quote: the quote opened on line 2 closes on line 4 followed by 'm'"),
            "{msg}"
        );
        assert!(msg.contains("one row spanning lines 2–4"), "{msg}");
        assert!(
            got[1].bad_input.is_some(),
            "the stray `line\"` is no row: {got:?}"
        );
        assert!(got[2].bad_input.is_none(), "{got:?}");
        assert!(!got.iter().any(
            |i| i.key == Some(UserKey::Id(G2.into())) || i.key == Some(UserKey::Id(g3.into()))
        ));

        // Closed properly, but in a column that cannot hold line breaks.
        let text =
            format!("id,externalEmail\n{G1},\"a@fabrikam.com\n{G2},b@fabrikam.com\n{g3},\"\n{G1},c@fabrikam.com\n");
        let got = items(&text);
        assert_eq!(lines(&got), vec![2, 5], "{got:?}");
        let msg = got[0].bad_input.as_deref().unwrap();
        assert!(
            msg.contains("field externalEmail: line breaks this field cannot hold: the quote opened on line 2 closes only on line 4")
                && msg.contains("lines 2–4"),
            "{msg}"
        );
        assert_eq!(got[0].key, Some(UserKey::Id(G1.into())));
        assert!(got[1].bad_input.is_none(), "{got:?}");

        // Text after a closing quote on one line: no longer read leniently as `abc`.
        let got = items(&format!(
            "id,externalEmail\n{G1},\"a@fabrikam.com\"x\n\"{G2}\"{G1}\n"
        ));
        assert_eq!(lines(&got), vec![2, 3], "{got:?}");
        let msg = got[0].bad_input.as_deref().unwrap();
        assert!(
            msg.contains("line 2: field externalEmail: text after a closing quote: the quote closes on line 2 followed by 'x'"),
            "{msg}"
        );
        assert!(!msg.contains("spanning"), "{msg}");
        assert!(got[1]
            .bad_input
            .as_deref()
            .unwrap()
            .contains("field id: text after a closing quote"));
        assert_eq!(got[1].key, None);
    }

    #[test]
    fn a_long_quoted_field_over_many_lines_is_one_row() {
        // Past the record cap, still closed: one bad_input item, not one per line.
        let lines_in_field = MAX_RECORD_BYTES / 4 + 10;
        let mut text = format!("id,notes\n{G1},\"").into_bytes();
        text.extend(std::iter::repeat_n(*b"abcdefgh\n\n", lines_in_field / 2).flatten());
        text.extend(format!("end\"\n{G2},x\n").bytes());
        let got = items_from(&text, 0);
        let last = 2 + lines_in_field as u64;
        assert_eq!(lines(&got), vec![2, last + 1], "{:?}", got.len());
        let msg = got[0].bad_input.as_deref().unwrap();
        assert!(
            msg.contains(&format!(
                "row longer than 4 MiB: not read (one row spanning lines 2–{last}"
            )),
            "{msg}"
        );
        assert!(got[1].bad_input.is_none());
    }

    #[test]
    fn warnings_are_capped_in_length() {
        let mut header = "id".to_string();
        for i in 0..100_000 {
            header.push_str(&format!(",extra{i}"));
        }
        header.push_str(&format!(",{}", "n".repeat(10_000)));
        let f = write(format!("{header}\n{G1}\n").as_bytes());
        let src = CsvSource::open(&f.path, 0).unwrap();
        assert_eq!(src.warnings().len(), 1);
        let w = &src.warnings()[0];
        assert!(w.len() < 1_000, "{} bytes", w.len());
        assert!(w.contains("extra0, extra1,"), "{w}");
        assert!(w.ends_with("and 99981 more"), "{w}");
    }

    #[test]
    fn check_header_reads_only_the_header() {
        let f = write(format!("id,notes\n{G1},\"never closed\n").as_bytes());
        let warnings = check_header(&f.path).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        for (content, expected) in [
            (&b""[..], "users.csv: line 1: no header row"),
            (b"\r\n  \r", "users.csv: line 1: no header row"),
            (
                b"mail\rx@y.com\r",
                "users.csv: line 1: header has neither `id` nor `userPrincipalName`",
            ),
            (
                b"id,\"notes\nmore\n",
                "users.csv: line 1: header: column 2: unterminated quote",
            ),
        ] {
            let f = write(content);
            let e = check_header(&f.path).unwrap_err().to_string();
            assert!(e.contains(expected), "{content:?}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let e = check_header(&dir.path().join("nope.csv")).unwrap_err();
        assert!(e.to_string().contains("nope.csv: cannot open"), "{e}");
    }

    #[test]
    fn a_row_beyond_the_cap_is_bad_input_and_memory_stays_bounded() {
        let long = "x".repeat(MAX_RECORD_BYTES + 10);
        let text = format!("id,notes\n{G1},{long}\n{G2},\"{long}\"\n{G1},ok\n");
        let got = items(&text);
        assert_eq!(lines(&got), vec![2, 3, 4]);
        assert!(got[0]
            .bad_input
            .as_deref()
            .unwrap()
            .contains("row longer than 4 MiB"));
        assert!(got[1].bad_input.is_some());
        assert!(got[2].bad_input.is_none());
    }

    #[test]
    fn a_header_without_a_key_lists_what_it_found_and_suggests_the_delimiter() {
        let e = open_err(b"mail,externalEmail\na@b.c,a@f.c\n");
        assert!(
            e.ends_with(
                "header has neither `id` nor `userPrincipalName`; found: mail, externalEmail"
            ),
            "{e}"
        );
        let e = open_err(b"id;userPrincipalName;externalEmail\n1;a@b.c;x@y.z\n");
        assert!(
            e.contains("found: id;userPrincipalName;externalEmail"),
            "{e}"
        );
        assert!(
            e.contains("splits better on semicolons and then names a key column"),
            "{e}"
        );
        assert!(e.contains("Comma delimited"), "{e}");
        let e = open_err(b"userPrincipalName\tmail\n");
        assert!(e.contains("splits better on tabs"), "{e}");
        let e = open_err(b"upn,mail\n");
        assert!(!e.contains("splits better"), "{e}");
    }

    /// A 1 MB UPN or message body is one `bad_input` row; the rows after it are read as usual.
    #[test]
    fn absurd_field_lengths_are_one_bad_input_row() {
        let upn = format!("{}@contoso.com", "a".repeat(1 << 20));
        let body = "b".repeat(crate::config::MAX_MESSAGE_BYTES + 1);
        let longest = format!("{}@{}", "a".repeat(64), "c".repeat(48));
        let got = items(&format!(
            "userPrincipalName,customizedMessageBody\n{upn},\nok@contoso.com,\"{body}\"\n{longest},hi\nfine@contoso.com,\n"
        ));
        assert_eq!(lines(&got), vec![2, 3, 4, 5]);
        let why = got[0].bad_input.as_deref().unwrap();
        assert!(why.contains("Entra allows at most 113"), "{why}");
        assert!(why.len() < 400, "the message quotes the value cut short");
        let why = got[1].bad_input.as_deref().unwrap();
        assert!(why.contains("customizedMessageBody"), "{why}");
        assert!(got[2].bad_input.is_none(), "113 characters is allowed");
        assert!(got[3].bad_input.is_none());
    }

    /// `/dev/zero` (no line break, ever) is refused within the header's bound, and a row that
    /// never ends is refused within the scan bound, instead of being read without end.
    #[test]
    fn endless_input_is_refused_while_streaming() {
        let e = match CsvSource::open(Path::new("/dev/zero"), 0) {
            Ok(_) => panic!("/dev/zero opened as a CSV"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("the header row runs on for more than 4 MiB"),
            "{e}"
        );
        let header = "x".repeat(MAX_HEADER_BYTES as usize + 1);
        assert!(open_err(header.as_bytes()).contains("is this a CSV file?"));

        let mut endless = format!("id,notes\n{G1},").into_bytes();
        endless.extend(std::iter::repeat_n(
            b'z',
            MAX_SCANNED_RECORD_BYTES as usize + 1,
        ));
        let f = write(&endless);
        let results: Vec<_> = CsvSource::open(&f.path, 0).unwrap().collect();
        assert_eq!(results.len(), 1, "one error, then nothing more");
        let e = results[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("one row runs on for more than 64 MiB"), "{e}");
    }

    #[test]
    fn one_warning_for_all_unknown_columns() {
        let f = write(format!("id,notes,externalEmail,department\n{G1},x,a@b.com,y\n").as_bytes());
        let src = CsvSource::open(&f.path, 0).unwrap();
        assert_eq!(src.warnings().len(), 1);
        assert!(
            src.warnings()[0].ends_with("users.csv: ignoring unknown columns: notes, department"),
            "{:?}",
            src.warnings()
        );
        let f = write(b"id,ID,userPrincipalName\n");
        let src = CsvSource::open(&f.path, 0).unwrap();
        assert_eq!(src.warnings().len(), 1);
        assert!(src.warnings()[0].contains("repeated columns"));
        let f = write(b"id\n");
        assert!(CsvSource::open(&f.path, 0).unwrap().warnings().is_empty());
    }

    #[test]
    fn per_row_overrides() {
        let got = items(&format!(
            "id,sendInvitationMessage,inviteRedirectUrl,messageLanguage,customizedMessageBody,ccRecipient\n\
             {G1},FALSE,https://myapps.microsoft.com/?tenantId=x,en-US, Welcome! ,boss@fabrikam.com\n\
             {G2},yes,,,,\n\
             {G1},0,,,,\n\
             {G2},,,,,\n"
        ));
        assert!(got.iter().all(|i| i.bad_input.is_none()), "{got:?}");
        assert_eq!(
            got[0].overrides,
            Overrides {
                send_invitation_message: Some(false),
                invite_redirect_url: Some("https://myapps.microsoft.com/?tenantId=x".into()),
                message_language: Some("en-US".into()),
                customized_message_body: Some("Welcome!".into()),
                cc_recipient: Some("boss@fabrikam.com".into()),
            }
        );
        assert_eq!(got[1].overrides.send_invitation_message, Some(true));
        assert_eq!(got[2].overrides.send_invitation_message, Some(false));
        assert!(got[3].overrides.is_empty());
    }

    #[test]
    fn each_bad_row_kind_names_line_and_field() {
        let header = "id,userPrincipalName,externalEmail,sendInvitationMessage,inviteRedirectUrl,messageLanguage,ccRecipient";
        let rows: Vec<(String, &str, bool)> = vec![
            (
                "not-a-guid,,,,,,".into(),
                "field id: \"not-a-guid\" is not an object id (GUID)",
                true,
            ),
            (
                ",bob.contoso.com,,,,,".into(),
                "field userPrincipalName: \"bob.contoso.com\"",
                true,
            ),
            (
                ",,a@fabrikam.com,,,,".into(),
                "no id and no userPrincipalName",
                false,
            ),
            (
                format!("{G1},,bob@@x,,,,"),
                "field externalEmail: \"bob@@x\" is not a valid email address",
                true,
            ),
            (
                format!("{G1},,,maybe,,,"),
                "field sendInvitationMessage: \"maybe\"",
                true,
            ),
            (
                format!("{G1},,,,ftp://x,,"),
                "field inviteRedirectUrl: \"ftp://x\"",
                true,
            ),
            (
                format!("{G1},,,,,en_US,"),
                "field messageLanguage: \"en_US\"",
                true,
            ),
            (
                format!("{G1},,,,,,cc at fabrikam"),
                "field ccRecipient: \"cc at fabrikam\"",
                true,
            ),
            (format!("{G1},,"), "expected 7 fields, found 3", true),
            (
                format!("{G1},,,,,,,extra"),
                "expected 7 fields, found 8",
                true,
            ),
        ];
        let mut text = format!("{header}\n");
        for (row, _, _) in &rows {
            text.push_str(row);
            text.push('\n');
        }
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(format!("{G2},,").as_bytes());
        bytes.extend_from_slice(b"\xFF\xFEx@y.com,,,,\n");
        let got = items_from(&bytes, 0);
        assert_eq!(got.len(), rows.len() + 1);
        for (i, (item, (row, expected, has_key))) in got.iter().zip(&rows).enumerate() {
            let line = i as u64 + 2;
            assert_eq!(item.line, Some(line));
            let msg = item
                .bad_input
                .as_deref()
                .unwrap_or_else(|| panic!("{row} should be bad"));
            assert!(msg.contains(&format!("users.csv: line {line}: ")), "{msg}");
            assert!(msg.contains(expected), "{msg} lacks {expected}");
            assert_eq!(item.key.is_some(), *has_key, "{row}");
        }
        let last = got.last().unwrap();
        assert_eq!(last.key, Some(UserKey::Id(G2.into())));
        let msg = last.bad_input.as_deref().unwrap();
        assert!(
            msg.contains("line 12: field externalEmail: not valid UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn file_level_errors() {
        assert!(open_err(b"").contains("users.csv: line 1: no header row"));
        assert!(open_err(b"\n\n  \n").contains("no header row"));
        assert!(open_err(b"\xEF\xBB\xBF").contains("no header row"));
        let e = open_err(b"mail,externalEmail\na@b.com,c@d.com\n");
        assert!(
            e.ends_with("users.csv: line 1: header has neither `id` nor `userPrincipalName`; found: mail, externalEmail"),
            "{e}"
        );
        let e = open_err(b"\n\nname,mail\n");
        assert!(e.contains("line 3: header has neither"), "{e}");
        let e = open_err(b"id,\xFFbad\n");
        assert!(
            e.contains("line 1: header column 2 is not valid UTF-8"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.csv");
        let e = CsvSource::open(&missing, 0).err().unwrap().to_string();
        assert!(e.contains("nope.csv: cannot open"), "{e}");
        let e = CsvSource::open(dir.path(), 0).err().unwrap().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn header_only_file_has_no_items() {
        assert!(items("id,userPrincipalName\n").is_empty());
        assert!(items("userPrincipalName").is_empty());
    }

    #[test]
    fn truncated_quote_at_eof_is_a_bad_row() {
        let got = items(&format!(
            "id,externalEmail\n{G1},\"bob@fabrikam.com\n{G2},c@fabrikam.com\n"
        ));
        assert_eq!(lines(&got), vec![2, 3]);
        let msg = got[0].bad_input.as_deref().unwrap();
        assert!(
            msg.contains("line 2: field externalEmail: unterminated quote: the quote opened on line 2 is never closed (spans 2 lines)"),
            "{msg}"
        );
        assert!(
            got[1].bad_input.is_none(),
            "the row after is not swallowed: {got:?}"
        );
        // On the last line, without a line end: spans that one line.
        let got = items(&format!("id,externalEmail\n{G1},\"bob@fabrikam.com"));
        assert_eq!(lines(&got), vec![2]);
        assert!(got[0]
            .bad_input
            .as_deref()
            .unwrap()
            .contains("(spans 1 line)"));
    }

    #[test]
    fn binary_garbage_never_panics() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut garbage: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        // Without a header: an error or (unlikely) rows, never a panic.
        let f = write(&garbage);
        if let Ok(src) = CsvSource::open(&f.path, 0) {
            src.for_each(drop);
        }
        // Behind a valid header: every non-blank record becomes some item.
        let mut text = b"id,externalEmail\n".to_vec();
        text.append(&mut garbage);
        let f = write(&text);
        let src = CsvSource::open(&f.path, 0).unwrap();
        let got: Vec<NewItem> = src.map(|r| r.unwrap()).collect();
        assert!(got.iter().all(|i| i.bad_input.is_some() || i.key.is_some()));
    }

    #[test]
    fn skip_through_line_resumes_after_it() {
        let text =
            format!("id,customizedMessageBody\n{G1},a\n{G2},\"two\nlines\"\n\n{G1},c\n{G2},d\n");
        // Rows start on lines 2, 3 (spanning 4), 6 and 7.
        assert_eq!(lines(&items_from(text.as_bytes(), 0)), vec![2, 3, 6, 7]);
        assert_eq!(lines(&items_from(text.as_bytes(), 2)), vec![3, 6, 7]);
        assert_eq!(lines(&items_from(text.as_bytes(), 3)), vec![6, 7]);
        assert_eq!(lines(&items_from(text.as_bytes(), 4)), vec![6, 7]);
        assert_eq!(lines(&items_from(text.as_bytes(), 6)), vec![7]);
        assert!(items_from(text.as_bytes(), 7).is_empty());
    }

    #[test]
    fn last_row_without_newline() {
        let got = items(&format!("id\n{G1}\n\n{G2}"));
        assert_eq!(lines(&got), vec![2, 4]);
        let body_ends_in_newline = format!("id,customizedMessageBody\n\n{G1},\"a\n\"\n");
        assert_eq!(lines(&items(&body_ends_in_newline)), vec![3]);
        let unterminated = format!("id,customizedMessageBody\n{G1},\"a\nb\n");
        assert_eq!(lines(&items(&unterminated)), vec![2, 3]);
    }

    #[test]
    fn hundred_thousand_rows_stream() {
        const N: u64 = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.csv");
        let mut w = io::BufWriter::new(File::create(&path).unwrap());
        writeln!(w, "id,userPrincipalName,externalEmail").unwrap();
        for n in 0..N {
            writeln!(
                w,
                "{:08x}-0000-4000-8000-{n:012x},u{n}@contoso.com,u{n}@fabrikam.com",
                n
            )
            .unwrap();
        }
        drop(w);
        let mut src = CsvSource::open(&path, 0).unwrap();
        let total = src.total_bytes();
        let (mut count, mut last_line) = (0u64, 0u64);
        for item in src.by_ref() {
            let item = item.unwrap();
            assert!(item.bad_input.is_none(), "{item:?}");
            count += 1;
            last_line = item.line.unwrap();
        }
        assert_eq!(count, N);
        assert_eq!(last_line, N + 1);
        assert_eq!(src.bytes_read(), total);
    }

    #[test]
    fn field_checks() {
        assert!(is_guid(G1) && is_guid(&G2.to_uppercase()));
        assert!(
            !is_guid("11111111-1111-1111-1111-11111111111")
                && !is_guid("{11111111-1111-1111-1111-111111111111}")
        );
        assert!(
            is_language_tag("en-US") && is_language_tag("zh-Hans-CN") && is_language_tag("es-419")
        );
        assert!(
            !is_language_tag("en_US")
                && !is_language_tag("-en")
                && !is_language_tag("en-")
                && !is_language_tag("419")
        );
        assert!(
            is_http_url("HTTPS://x.example")
                && !is_http_url("https://")
                && !is_http_url("https://a b")
        );
        assert!(show(&"x".repeat(500)).len() < 100);
    }
}
