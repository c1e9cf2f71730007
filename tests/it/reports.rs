//! Reports of real runs, written by the real binary: the sample tenant's dry run in every
//! format, a live run with hostile display names and failed invitations, a report written from
//! a copied database with no tenant in reach, and `demo`. Every count is checked against the
//! database the run wrote, every documented JSON key against docs/report-json.md.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use b2b_convert::emulator::{Emulator, EmulatorConfig, Tenant};
use b2b_convert::item::{ItemRecord, ItemState, RunCounts};
use b2b_convert::queue::Queue;
use common::*;
use serde_json::Value;

const XSS_NAME: &str = "<script>alert(1)</script>";
const FORMULA_NAME: &str = "=HYPERLINK(\"http://x\")";

fn db_counts(db: &Path, run_id: i64) -> RunCounts {
    Queue::open(db).unwrap().counts(run_id).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A run's report in each format.
struct Reports {
    md: String,
    html: String,
    csv: String,
    json: String,
}

impl Reports {
    /// `report RUN` written as `{stem}.md`, `.html`, `.csv` and `.json` in `dir`.
    async fn write(emu: &Emulator, db: &Path, run_id: i64, dir: &Path, stem: &str) -> Reports {
        let path = |format: &str| dir.join(format!("{stem}.{format}"));
        Reports {
            md: report(emu, db, run_id, &path("md"), &[]).await,
            html: report(emu, db, run_id, &path("html"), &[]).await,
            csv: report(emu, db, run_id, &path("csv"), &[]).await,
            json: report(emu, db, run_id, &path("json"), &[]).await,
        }
    }

    /// Each format's name and text.
    fn each(&self) -> [(&'static str, &str); 4] {
        [
            ("md", &self.md),
            ("html", &self.html),
            ("csv", &self.csv),
            ("json", &self.json),
        ]
    }
}

/// Nothing that lets someone redeem an invitation or call Graph is in any report.
fn assert_no_secrets(text: &str, secret: &str, what: &str) {
    for bad in [
        "inviteRedeemUrl",
        "invite_redeem_url",
        "redeem?rd=",
        "ticket%3d",
        "access_token",
        "Bearer ",
        secret,
    ] {
        assert!(!text.contains(bad), "{what} contains {bad:?}");
    }
}

fn client_secret(emu: &Emulator) -> String {
    emu.client_env()
        .into_iter()
        .find(|(k, _)| k == "AZURE_CLIENT_SECRET")
        .map(|(_, v)| v)
        .expect("the emulator gives a client secret")
}

// ---------------------------------------------------------------------------------------------
// Per-format checks

/// Markdown: state table equals the database, each item's row once, attention rows carry the
/// reason (or Graph error code) and the request id.
/// What a report names an item that needs attention by: its reason, else Graph's error code.
fn attention_code(i: &ItemRecord) -> String {
    i.reason
        .map(|r| r.as_str().to_string())
        .or_else(|| i.error_code.clone())
        .expect("blocked or failed items have a reason or an error code")
}

fn check_md(md: &str, counts: &RunCounts, items: &[ItemRecord]) {
    assert!(
        md.starts_with("# Conversion to B2B collaboration: run "),
        "{md:.200}"
    );
    assert!(md.find("## Summary for the change board") < md.find("## Run"));
    for st in ItemState::ALL {
        let row = format!(" ({}) | {} |", st.as_str(), counts.state(st));
        assert!(
            md.lines().any(|l| l.ends_with(&row)),
            "missing state row {row}"
        );
    }
    assert!(md.contains(&format!("| **total** | **{}** |", counts.total)));
    for (code, n) in counts.reasons.iter().filter(|(_, n)| **n > 0) {
        let row = format!("| {code} | ");
        assert!(md.contains(&row), "missing reason row {row}");
        let row = format!(" | {n} | ");
        assert!(md.contains(&row), "missing reason row {row}");
    }
    let attention = section(md, "## Users who need action", "## Things to consider");
    let listed = items.iter().filter(|i| i.state.needs_attention()).count();
    assert!(md.contains(&format!("## Users who need action ({listed})")));
    for i in items {
        let prefix = format!(
            "| {} | {} | ",
            i.id,
            i.line.map(|l| l.to_string()).unwrap_or_default()
        );
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with(&prefix)).collect();
        // Only users who need action are listed; everyone is in the CSV and JSON reports.
        let expected = usize::from(i.state.needs_attention());
        assert_eq!(rows.len(), expected, "item {} rows: {rows:?}", i.id);
        if i.state.needs_attention() {
            let row = rows[0];
            assert!(attention.contains(row), "item {} not under attention", i.id);
            let code = attention_code(i);
            assert!(row.contains(&format!(" {code} ")), "{row}");
            if let Some(req) = &i.request_id {
                assert!(row.contains(req.as_str()), "{row}");
            }
        }
    }
    assert!(!md.contains("<script>"), "raw script tag in Markdown");
}

/// The text between two headings (or to the end).
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let s = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in report"));
    let rest = &text[s..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

fn check_html(html: &str, counts: &RunCounts, items: &[ItemRecord]) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    let names = html::element_names(html);
    assert_eq!(
        names.iter().filter(|n| *n == "script").count(),
        1,
        "only the report's own sorting script"
    );
    assert!(!html.contains("<script>alert(1)"));
    assert!(html.find("<section class=\"summary\"") < html.find("<h2>Run</h2>"));
    for st in ItemState::ALL {
        let row = format!(
            "<small>({})</small></td><td class=\"n\">{}</td>",
            st.as_str(),
            counts.state(st)
        );
        assert!(html.contains(&row), "missing {row}");
    }
    assert!(html.contains(&format!(
        "<tfoot><tr><th>total</th><th class=\"n\">{}</th>",
        counts.total
    )));
    for i in items {
        let marker = format!("data-item=\"{}\"", i.id);
        let expected = usize::from(i.state.needs_attention());
        assert_eq!(html.matches(&marker).count(), expected, "item {}", i.id);
        if i.state.needs_attention() {
            let start = html.find(&marker).unwrap();
            let row = &html[start..start + html[start..].find("</tr>").unwrap()];
            let code = attention_code(i);
            assert!(row.contains(&format!("data-reason=\"{code}\"")), "{row}");
            if let Some(req) = &i.request_id {
                assert!(row.contains(&format!("<td>{req}</td>")), "{row}");
            }
        }
    }
}

/// CSV: one row per item with the database's state and reason, nothing a spreadsheet would
/// evaluate. Returns the rows by item id.
fn check_csv(text: &str, counts: &RunCounts, items: &[ItemRecord]) -> BTreeMap<i64, Vec<String>> {
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, b2b_convert::report::CSV_COLUMNS);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut rows = BTreeMap::new();
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for rec in r.records() {
        let row: Vec<String> = rec.unwrap().iter().map(String::from).collect();
        assert_eq!(row.len(), header.len());
        for cell in &row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "formula-like cell {cell:?}"
            );
        }
        *by_state.entry(row[col("state")].clone()).or_default() += 1;
        let id: i64 = row[col("item_id")].parse().unwrap();
        assert!(rows.insert(id, row).is_none(), "item {id} twice");
    }
    assert_eq!(rows.len() as u64, counts.total);
    for st in ItemState::ALL {
        assert_eq!(
            by_state.get(st.as_str()).copied().unwrap_or(0),
            counts.state(st),
            "{st}"
        );
    }
    for i in items {
        let row = &rows[&i.id];
        assert_eq!(row[col("state")], i.state.as_str());
        assert_eq!(
            row[col("reason")],
            i.reason.map(|r| r.as_str()).unwrap_or_default()
        );
        assert_eq!(
            row[col("request_id")],
            i.request_id.clone().unwrap_or_default()
        );
        assert_eq!(row[col("fix_hint")].is_empty(), !i.state.needs_attention());
    }
    rows
}

