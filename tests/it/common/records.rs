//! What the emulator recorded: requests per route, invitations and PATCHes per user, and the
//! administrator's side door.

use std::collections::{BTreeMap, BTreeSet};

use b2b_convert::emulator::Emulator;
use b2b_convert::item::{ItemRecord, ItemState};
use serde_json::Value;

use super::user_ids;

/// Asserts `emu` was sent nothing beyond sign-in and the domains (a refusal before any work).
pub fn assert_only_sign_in_and_domains(emu: &Emulator) {
    for key in emu.stats()["requests"].as_object().unwrap().keys() {
        assert!(
            key == "GET /v1.0/domains" || key.ends_with("/oauth2/v2.0/token"),
            "the other tenant was sent {key}"
        );
    }
}

/// `{"<METHOD> <template>": {"<status>": n}}` summed over statuses.
pub fn requests_to(stats: &serde_json::Value, key: &str) -> u64 {
    stats["requests"][key]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

/// How many of `records` (the emulator's invitations, PATCHes, …) name each `userId`.
pub fn count_per_user<'a>(records: impl IntoIterator<Item = &'a Value>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r["userId"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Every invitation the emulator accepted, as (userId, count).
pub fn invitations_per_user(emu: &Emulator) -> BTreeMap<String, usize> {
    count_per_user(&emu.invitations())
}

/// The users whose `property` the emulator's PATCH log shows written.
pub fn patched_users(emu: &Emulator, property: &str) -> BTreeSet<String> {
    emu.patches()
        .iter()
        .filter(|p| p["property"] == property)
        .map(|p| p["userId"].as_str().unwrap().to_string())
        .collect()
}

/// Re-invitations (`resetRedemption`) per user, from the emulator's own log.
pub fn resets_per_user(emu: &Emulator) -> BTreeMap<String, usize> {
    let invitations = emu.invitations();
    count_per_user(invitations.iter().filter(|i| i["resetRedemption"] == true))
}

/// Exactly once, from the emulator's own log: no user was invited twice, and the users invited
/// are the converted items, none missing.
pub fn assert_each_converted_user_invited_once(emu: &Emulator, items: &[ItemRecord]) {
    let per_user = invitations_per_user(emu);
    let twice: Vec<_> = per_user.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "invited more than once: {twice:?}");
    let invited: BTreeSet<String> = per_user.into_keys().collect();
    assert_eq!(
        invited,
        user_ids(items, ItemState::Converted),
        "one invitation per converted user, none missing"
    );
}

/// Sets properties on a user as an administrator would (`POST /_emulator/users/{id}`).
pub async fn admin_set(emu: &Emulator, id: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/_emulator/users/{id}", emu.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "admin set {id}: {}",
        r.text().await.unwrap()
    );
}
