//! The CSV source: streams an administrator's user list (SPEC.md "CSV input") into
//! [`NewItem`]s, one row at a time.
//!
//! Files run to hundreds of thousands of rows, so nothing is collected: one `ByteRecord` is reused
//! for every row and memory stays flat (only a single huge field, such as an unterminated quote
//! swallowing the rest of the file, grows it). A row that cannot be used never stops ingestion:
//! it becomes an item with `bad_input` naming the file, the line and the field. Only a file that
//! cannot be opened, has no usable header, or fails to read mid-way is a [`SourceError`].

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use ::csv::{ByteRecord, Reader, ReaderBuilder, Terminator};

use crate::item::{NewItem, Overrides, UserKey};
use crate::validate::email_syntax_error;

/// Why a CSV file cannot be read at all. Display: `users.csv: line 1: …`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}: cannot open: {source}")]
    Open {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}: line {line}: no header row")]
    NoHeader { file: String, line: u64 },
    #[error("{file}: line {line}: header has neither `id` nor `userPrincipalName`")]
    NoKeyColumn { file: String, line: u64 },
    #[error("{file}: line {line}: header column {column} is not valid UTF-8")]
    HeaderNotUtf8 {
        file: String,
        line: u64,
        column: usize,
    },
    #[error("{file}: line {line}: read error: {source}")]
    Read {
        file: String,
        line: u64,
        #[source]
        source: ::csv::Error,
    },
}

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

