//! JSON report: the whole run, in the versioned shape of docs/report-json.md.
//!
//! Items keep their `ItemRecord` serde shape, snapshot included: it is the record of each user
//! before a one-way change. Nothing secret is in these structs (no token, no redeem URL).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::{
    things_to_consider, Estimate, FollowUpCounts, ItemExtras, ItemSource, PaceMinute, ReasonCount,
    Summary, Throughput, JSON_SCHEMA, JSON_VERSION,
};
use crate::item::{ItemRecord, ItemState, RunRecord};
use crate::queue::track::{RedemptionDay, TrackPass};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    schema: &'static str,
    version: u32,
    generated_at: &'a str,
    tool_version: &'a str,
    run: Run<'a>,
    counts: Counts,
    reasons: &'a [ReasonCount],
    estimate: Option<Estimate>,
    throughput: Option<Throughput>,
    things_to_consider: Vec<Consideration>,
    /// Live runs: conversions and 429s per minute (additive to version 1).
    pace: &'a [PaceMinute],
    /// Follow-up steps planned and done (additive to version 1).
    follow_ups: &'a FollowUpCounts,
    /// Live runs: what `track` found; `null` for a dry run (additive to version 1).
    redemption: Option<Redemption<'a>>,
    /// Live runs: who still holds a working internal password (status JSON's `retired`,
    /// additive to version 1).
    retired: Option<&'a crate::queue::RetiredCounts>,
    /// `resume` with other send options: each stretch of items and how it went out (additive
    /// to version 1).
    option_history: Vec<OptionStretch<'a>>,
    /// What `restore` and `rollback` cover and did (additive to version 1).
    back_out: BackOut,
    items: StreamedItems<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackOut {
    text: String,
    restored: u64,
    rolled_back: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OptionStretch<'a> {
    at: &'a str,
    first_item_id: Option<i64>,
    sent_before: u64,
    silent: bool,
    changes: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Redemption<'a> {
    pending_acceptance: u64,
    accepted: u64,
    not_applied: u64,
    untracked: u64,
    last_tracked_at: Option<&'a str>,
    timeline: &'a [RedemptionDay],
    tracks: &'a [TrackPass],
}

/// One item: its record and, beside it, redemption and follow-up times.
#[derive(Serialize)]
struct Item<'a> {
    #[serde(flatten)]
    record: &'a ItemRecord,
    #[serde(flatten)]
    extras: &'a ItemExtras,
}

/// Serialises the item source as a JSON array, one item at a time.
struct StreamedItems<'a>(&'a dyn ItemSource);

impl Serialize for StreamedItems<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq};
        let mut seq = serializer.serialize_seq(None)?;
        let mut failure = None;
        let streamed = self.0.each(&mut |record, extras| {
            seq.serialize_element(&Item { record, extras })
                .map_err(|e| {
                    let message = e.to_string();
                    failure = Some(e);
                    io::Error::other(message)
                })
        });
        if let Some(e) = failure {
            return Err(e);
        }
        streamed.map_err(S::Error::custom)?;
        seq.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Run<'a> {
    #[serde(flatten)]
    record: &'a RunRecord,
    /// Start to finish, or to `generatedAt` while the run is unfinished.
    duration_seconds: Option<f64>,
    /// Time the run was being worked (sum of work spans); `null` before work spans existed.
    active_seconds: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    total: u64,
    /// Every state, zero included.
    states: BTreeMap<&'static str, u64>,
    reasons: BTreeMap<String, u64>,
    graph_requests: u64,
    throttled_requests: u64,
    retries: u64,
    reconciled: u64,
}

#[derive(Serialize)]
struct Consideration {
    topic: &'static str,
    text: String,
}