/// The keys a documented table of docs/report-json.md lists under `heading`.
fn documented_keys(doc: &str, heading: &str) -> BTreeSet<String> {
    let start = doc
        .lines()
        .position(|l| l == heading)
        .unwrap_or_else(|| panic!("docs/report-json.md has no {heading:?}"));
    doc.lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// JSON: parses, has the documented shape at every level, and its counts and items are the
/// database's.
fn check_json(text: &str, counts: &RunCounts, items: &[ItemRecord]) -> Value {
    let v: Value = serde_json::from_str(text).expect("the JSON report parses");
    let doc = read(&repo_path("docs/report-json.md"));
    assert_eq!(v["schema"], "b2b-convert.report");
    assert_eq!(v["version"], 1);
    assert_eq!(keys(&v), documented_keys(&doc, "## Top level"), "top level");
    assert_eq!(keys(&v["run"]), documented_keys(&doc, "## `run`"), "run");
    assert_eq!(
        keys(&v["run"]["options"]),
        documented_keys(&doc, "### `run.options`"),
        "run.options"
    );
    assert_eq!(
        keys(&v["counts"]),
        documented_keys(&doc, "## `counts`"),
        "counts"
    );
    let reasons = v["reasons"].as_array().unwrap();
    for r in reasons {
        assert_eq!(
            keys(r),
            documented_keys(&doc, "## `reasons[]`"),
            "reasons[]"
        );
    }
    for t in v["thingsToConsider"].as_array().unwrap() {
        assert_eq!(
            keys(t),
            ["text", "topic"].map(String::from).into(),
            "thingsToConsider[]"
        );
    }
    for it in v["items"].as_array().unwrap() {
        assert_eq!(keys(it), documented_keys(&doc, "## `items[]`"), "items[]");
    }
    if !v["estimate"].is_null() {
        assert_eq!(
            keys(&v["estimate"]),
            documented_keys(&doc, "## `estimate` (dry run)")
        );
    }
    if !v["throughput"].is_null() {
        assert_eq!(
            keys(&v["throughput"]),
            documented_keys(&doc, "## `throughput` (live run)")
        );
    }

    // Counts are the database's.
    let c = &v["counts"];
    assert_eq!(c["total"], counts.total);
    assert_eq!(keys(&c["states"]).len(), 7, "all seven states");
    for st in ItemState::ALL {
        assert_eq!(c["states"][st.as_str()], counts.state(st), "{st}");
    }
    let reasons_in_json: BTreeMap<String, u64> =
        serde_json::from_value(c["reasons"].clone()).unwrap();
    let reasons_in_db: BTreeMap<String, u64> = counts
        .reasons
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    assert_eq!(
        reasons_in_json
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect::<BTreeMap<_, _>>(),
        reasons_in_db
    );
    assert_eq!(c["graphRequests"], counts.graph_requests);
    assert_eq!(c["throttledRequests"], counts.throttled_requests);
    assert_eq!(c["retries"], counts.retries);
    assert_eq!(c["reconciled"], counts.reconciled);
    let listed: BTreeMap<String, u64> = reasons
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, reasons_in_db, "reasons[] is the database's");

    // Items: each once, in id order, with the database's state, reason and Graph error.
    let json_items = v["items"].as_array().unwrap();
    assert_eq!(json_items.len(), items.len());
    for (j, i) in json_items.iter().zip(items) {
        assert_eq!(j["id"], i.id);
        assert_eq!(j["state"], i.state.as_str());
        assert_eq!(
            j["reason"].as_str(),
            i.reason.map(|r| r.as_str()),
            "item {}",
            i.id
        );
        assert_eq!(j["errorCode"].as_str(), i.error_code.as_deref());
        assert_eq!(j["requestId"].as_str(), i.request_id.as_deref());
    }
    v
}