/// Streaming reader of one CSV input file.
pub struct CsvSource {
    file: String,
    reader: Reader<BufReader<File>>,
    record: ByteRecord,
    /// Index of each [`Column`] in the header (first occurrence), by `Column as usize`.
    columns: [Option<usize>; 8],
    width: usize,
    warnings: Vec<String>,
    total_bytes: u64,
    /// Whether the file's last byte is `\n`: tells whether the last record was ended by a
    /// newline or by end of file, which the line arithmetic needs.
    ends_with_newline: bool,
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
        let mut file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory",
            )));
        }
        let total_bytes = meta.len();
        let ends_with_newline = if total_bytes > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1))
                .and_then(|_| file.read_exact(&mut last))
                .and_then(|_| file.seek(SeekFrom::Start(0)))
                .map_err(open_err)?;
            last[0] == b'\n'
        } else {
            false
        };

        // `\n` alone ends a record: a `\r` before it stays in the last field and is trimmed
        // away like other whitespace, so CRLF and LF files read the same, and every record
        // ends by consuming exactly one `\n` (see `record_start_line`).
        let reader = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(Terminator::Any(b'\n'))
            .from_reader(BufReader::new(file));

        let mut source = CsvSource {
            file: file_name,
            reader,
            record: ByteRecord::new(),
            columns: [None; 8],
            width: 0,
            warnings: Vec::new(),
            total_bytes,
            ends_with_newline,
            skip_through_line,
            done: false,
        };
        let Some(line) = source.read_record()? else {
            return Err(SourceError::NoHeader {
                file: source.file,
                line: 1,
            });
        };
        source.read_header(line)?;
        Ok(source)
    }

    /// Notices for the operator about the file as a whole (unknown or repeated columns).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bytes consumed so far, for a progress bar.
    pub fn bytes_read(&self) -> u64 {
        self.reader.position().byte()
    }

    /// Size of the file when it was opened.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn read_header(&mut self, line: u64) -> Result<(), SourceError> {
        let mut unknown = Vec::new();
        let mut repeated = Vec::new();
        for (i, raw) in self.record.iter().enumerate() {
            let raw = if i == 0 {
                raw.strip_prefix(BOM).unwrap_or(raw)
            } else {
                raw
            };
            let name = std::str::from_utf8(raw)
                .map_err(|_| SourceError::HeaderNotUtf8 {
                    file: self.file.clone(),
                    line,
                    column: i + 1,
                })?
                .trim();
            match Column::from_header(name) {
                Some(c) if self.columns[c as usize].is_none() => self.columns[c as usize] = Some(i),
                Some(c) => repeated.push(c.name()),
                None if name.is_empty() => unknown.push(format!("(unnamed column {})", i + 1)),
                None => unknown.push(name.to_string()),
            }
        }
        self.width = self.record.len();
        if self.columns[Column::Id as usize].is_none()
            && self.columns[Column::UserPrincipalName as usize].is_none()
        {
            return Err(SourceError::NoKeyColumn {
                file: self.file.clone(),
                line,
            });
        }
        if !unknown.is_empty() {
            self.warnings.push(format!(
                "{}: ignoring unknown columns: {}",
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

    /// Reads the next non-blank record into `self.record`; returns its first line.
    fn read_record(&mut self) -> Result<Option<u64>, SourceError> {
        loop {
            let line_before = self.reader.position().line();
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(source) => {
                    return Err(SourceError::Read {
                        file: self.file.clone(),
                        line: self.reader.position().line(),
                        source,
                    })
                }
            }
            if !is_blank(&self.record) {
                return Ok(Some(self.record_start_line(line_before)));
            }
        }
    }

    /// 1-based physical line where the record just read starts.
    ///
    /// The reader's own record position points just after the previous record, i.e. before
    /// any blank lines it skipped, so it is computed from the end instead: the reader's line
    /// count after the record, minus its terminating `\n` (absent only when the file ends
    /// without one), minus the newlines inside its quoted fields. A record can also end at
    /// end of file inside an unterminated quote that swallowed the file's final `\n`; that is
    /// recognised when counting a terminator would put the start before `line_before`, the
    /// reader's line when it began this record.
    fn record_start_line(&self, line_before: u64) -> u64 {
        let pos = self.reader.position();
        let embedded = self
            .record
            .as_slice()
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        let if_terminated = pos.line().saturating_sub(1 + embedded);
        let at_end = pos.byte() >= self.total_bytes;
        let ended_by_eof = at_end && (!self.ends_with_newline || if_terminated < line_before);
        let start = if ended_by_eof {
            pos.line().saturating_sub(embedded)
        } else {
            if_terminated
        };
        start.max(1)
    }

    fn field(&self, column: Column) -> Field<'_> {
        let Some(raw) = self.columns[column as usize].and_then(|i| self.record.get(i)) else {
            return Field::Absent;
        };
        match std::str::from_utf8(raw) {
            Ok(s) if s.trim().is_empty() => Field::Absent,
            Ok(s) => Field::Text(s.trim()),
            Err(_) => Field::NotUtf8,
        }
    }

    /// Turns the current record into an item; every problem found goes into `bad_input`.
    fn parse_row(&self, line: u64) -> NewItem {
        let mut problems = Vec::new();
        let aligned = self.record.len() == self.width;
        if !aligned {
            problems.push(format!(
                "expected {} fields, found {}",
                self.width,
                self.record.len()
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
            if !is_upn(upn) {
                problems.push(format!(
                    "field userPrincipalName: {} is not a user principal name (needs exactly one @)",
                    show(upn)
                ));
            }
            Some(UserKey::UserPrincipalName(upn.to_string()))
        } else {
            if aligned && !key_unreadable {
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
        overrides.customized_message_body = body.map(str::to_string);
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
                Ok(Some(line)) if line <= self.skip_through_line => {}
                Ok(Some(line)) => return Some(Ok(self.parse_row(line))),
            }
        }
        None
    }
}

/// Blank lines, whitespace-only lines and rows of empty fields (spreadsheet exports end with
/// `,,,` rows) carry nothing and are skipped.
fn is_blank(record: &ByteRecord) -> bool {
    record.iter().enumerate().all(|(i, f)| {
        let f = if i == 0 {
            f.strip_prefix(BOM).unwrap_or(f)
        } else {
            f
        };
        f.iter().all(u8::is_ascii_whitespace)
    })
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

/// The shape of a BCP 47 tag such as `en-US`, `zh-Hans-CN`, `es-419`: subtags of 1–8 ASCII
/// letters or digits separated by hyphens, the first one letters only.
fn is_language_tag(s: &str) -> bool {
    let mut subtags = s.split('-');
    let first_ok = subtags
        .next()
        .is_some_and(|f| (1..=8).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok
        && subtags
            .all(|t| (1..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()))
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
    fn blank_and_empty_rows_are_skipped() {
        let got = items(&format!("\n\nid\n\n{G1}\n   \n,\n{G2}\n\n"));
        assert_eq!(lines(&got), vec![5, 8]);
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
            e.ends_with("users.csv: line 1: header has neither `id` nor `userPrincipalName`"),
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
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, Some(2));
        assert!(got[0].bad_input.is_some(), "{got:?}");
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
        assert_eq!(lines(&items(&unterminated)), vec![2]);
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
