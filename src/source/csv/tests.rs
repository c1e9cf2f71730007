//! The CSV source's row-level tests: line numbers, record boundaries, messages.

use super::rows::{is_guid, is_http_url, is_language_tag, show};
use super::*;
use crate::item::{Overrides, UserKey};
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
    assert!(!got
        .iter()
        .any(|i| i.key == Some(UserKey::Id(G2.into())) || i.key == Some(UserKey::Id(g3.into()))));

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
        e.ends_with("header has neither `id` nor `userPrincipalName`; found: mail, externalEmail"),
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
    let text = format!("id,customizedMessageBody\n{G1},a\n{G2},\"two\nlines\"\n\n{G1},c\n{G2},d\n");
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
    assert!(is_language_tag("en-US") && is_language_tag("zh-Hans-CN") && is_language_tag("es-419"));
    assert!(
        !is_language_tag("en_US")
            && !is_language_tag("-en")
            && !is_language_tag("en-")
            && !is_language_tag("419")
    );
    assert!(
        is_http_url("HTTPS://x.example") && !is_http_url("https://") && !is_http_url("https://a b")
    );
    assert!(show(&"x".repeat(500)).len() < 100);
}
