//! CSV report: one row per item, columns in the fixed order of [`CSV_COLUMNS`] (documented in
//! docs/report-json.md, "CSV columns"). Spreadsheet-safe: a cell a spreadsheet would read as a
//! formula (starting with `=`, `+`, `-`, `@`, tab or carriage return) gets a leading `'`.

use crate::item::{ItemRecord, UserKey};

use std::io::{self, Write};

use super::{item_fix, ItemExtras, ItemSource};

/// A column of the CSV report: its name, and its cell of an item.
type Column = (&'static str, fn(&ItemRecord, &ItemExtras) -> String);

/// The columns of the CSV report, in order. New columns are only ever appended.
const COLUMNS: [Column; 27] = [
    ("item_id", |i, _| i.id.to_string()),
    ("line", |i, _| {
        i.line.map(|l| l.to_string()).unwrap_or_default()
    }),
    ("user_key", |i, _| user_key(i)),
    ("user_id", |i, _| text(&i.user_id)),
    ("user_principal_name", |i, _| text(&i.user_principal_name)),
    ("display_name", |i, _| text(&i.display_name)),
    ("user_type", |i, _| text(&i.user_type)),
    ("external_email", |i, _| text(&i.external_email)),
    ("state", |i, _| i.state.as_str().to_string()),
    ("reason", |i, _| {
        i.reason.map(|r| r.as_str().to_string()).unwrap_or_default()
    }),
    ("detail", |i, _| text(&i.detail)),
    ("attempts", |i, _| i.attempts.to_string()),
    ("error_code", |i, _| text(&i.error_code)),
    ("error_message", |i, _| text(&i.error_message)),
    ("request_id", |i, _| text(&i.request_id)),
    ("client_request_id", |i, _| text(&i.client_request_id)),
    ("invitation_id", |i, _| text(&i.invitation_id)),
    ("invitation_status", |i, _| text(&i.invitation_status)),
    ("reconciled", |i, _| i.reconciled.to_string()),
    ("updated_at", |i, _| i.updated_at.clone()),
    ("fix_hint", |i, _| fix_hint(i)),
    ("invited_at", |_, x| text(&x.invited_at)),
    ("external_user_state", |_, x| text(&x.external_user_state)),
    ("external_user_state_changed_at", |_, x| {
        text(&x.external_user_state_changed_at)
    }),
    ("tracked_at", |_, x| text(&x.tracked_at)),
    ("mail_set_at", |_, x| text(&x.mail_set_at)),
    ("guest_set_at", |_, x| text(&x.guest_set_at)),
];

/// Column order of the CSV report (the names of [`COLUMNS`]).
pub const CSV_COLUMNS: [&str; 27] = {
    let mut names = [""; 27];
    let mut k = 0;
    while k < names.len() {
        names[k] = COLUMNS[k].0;
        k += 1;
    }
    names
};

/// Neutralises a cell a spreadsheet would evaluate as a formula.
pub(crate) fn spreadsheet_safe(cell: String) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell,
    }
}

fn text(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

fn user_key(i: &ItemRecord) -> String {
    match &i.key {
        Some(UserKey::Id(v)) => format!("id:{v}"),
        Some(UserKey::UserPrincipalName(v)) => format!("userPrincipalName:{v}"),
        None => String::new(),
    }
}

/// What to do about an item that needs attention; empty for the others.
fn fix_hint(i: &ItemRecord) -> String {
    if i.state.needs_attention() {
        item_fix(i).to_string()
    } else {
        String::new()
    }
}

fn row(i: &ItemRecord, x: &ItemExtras) -> [String; 27] {
    COLUMNS.map(|(_, cell)| cell(i, x))
}

/// Writes the header and one row per item as the source yields them: nothing is held.
pub(super) fn write(items: &dyn ItemSource, out: &mut dyn Write) -> io::Result<()> {
    let mut w = ::csv::WriterBuilder::new().from_writer(out);
    w.write_record(CSV_COLUMNS)?;
    items.each(&mut |item, extras| {
        w.write_record(row(item, extras).map(spreadsheet_safe))?;
        Ok(())
    })?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{dry_run, live_run, INJECTION, XSS_NAME};
    use super::*;
    use crate::config::ReportFormat;
    use crate::report::render as render_report;

    fn parse(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let mut r = ::csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let header = r.headers().unwrap().iter().map(String::from).collect();
        let rows = r
            .records()
            .map(|rec| rec.unwrap().iter().map(String::from).collect())
            .collect();
        (header, rows)
    }

    #[test]
    fn formula_cells_are_quoted() {
        for bad in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(spreadsheet_safe(bad.into()).starts_with('\''), "{bad:?}");
        }
        assert_eq!(spreadsheet_safe("plain".into()), "plain");
        assert_eq!(spreadsheet_safe(String::new()), "");
    }

    #[test]
    fn parses_back_one_row_per_item() {
        for data in [dry_run(), live_run()] {
            let text = render_report(ReportFormat::Csv, &data);
            let (header, rows) = parse(&text);
            assert_eq!(header, CSV_COLUMNS);
            assert_eq!(rows.len(), data.items.len());
            for (row, item) in rows.iter().zip(&data.items) {
                assert_eq!(row.len(), CSV_COLUMNS.len());
                assert_eq!(row[0], item.id.to_string());
                assert_eq!(row[8], item.state.as_str());
                assert_eq!(row[9], item.reason.map(|r| r.as_str()).unwrap_or_default());
                assert_eq!(row[14], item.request_id.clone().unwrap_or_default());
                assert_eq!(row[20].is_empty(), !item.state.needs_attention());
            }
        }
    }

    #[test]
    fn injection_cell_starts_with_quote_and_text_survives() {
        let data = dry_run();
        let (_, rows) = parse(&render_report(ReportFormat::Csv, &data));
        let name = CSV_COLUMNS
            .iter()
            .position(|c| *c == "display_name")
            .unwrap();
        let inj = rows.iter().find(|r| r[0] == "2").unwrap();
        assert_eq!(inj[name], format!("'{INJECTION}"));
        let xss = rows.iter().find(|r| r[0] == "1").unwrap();
        assert_eq!(xss[name], XSS_NAME);
        let newline = rows.iter().find(|r| r[10].contains('\n')).unwrap();
        assert!(newline[10].contains("| with pipe\nand newline"));
    }
}