pub(super) fn write(s: &Summary, items: &dyn ItemSource, out: &mut dyn Write) -> io::Result<()> {
    let d = s.data;
    let c = &d.counts;
    let report = Report {
        schema: JSON_SCHEMA,
        version: JSON_VERSION,
        generated_at: &d.generated_at,
        tool_version: &d.tool_version,
        run: Run {
            record: &d.run,
            duration_seconds: s.elapsed.map(|d| d.as_secs_f64()),
            active_seconds: d.active_seconds,
        },
        counts: Counts {
            total: c.total,
            states: ItemState::ALL
                .into_iter()
                .map(|st| (st.as_str(), c.state(st)))
                .collect(),
            reasons: c.reasons.clone(),
            graph_requests: c.graph_requests,
            throttled_requests: c.throttled_requests,
            retries: c.retries,
            reconciled: c.reconciled,
        },
        reasons: &s.reasons,
        estimate: s.estimate,
        throughput: s.throughput,
        things_to_consider: things_to_consider(d.run.tenant_id.as_deref(), d.run.options.set_guest)
            .into_iter()
            .map(|(topic, text)| Consideration { topic, text })
            .collect(),
        pace: &d.pace,
        follow_ups: &d.follow_ups,
        redemption: d.redemption.as_ref().map(|r| Redemption {
            pending_acceptance: r.counts.pending_acceptance,
            accepted: r.counts.accepted,
            not_applied: r.counts.not_applied,
            untracked: r.counts.untracked,
            last_tracked_at: r.counts.last_tracked_at.as_deref(),
            timeline: &r.timeline,
            tracks: &r.tracks,
        }),
        retired: d.retired.as_ref(),
        option_history: d
            .option_history
            .iter()
            .map(|c| OptionStretch {
                at: &c.at,
                first_item_id: c.first_item_id,
                sent_before: c.sent_before,
                silent: c.options.silent,
                changes: &c.changes,
            })
            .collect(),
        back_out: BackOut {
            text: d.backout_sentence(),
            restored: d.backout.restored_total,
            rolled_back: d.backout.rolled_back_total,
        },
        items: StreamedItems(items),
    };
    let mut w = io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut w, &report).map_err(io::Error::from)?;
    w.write_all(b"\n")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{dry_run, live_run, XSS_NAME};
    use crate::config::ReportFormat;
    use crate::item::{ItemRecord, ItemState};
    use crate::report::{render, ReportData};
    use serde_json::Value;

    /// Keep in step with docs/report-json.md.
    const TOP_LEVEL: [&str; 17] = [
        "schema",
        "version",
        "generatedAt",
        "toolVersion",
        "run",
        "counts",
        "reasons",
        "estimate",
        "throughput",
        "thingsToConsider",
        "pace",
        "followUps",
        "redemption",
        "retired",
        "optionHistory",
        "backOut",
        "items",
    ];

    fn json_of(data: &ReportData) -> Value {
        serde_json::from_str(&render(ReportFormat::Json, data)).unwrap()
    }

    /// Every key of `object` is documented in docs/report-json.md (`what` names the object in
    /// the error: "run.").
    fn assert_documented(what: &str, object: &Value) {
        let doc = include_str!("../../docs/report-json.md");
        for key in object.as_object().unwrap().keys() {
            assert!(
                doc.contains(&format!("`{key}`")),
                "{what}{key} not documented"
            );
        }
    }

    /// A JSON field: its key and value.
    type Field = (&'static str, Value);

    /// `object` holds each field of `want` with the same value (number types included).
    fn assert_fields(object: &Value, want: &[Field]) {
        for (key, value) in want {
            assert_eq!(&object[*key], value, "{key}");
        }
    }

    #[test]
    fn documented_shape_and_version() {
        let doc = include_str!("../../docs/report-json.md");
        for data in [dry_run(), live_run()] {
            let v = json_of(&data);
            let obj = v.as_object().unwrap();
            for key in TOP_LEVEL {
                assert!(obj.contains_key(key), "missing {key}");
                assert!(doc.contains(&format!("`{key}`")), "{key} not documented");
            }
            assert_eq!(
                obj.len(),
                TOP_LEVEL.len(),
                "undocumented key in {:?}",
                obj.keys()
            );
            assert_eq!(v["schema"], "b2b-convert.report");
            assert_eq!(v["version"], 1);
            assert_eq!(v["run"]["id"], 1);
            assert_eq!(v["run"]["mode"], data.run.mode.as_str());
            for st in ItemState::ALL {
                assert_eq!(v["counts"]["states"][st.as_str()], data.counts.state(st));
            }
            assert_eq!(v["counts"]["total"], data.counts.total);
            let items: Vec<ItemRecord> = serde_json::from_value(v["items"].clone()).unwrap();
            assert_eq!(items, data.items);
            assert_documented("run.", &v["run"]);
            assert_documented("counts.", &v["counts"]);
        }
    }

    #[test]
    fn estimate_only_for_dry_run_throughput_only_for_live() {
        let estimate = [
            ("wouldConvert", 2.into()),
            ("usersToConvert", 2.into()),
            ("atConfiguredRateSeconds", 0.1.into()),
            ("boundBy", "configured_rate".into()),
        ];
        let throughput = [
            ("converted", 3.into()),
            ("durationSeconds", 100.0.into()),
            ("convertedPerSecond", 0.03.into()),
            ("graphRequests", 21.into()),
            ("requestsPerConverted", 7.0.into()),
            ("throttledRequests", 5.into()),
            ("retries", 7.into()),
            ("reconciled", 1.into()),
        ];
        // (run, the object it has not, the object it has and some of its fields)
        let cases: [(ReportData, &str, &str, &[Field]); 2] = [
            (dry_run(), "throughput", "estimate", &estimate),
            (live_run(), "estimate", "throughput", &throughput),
        ];
        for (data, absent, present, fields) in cases {
            let v = json_of(&data);
            assert!(v[absent].is_null(), "{absent}");
            assert_fields(&v[present], fields);
            assert_documented(&format!("{present}."), &v[present]);
        }
        let live = json_of(&live_run());
        let reasons = live["reasons"].as_array().unwrap();
        assert!(reasons.iter().any(
            |r| r["code"] == "mail_mismatch" && r["fixHint"].as_str().unwrap().contains("mail")
        ));
    }

    #[test]
    fn values_are_json_escaped_not_html_escaped() {
        let text = render(ReportFormat::Json, &dry_run());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["items"][0]["displayName"], XSS_NAME);
        assert!(v["items"][0]["snapshot"].is_object());
        let lower = text.to_lowercase();
        for secret in ["redeemurl", "access_token", "client_secret", "bearer"] {
            assert!(!lower.contains(secret), "{secret}");
        }
    }

    #[test]
    fn redemption_and_follow_ups_are_documented_objects() {
        let data = super::super::fixtures::tracked_live_run();
        let v = json_of(&data);
        let r = &v["redemption"];
        assert_eq!(r["pendingAcceptance"], 1_150);
        assert_eq!(r["accepted"], 2_345);
        assert_eq!(r["notApplied"], 7);
        assert_eq!(r["untracked"], 50);
        assert_eq!(r["lastTrackedAt"], "2025-03-04T09:00:05Z");
        assert_eq!(r["timeline"][1]["cumulative"], 2_345);
        assert_eq!(r["tracks"][0]["notApplied"], 1);
        let f = &v["followUps"];
        assert_eq!(
            (f["mailSet"].as_u64(), f["guestSet"].as_u64()),
            (Some(2), Some(3))
        );
        for obj in [r, f, &v["items"][0]] {
            assert_documented("", obj);
        }
        for key in [
            "externalUserState",
            "trackedAt",
            "mailSetAt",
            "guestSetAt",
            "invitedAt",
        ] {
            assert!(
                v["items"][0][key].is_null(),
                "{key} present, null without a value"
            );
        }
        let dry = json_of(&dry_run());
        assert!(dry["redemption"].is_null());
    }
}
