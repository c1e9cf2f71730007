//! The row layer of the CSV reader: what a record means. The header names the columns (docs/usage.md
//! "CSV input"); each later record becomes one [`NewItem`], and every problem with it — a
//! record of the wrong width, a quote that broke it, a field that is not what its column needs —
//! becomes that item's `bad_input`, naming the file, the line and the field. Blank lines are
//! skipped here: the scanner reports them as records like any other.

use super::scanner::{AfterQuote, BadQuote, Record, Scanned};
use super::{SourceError, MAX_RECORD_BYTES};
use crate::item::{NewItem, Overrides, UserKey};
use crate::validate::{email_syntax_error, upn_length_error};

/// A warning names at most this many columns, then says how many more there are.
const MAX_NAMED_COLUMNS: usize = 20;

/// The columns docs/usage.md defines; header names match them case-insensitively, no aliases.
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

/// A row whose quotes closed but whose shape is wrong. Every RFC 4180 reader sees one record
/// here, so it stays one `bad_input` item: its lines are never read again as rows, whatever the
/// quotes hold (a notes cell with a pasted user list in it must not convert those users).
#[derive(Debug, Clone, Copy)]
enum Malformed {
    /// Text follows a closing quote (`"a"b`) instead of a comma or a line end.
    AfterQuote(AfterQuote),
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
            Malformed::AfterQuote(AfterQuote { field, .. })
            | Malformed::LineBreaks { field, .. } => field,
        }
    }
}

/// A scanned record judged as a row: its lines, and what (if anything) broke its shape.
#[derive(Debug)]
pub(super) struct Row {
    /// First and last physical line of the record.
    pub(super) line: u64,
    last_line: u64,
    bad_quote: Option<BadQuote>,
    malformed: Option<Malformed>,
    /// Fields of the record that hold what the row says (fewer than all after an unterminated
    /// quote or a broken field).
    usable: usize,
}