// ---------------------------------------------------------------------------------------------
// 1. The sample tenant's dry run, every format

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_dry_run_report_in_every_format_states_the_database() {
    let (dir, db) = temp_db();
    let emu = start_sample().await;
    let run_id = sample_dry_run(&emu, &db).await.run_id();
    let counts = db_counts(&db, run_id);
    let its = items(&db, run_id);
    assert!(counts.state(ItemState::Blocked) > 0 && counts.state(ItemState::WouldConvert) > 0);
    assert_eq!(counts.total as usize, its.len());
    let secret = client_secret(&emu);
    let reports = Reports::write(&emu, &db, run_id, dir.path(), "r").await;

    let md = &reports.md;
    check_md(md, &counts, &its);
    assert!(md.contains("## Estimated duration of the live run"));
    assert!(md.contains(&format!(
        "| Users that would convert | {} |",
        counts.state(ItemState::WouldConvert)
    )));
    assert!(!md.contains("## Throughput"));

    let html = &reports.html;
    check_html(html, &counts, &its);
    assert!(html.contains("<h2>Estimated duration of the live run</h2>"));
    assert!(!html.contains("<h2>Throughput</h2>"));

    check_csv(&reports.csv, &counts, &its);

    let v = check_json(&reports.json, &counts, &its);
    assert_eq!(v["run"]["mode"], "dry_run");
    assert!(v["throughput"].is_null());
    let e = &v["estimate"];
    assert!(e.is_object(), "a dry run has an estimate: {e}");
    assert_eq!(e["wouldConvert"], counts.state(ItemState::WouldConvert));
    assert_eq!(e["usersToConvert"], counts.state(ItemState::WouldConvert));
    assert!(e["estimatedSeconds"].as_f64().unwrap() >= 0.0);

    // --format wins over an extension it cannot read.
    let txt = report(
        &emu,
        &db,
        run_id,
        &dir.path().join("r.txt"),
        &["--format", "md"],
    )
    .await;
    check_md(&txt, &counts, &its);

    // Without --format, an unknown extension is a usage error and writes nothing.
    let bad = dir.path().join("r.unknown");
    let id = run_id.to_string();
    let out = run(&emu, &db, &["report", &id, "--out", bad.to_str().unwrap()]).await;
    out.assert_exit(2);
    out.assert_stderr_has("--format");
    assert!(!bad.exists());

    for (what, text) in reports.each() {
        assert_no_secrets(text, &secret, what);
    }
    emu.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. A live run with hostile names and failures; its report from a copied database

fn user_mut<'a>(t: &'a mut Tenant, upn: &str) -> &'a mut b2b_convert::model::User {
    t.users
        .iter_mut()
        .find(|u| u.user_principal_name.as_deref() == Some(upn))
        .unwrap_or_else(|| panic!("sample tenant has no {upn}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_run_with_failures_and_hostile_names_reports_safely() {
    let (dir, db) = temp_db();
    let mut tenant = Tenant::sample();
    user_mut(&mut tenant, "aisha.rahman@contoso.com").display_name = Some(XSS_NAME.into());
    user_mut(&mut tenant, "bruno.costa@contoso.com").display_name = Some(FORMULA_NAME.into());
    // A user who needs action carries a hostile name too: the people formats list only those.
    user_mut(&mut tenant, "chen.wei@contoso.com").display_name = Some(XSS_NAME.into());
    // Graph refuses an invitation whose address another object holds in proxyAddresses
    // ("Another object with the same value for property proxyAddresses already exists."); the
    // tool's validation predicts it (issue 9), so these two are blocked `mail_conflict` and
    // never sent.
    let doomed = ["chen.wei@contoso.com", "elif.demir@contoso.com"];
    let mut taken = Vec::new();
    for upn in doomed {
        let mail = user_mut(&mut tenant, upn).mail.clone().unwrap();
        taken.push(format!("smtp:{mail}"));
    }
    user_mut(&mut tenant, "dana.whitfield@contoso.com")
        .proxy_addresses
        .get_or_insert_with(Vec::new)
        .extend(taken);

    let emu = start(EmulatorConfig::new(tenant)).await;
    let secret = client_secret(&emu);
    let csv = sample_csv();
    let live_html = dir.path().join("live.html");
    let mut args = run_args(&csv, "--yes");
    args.extend(["--report", live_html.to_str().unwrap()]);
    let out = run(&emu, &db, &args).await;
    assert_eq!(out.code, 3, "blocked and failed items: {}", out.stderr);
    let run_id = out.run_id();
    let counts = db_counts(&db, run_id);
    let its = items(&db, run_id);
    let by_upn = |upn: &str| {
        its.iter()
            .find(|i| i.user_principal_name.as_deref() == Some(upn))
            .unwrap_or_else(|| panic!("no item for {upn}"))
    };
    for upn in doomed {
        let i = by_upn(upn);
        assert_eq!(i.state, ItemState::Blocked, "{i:?}");
        assert_eq!(
            i.reason,
            Some(b2b_convert::item::Reason::MailConflict),
            "{i:?}"
        );
        assert!(
            i.detail.as_deref().unwrap().contains("proxyAddresses"),
            "{i:?}"
        );
    }
    assert_eq!(
        by_upn("aisha.rahman@contoso.com").state,
        ItemState::Converted
    );
    assert_eq!(
        by_upn("bruno.costa@contoso.com").state,
        ItemState::Converted
    );
    assert_eq!(counts.state(ItemState::Failed), 0);
    assert!(counts.state(ItemState::Converted) > 0);
    assert!(
        !emu.invitations().is_empty(),
        "Graph issued invitations, with redeem URLs the reports must not carry"
    );

    // HTML, written by `run --report`; the other formats by `report`.
    let reports = Reports {
        html: read(&live_html),
        md: report(&emu, &db, run_id, &dir.path().join("live.md"), &[]).await,
        csv: report(&emu, &db, run_id, &dir.path().join("live.csv"), &[]).await,
        json: report(&emu, &db, run_id, &dir.path().join("live.json"), &[]).await,
    };
    let html = &reports.html;
    check_html(html, &counts, &its);
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains(XSS_NAME));
    assert!(html.contains("<h2>Throughput</h2>"));
    assert!(html.contains("<h2>Pace</h2>") && html.contains("<svg"));
    assert!(!html.contains("Estimated duration of the live run"));
    for upn in doomed {
        let i = by_upn(upn);
        let marker = format!("<tr class=\"blocked\" data-item=\"{}\" ", i.id);
        let start = html.find(&marker).expect("blocked row");
        let row = &html[start..start + html[start..].find("</tr>").unwrap()];
        assert!(row.contains("data-reason=\"mail_conflict\""), "{row}");
        assert!(
            row.contains("proxyAddresses"),
            "the holder's property: {row}"
        );
    }

    // Markdown.
    let md = &reports.md;
    check_md(md, &counts, &its);
    assert!(md.contains("\\<script\\>alert(1)\\</script\\>"));
    assert!(md.contains("## Throughput"));
    assert!(!md.contains("## Estimated duration"));

    // CSV: the formula name is text, the failed rows carry code and request id.
    let rows = check_csv(&reports.csv, &counts, &its);
    let col = |name: &str| {
        b2b_convert::report::CSV_COLUMNS
            .iter()
            .position(|c| *c == name)
            .unwrap()
    };
    let bruno = &rows[&by_upn("bruno.costa@contoso.com").id];
    assert_eq!(bruno[col("display_name")], format!("'{FORMULA_NAME}"));
    let aisha = &rows[&by_upn("aisha.rahman@contoso.com").id];
    assert_eq!(aisha[col("display_name")], XSS_NAME);
    for upn in doomed {
        let i = by_upn(upn);
        let row = &rows[&i.id];
        assert_eq!(row[col("state")], "blocked");
        assert_eq!(row[col("reason")], "mail_conflict");
        assert!(!row[col("fix_hint")].is_empty());
    }

    // JSON.
    let v = check_json(&reports.json, &counts, &its);
    assert_eq!(v["run"]["mode"], "live");
    assert!(v["estimate"].is_null(), "a live run has no estimate");
    let t = &v["throughput"];
    assert_eq!(t["converted"], counts.state(ItemState::Converted));
    assert_eq!(t["graphRequests"], counts.graph_requests);

    for (what, text) in reports.each() {
        assert_no_secrets(text, &secret, what);
    }

    // 3. From the database alone: the tenant is gone, the file is elsewhere.
    emu.shutdown().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("copied.db");
    std::fs::copy(&db, &copy).unwrap();
    drop(dir);
    let id = run_id.to_string();
    for name in ["again.html", "again.json", "again.md", "again.csv"] {
        let path = elsewhere.path().join(name);
        let out = run_plain(&copy, &["report", &id, "--out", path.to_str().unwrap()]).await;
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        let text = read(&path);
        match name.rsplit('.').next().unwrap() {
            "html" => check_html(&text, &counts, &its),
            "json" => {
                check_json(&text, &counts, &its);
            }
            "md" => check_md(&text, &counts, &its),
            _ => {
                check_csv(&text, &counts, &its);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. demo

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_writes_html_reports_and_prints_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let out = run_plain(
        &dir.path().join("unused.db"),
        &["demo", "--out-dir", out_dir.to_str().unwrap()],
    )
    .await;
    out.assert_exit(0);
    let printed: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once("report").map(|(_, rest)| rest))
        .filter_map(|rest| rest.rsplit_once(": ").map(|(_, p)| p.trim()))
        .filter(|p| p.ends_with(".html"))
        .collect();
    assert!(
        !printed.is_empty(),
        "no HTML report path in stdout:\n{}",
        out.stdout
    );
    for p in &printed {
        let path = Path::new(p);
        assert!(path.starts_with(&out_dir), "{p} is under --out-dir");
        let html = read(path);
        assert!(html.starts_with("<!DOCTYPE html>"), "{p}");
        html::check_balanced(&html);
    }
    for name in ["dry-run-report.html", "live-run-report.html"] {
        let path = out_dir.join(name);
        assert!(
            printed.iter().any(|p| Path::new(p) == path),
            "{name} printed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. After the weekend: follow-up steps and redemption

/// The CSV rows whose `column` is non-empty, as user ids.
fn csv_users_with(
    rows: &BTreeMap<i64, Vec<String>>,
    column: &str,
    want: Option<&str>,
) -> BTreeSet<String> {
    let col = |name: &str| {
        b2b_convert::report::CSV_COLUMNS
            .iter()
            .position(|c| *c == name)
            .unwrap()
    };
    rows.values()
        .filter(|r| match want {
            Some(w) => r[col(column)] == w,
            None => !r[col(column)].is_empty(),
        })
        .map(|r| r[col("user_id")].clone())
        .collect()
}

/// A dry run with `--set-mail --set-guest` counts the extra PATCH writes in its estimate; the
/// live run's reports say how many users got each step (per user in CSV/JSON, the emulator's
/// PATCH log being the truth) and what userType Guest means for billing; after some partners
/// redeem and `track` runs, every format states exactly who redeemed, and no redeem URL appears
/// even though the run kept them for `export-links`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_run_with_follow_up_steps_reports_steps_and_redemption() {
    let Generated { dir, csv, emu, .. } = Generated::scaled(120, 31, 1_000.0, |_| {}).await;
    let secret = client_secret(&emu);

    // Dry run: the estimate counts one write per invitation plus one per planned PATCH.
    let dry_db = dir.path().join("dry.db");
    let dry_id = finished_run(&emu, &dry_db, &csv, "--dry-run --set-mail --set-guest").await;
    let dry_items = items(&dry_db, dry_id);
    let would: Vec<&ItemRecord> = dry_items
        .iter()
        .filter(|i| i.state == ItemState::WouldConvert)
        .collect();
    let noted = |text: &str| {
        would
            .iter()
            .filter(|i| i.detail.as_deref().is_some_and(|d| d.contains(text)))
            .count() as u64
    };
    let (mail, guest) = (
        noted("mail will be set"),
        noted("userType will be set to Guest"),
    );
    assert!(
        mail > 0 && guest > 0,
        "the tenant has users each step touches"
    );
    let json = report(&emu, &dry_db, dry_id, &dir.path().join("dry.json"), &[]).await;
    let v = check_json(&json, &db_counts(&dry_db, dry_id), &dry_items);
    let writes = would.len() as u64 + mail + guest;
    assert_eq!(v["estimate"]["mailWrites"], mail);
    assert_eq!(v["estimate"]["guestWrites"], guest);
    assert_eq!(v["estimate"]["writes"], writes);
    assert_eq!(v["followUps"]["mailPlanned"], mail);
    assert_eq!(v["followUps"]["guestPlanned"], guest);
    assert_eq!(v["followUps"]["mailSet"], 0);
    assert!(v["redemption"].is_null());
    let md = report(&emu, &dry_db, dry_id, &dir.path().join("dry.md"), &[]).await;
    let invitations = would.len();
    assert_has(
        &md,
        &format!("| Graph writes | {writes} ({invitations} invitations + {mail} mail PATCHes + {guest} userType PATCHes;"),
    );
    assert!(
        md.contains("**Billing.** The "),
        "billing note in the dry run"
    );

    // Live run with both steps, keeping redeem links.
    let db = dir.path().join("live.db");
    let flags = "--yes --silent --rate 1000 --keep-redeem-links --set-mail --set-guest";
    let run_id = finished_run(&emu, &db, &csv, flags).await;
    let id = run_id.to_string();
    let (mail_set, guest_set) = (patched_users(&emu, "mail"), patched_users(&emu, "userType"));
    assert!(!mail_set.is_empty() && !guest_set.is_empty());
    let converted: Vec<String> = items_in(&db, run_id, ItemState::Converted)
        .into_iter()
        .map(|i| i.user_id.unwrap())
        .collect();
    assert!(converted.len() > 20, "{}", converted.len());

    // Ten partners redeem; `track` reads everyone.
    let redeemed: BTreeSet<String> = converted.iter().take(10).cloned().collect();
    for user in &redeemed {
        assert_eq!(emu.redeem(user), Some(200), "redeem {user}");
    }
    let out = run(&emu, &db, &["track", &id]).await;
    out.assert_exit(0);
    let pending = converted.len() as u64 - 10;

    let its = items(&db, run_id);
    let counts = db_counts(&db, run_id);
    let reports = Reports::write(&emu, &db, run_id, dir.path(), "live").await;
    for (what, text) in reports.each() {
        assert_no_secrets(text, &secret, what);
        assert!(!text.contains("/redeem?"), "{what} holds a redeem URL");
    }

    let v = check_json(&reports.json, &counts, &its);
    let r = &v["redemption"];
    assert_eq!(r["accepted"], 10);
    assert_eq!(r["pendingAcceptance"], pending);
    assert_eq!(r["notApplied"], 0);
    assert_eq!(r["untracked"], 0);
    assert!(r["lastTrackedAt"].is_string());
    assert_eq!(r["tracks"].as_array().unwrap().len(), 1);
    let days = r["timeline"].as_array().unwrap();
    assert_eq!(days.last().unwrap()["cumulative"], 10);
    assert_eq!(
        keys(r),
        documented_keys(
            &read(&repo_path("docs/report-json.md")),
            "## `redemption` (live run)"
        )
    );
    assert_eq!(v["followUps"]["mailSet"], mail_set.len() as u64);
    assert_eq!(v["followUps"]["guestSet"], guest_set.len() as u64);
    let accepted_in_json = strings_where(&v["items"], "userId", |i| {
        i["externalUserState"] == "Accepted"
    });
    assert_eq!(BTreeSet::from_iter(accepted_in_json), redeemed);

    // CSV: who redeemed, who got which step, per user.
    let rows = check_csv(&reports.csv, &counts, &its);
    assert_eq!(
        csv_users_with(&rows, "external_user_state", Some("Accepted")),
        redeemed
    );
    assert_eq!(
        csv_users_with(&rows, "external_user_state", Some("PendingAcceptance")).len() as u64,
        pending
    );
    assert_eq!(csv_users_with(&rows, "mail_set_at", None), mail_set);
    assert_eq!(csv_users_with(&rows, "guest_set_at", None), guest_set);

    // Markdown and HTML: exact counts, the not-redeemed list, the steps and the billing note.
    let md = &reports.md;
    check_md(md, &counts, &its);
    let red = section(md, "## Redemption", "\n## ");
    assert!(red.contains("| Accepted | 10 |"), "{red}");
    assert!(
        red.contains(&format!("| Pending acceptance | {pending} |")),
        "{red}"
    );
    assert!(red.contains("| Not applied | 0 |") && red.contains("| Untracked | 0 |"));
    assert!(red.contains(&format!("### Not redeemed yet ({pending})")));
    let listed = red
        .lines()
        .filter(|l| l.contains("| pending acceptance | never |"))
        .count() as u64;
    assert_eq!(
        listed, pending,
        "every pending user listed with invitation date: {red}"
    );
    let steps_md = section(md, "## Follow-up steps", "\n## ");
    assert!(
        steps_md.contains(&format!(
            "| userType switched to Guest (after the invitation) | {} | {} |",
            guest_set.len(),
            guest_set.len()
        )),
        "{steps_md}"
    );
    assert!(steps_md.contains("monthly active user (MAU) pricing"));
    assert!(md.contains(&format!(
        "mail set for {} of {} users that needed it",
        mail_set.len(),
        mail_set.len()
    )));
    let html = &reports.html;
    check_html(html, &counts, &its);
    assert!(html.contains("<h2 id=\"redemption\">Redemption</h2>"));
    assert!(html.contains("<td>Accepted</td><td class=\"n\">10</td>"));
    assert!(html.contains(&format!("Not redeemed yet ({pending})")));
    assert_eq!(
        html.matches("<td>pending acceptance</td><td>never</td>")
            .count() as u64,
        pending
    );
    assert!(html.contains("<strong>Billing.</strong>"));
}
