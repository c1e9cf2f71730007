//! The CSV source: streams an administrator's user list (docs/usage.md "CSV input") into
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
//! Two layers: `scanner` reads bytes into records (fields, physical line numbers, line ends,
//! quote state, the re-read after an unterminated quote) and knows nothing of columns; `rows`
//! gives a record its meaning (the header's columns, the row's shape, each field's check, the
//! `bad_input` message). A unit test compares the scanner with the `csv` crate over thousands of
//! generated files and buffer sizes 1–9 bytes (`differential.rs`).
//!
//! A row that cannot be used never stops ingestion: it becomes an item with `bad_input` naming
//! the file, the line and the field. Only a file that cannot be opened, has no usable header, or
//! fails to read mid-way is a [`SourceError`].

use std::fs::File;
use std::io;
use std::path::Path;

use crate::item::NewItem;

use self::rows::Header;
use self::scanner::{Record, Scanner};

mod rows;
mod scanner;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;

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
    CsvSource::open(path, 0).map(|source| source.header.warnings)
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

/// The file is read this many bytes at a time.
const BUFFER_BYTES: usize = 64 * 1024;

/// Streaming reader of one CSV input file.
pub struct CsvSource {
    file: String,
    scanner: Scanner<File>,
    record: Record,
    header: Header,
    total_bytes: u64,
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
        let mut scanner = Scanner::new(file, BUFFER_BYTES).map_err(open_err)?;
        scanner.bound(MAX_HEADER_BYTES, "the header row");
        let mut record = Record::default();
        let scanned = loop {
            match scanner.next_record(&mut record) {
                Err(source) => {
                    return Err(SourceError::Read {
                        file: file_name,
                        line: scanner.line(),
                        source,
                    })
                }
                Ok(None) => {
                    return Err(SourceError::NoHeader {
                        file: file_name,
                        line: 1,
                    })
                }
                Ok(Some(scanned))
                    if scanned.bad_quote.is_none() && rows::is_blank_line(&record) => {}
                Ok(Some(scanned)) => break scanned,
            }
        };
        if let Some(why) = rows::header_problem(&scanned, &record) {
            return Err(SourceError::BadHeader {
                file: file_name,
                line: scanned.line,
                why,
            });
        }
        let header = Header::read(file_name.clone(), &record, scanned.line)?;
        scanner.bound(MAX_SCANNED_RECORD_BYTES, "one row");
        Ok(CsvSource {
            file: file_name,
            scanner,
            record,
            header,
            total_bytes: meta.len(),
            skip_through_line,
            done: false,
        })
    }

    /// Notices for the operator about the file as a whole (unknown or repeated columns).
    pub fn warnings(&self) -> &[String] {
        &self.header.warnings
    }

    /// Bytes consumed so far, for a progress bar.
    pub fn bytes_read(&self) -> u64 {
        self.scanner.bytes_read()
    }

    /// Size of the file when it was opened.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Reads the next non-blank record, judged as a row; `None` at end of file.
    fn read_row(&mut self) -> Result<Option<rows::Row>, SourceError> {
        loop {
            match self.scanner.next_record(&mut self.record) {
                Err(source) => {
                    return Err(SourceError::Read {
                        file: self.file.clone(),
                        line: self.scanner.line(),
                        source,
                    })
                }
                Ok(None) => return Ok(None),
                Ok(Some(scanned)) => {
                    if scanned.bad_quote.is_some() || !rows::is_blank_line(&self.record) {
                        return Ok(Some(self.header.row(scanned, &self.record)));
                    }
                }
            }
        }
    }
}

impl Iterator for CsvSource {
    type Item = Result<NewItem, SourceError>;

    /// `Err` only for a read failure mid-file, after which the source is finished.
    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.read_row() {
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Some(row)) if row.line <= self.skip_through_line => {}
                Ok(Some(row)) => return Some(Ok(self.header.item(&row, &self.record))),
            }
        }
        None
    }
}