impl Row {
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

/// An empty or whitespace-only line: one unquoted field of spaces. Skipped; a line with a
/// comma or a quote (`""` included) is a row, even when every field is blank.
pub(super) fn is_blank_line(record: &Record) -> bool {
    record.len() == 1
        && !record.quoted
        && !record.overflow
        && record
            .get(0)
            .is_some_and(|f| f.iter().all(|b| *b == b' ' || *b == b'\t'))
}

/// The header record, checked: why it cannot name the columns, if it cannot.
pub(super) fn header_problem(scanned: &Scanned, record: &Record) -> Option<String> {
    if let Some(bad) = &scanned.bad_quote {
        return Some(format!(
            "column {}: {}",
            bad.open.field + 1,
            quote_problem(bad)
        ));
    }
    if let Some(bad) = scanned.after_quote {
        let bad = Malformed::AfterQuote(bad);
        return Some(format!(
            "column {}: {}",
            bad.field() + 1,
            malformed_problem(bad)
        ));
    }
    if record.overflow {
        return Some(format!("longer than {} MiB", MAX_RECORD_BYTES >> 20));
    }
    None
}

/// The file's columns, as its header names them.
#[derive(Debug)]
pub(super) struct Header {
    file: String,
    /// Index of each [`Column`] in the header (first occurrence), by `Column as usize`.
    columns: [Option<usize>; 8],
    width: usize,
    /// Notices for the operator about the file as a whole (unknown or repeated columns).
    pub(super) warnings: Vec<String>,
}

impl Header {
    /// Reads the header record of `file`, on `line`.
    pub(super) fn read(file: String, record: &Record, line: u64) -> Result<Header, SourceError> {
        let mut header = Header {
            file,
            columns: [None; 8],
            width: record.len(),
            warnings: Vec::new(),
        };
        let mut unknown = Vec::new();
        let mut unknown_count = 0usize;
        let mut repeated = Vec::new();
        for (i, raw) in record.iter().enumerate() {
            let name = std::str::from_utf8(raw)
                .map_err(|_| SourceError::HeaderNotUtf8 {
                    file: header.file.clone(),
                    line,
                    column: i + 1,
                })?
                .trim();
            match Column::from_header(name) {
                Some(c) if header.columns[c as usize].is_none() => {
                    header.columns[c as usize] = Some(i)
                }
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
        if header.columns[Column::Id as usize].is_none()
            && header.columns[Column::UserPrincipalName as usize].is_none()
        {
            let names: Vec<String> = record
                .iter()
                .map(|raw| String::from_utf8_lossy(raw).trim().to_string())
                .collect();
            return Err(SourceError::NoKeyColumn {
                file: header.file.clone(),
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
            header.warnings.push(format!(
                "{}: ignoring unknown columns: {}{tail}",
                header.file,
                unknown.join(", ")
            ));
        }
        if !repeated.is_empty() {
            header.warnings.push(format!(
                "{}: repeated columns, only the first of each is used: {}",
                header.file,
                repeated.join(", ")
            ));
        }
        Ok(header)
    }

    /// Judges a scanned record as a row: a quoted field that took in line breaks it cannot hold
    /// breaks the row's shape, as text after a closing quote does.
    pub(super) fn row(&self, scanned: Scanned, record: &Record) -> Row {
        let mut malformed = scanned.after_quote.map(Malformed::AfterQuote);
        if malformed.is_none() && scanned.bad_quote.is_none() {
            if let Some((open, close_line)) = scanned.multi_line {
                if self.width > 0 && record.len() == self.width && !self.may_span_lines(open.field)
                {
                    malformed = Some(Malformed::LineBreaks {
                        field: open.field,
                        open_line: open.line,
                        close_line,
                    });
                }
            }
        }
        let usable = match (&scanned.bad_quote, malformed) {
            (Some(bad), _) => bad.open.field,
            (None, Some(bad)) => bad.field(),
            (None, None) => record.len(),
        };
        Row {
            line: scanned.line,
            last_line: scanned.last_line,
            bad_quote: scanned.bad_quote,
            malformed,
            usable,
        }
    }

    /// Whether field `index` may hold a line break: only the message body and columns the tool
    /// ignores (notes).
    fn may_span_lines(&self, index: usize) -> bool {
        match self.columns.iter().position(|c| *c == Some(index)) {
            None => true,
            Some(c) => Column::ALL[c] == Column::CustomizedMessageBody,
        }
    }

    fn column_name(&self, index: usize) -> String {
        match self.columns.iter().position(|c| *c == Some(index)) {
            Some(c) => Column::ALL[c].name().to_string(),
            None => format!("column {}", index + 1),
        }
    }

    fn field<'r>(&self, record: &'r Record, row: &Row, column: Column) -> Field<'r> {
        let index = self.columns[column as usize].filter(|i| *i < row.usable);
        let Some(raw) = index.and_then(|i| record.get(i)) else {
            return Field::Absent;
        };
        match std::str::from_utf8(raw) {
            Ok(s) if s.trim().is_empty() => Field::Absent,
            Ok(s) => Field::Text(s.trim()),
            Err(_) => Field::NotUtf8,
        }
    }

    /// Turns the current record into an item; every problem found goes into `bad_input`.
    pub(super) fn item(&self, row: &Row, record: &Record) -> NewItem {
        let line = row.line;
        let mut problems = Vec::new();
        let shaped = row.bad_quote.is_none() && row.malformed.is_none() && !record.overflow;
        let aligned = shaped && record.len() == self.width;
        let all_blank = shaped && record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace));
        if let Some(bad) = &row.bad_quote {
            problems.push(format!(
                "field {}: {}",
                self.column_name(bad.open.field),
                quote_problem(bad)
            ));
        } else if let Some(bad) = row.malformed {
            problems.push(format!(
                "field {}: {}{}",
                self.column_name(bad.field()),
                malformed_problem(bad),
                row.span()
            ));
        } else if record.overflow {
            problems.push(format!(
                "row longer than {} MiB: not read{}",
                MAX_RECORD_BYTES >> 20,
                row.span()
            ));
        } else if all_blank {
            problems.push("every field is blank: no id and no userPrincipalName".to_string());
        } else if !aligned {
            problems.push(format!(
                "expected {} fields, found {}{}",
                self.width,
                record.len(),
                row.span()
            ));
        }
        let mut unreadable = Vec::new();
        let mut text = |column: Column| match self.field(record, row, column) {
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
        overrides.invite_redirect_url = checked(
            Column::InviteRedirectUrl,
            redirect,
            (is_http_url, "an https:// or http:// URL"),
            &mut problems,
        );
        overrides.message_language = checked(
            Column::MessageLanguage,
            language,
            (is_language_tag, "a language tag like en-US"),
            &mut problems,
        );
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

/// The `value` of `column` if there is one and `ok` accepts it; else `None`, and the problem
/// with it (it is not `what`) in `problems`.
fn checked(
    column: Column,
    value: Option<&str>,
    (ok, what): (fn(&str) -> bool, &str),
    problems: &mut Vec<String>,
) -> Option<String> {
    let value = value?;
    if ok(value) {
        return Some(value.to_string());
    }
    problems.push(format!(
        "field {}: {} is not {what}",
        column.name(),
        show(value)
    ));
    None
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
        Malformed::AfterQuote(AfterQuote {
            open_line,
            close_line,
            byte,
            ..
        }) => {
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

/// A header name quoted for a warning, cut short like [`show`].
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
pub(super) fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(super) fn is_upn(s: &str) -> bool {
    matches!(s.split_once('@'), Some((user, domain))
        if !user.is_empty() && !domain.is_empty() && !domain.contains('@'))
}

pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

pub(super) fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty()) && !s.chars().any(char::is_whitespace)
}

pub(super) use crate::validate::is_language_tag;

/// A value quoted for a message, cut short so a runaway field cannot flood the report.
pub(super) fn show(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}
