//! Change tracking and `GET /v1.0/users/delta`, as Graph serves it: a first round pages through
//! every user (`@odata.nextLink`) and ends with an opaque `@odata.deltaLink`; a later round from
//! that link returns only the users changed since, removed ones as `@removed`. Only changes to
//! the `$select`ed properties count, and the query options of the first request are carried in
//! the tokens (a request with a token may not add any). `$top` is ignored, as Graph ignores it
//! here; `users/delta()` and `users/microsoft.graph.delta()` are the same function.
//!
//! Every change to a user is one entry of a log (its version is its position + 1) naming the
//! properties it touched, so a page of a later round costs the changes it reads, not a scan of
//! the tenant.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::handlers::{project, USER_PROPS};
use super::routes::{Call, Ctx, Reply, Shared, State};
use crate::model::User;

/// Most users per page: Graph caps directory objects at 200, whatever `odata.maxpagesize` asks.
const MAX_PAGE: usize = 200;
/// Every tracked property (creation and removal touch them all).
pub const ALL: u32 = u32::MAX;
const TOKEN_PREFIX: &str = "emu-delta";

/// The change log of a tenant's users.
#[derive(Debug, Default)]
pub struct Changes {
    /// Entry `v - 1` is change `v`: the user's position and the properties it touched.
    log: Vec<(usize, u32)>,
    /// Per user position, the versions of its changes in order.
    per_user: Vec<Vec<u64>>,
}

impl Changes {
    pub fn new(users: usize) -> Changes {
        Changes {
            log: Vec::new(),
            per_user: vec![Vec::new(); users],
        }
    }

    /// The latest version: a round starting now reports changes after it.
    pub fn version(&self) -> u64 {
        self.log.len() as u64
    }

    pub fn record(&mut self, pos: usize, mask: u32) {
        if mask == 0 {
            return;
        }
        self.log.push((pos, mask));
        if self.per_user.len() <= pos {
            self.per_user.resize(pos + 1, Vec::new());
        }
        self.per_user[pos].push(self.log.len() as u64);
    }

    /// Whether `pos` has a change touching `mask` after `v`, up to `to`.
    fn later(&self, pos: usize, v: u64, to: u64, mask: u32) -> bool {
        self.per_user[pos]
            .iter()
            .filter(|&&w| w > v && w <= to)
            .any(|&w| self.log[(w - 1) as usize].1 & mask != 0)
    }
}

/// The bits of the tracked properties that differ between `a` and `b`.
pub fn changed_mask(a: &User, b: &User) -> u32 {
    let (va, vb) = (
        serde_json::to_value(a).unwrap_or(Value::Null),
        serde_json::to_value(b).unwrap_or(Value::Null),
    );
    USER_PROPS
        .iter()
        .enumerate()
        .take(32)
        .filter(|(_, p)| va.get(**p) != vb.get(**p))
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// What a token carries: the round's start and end versions, where the page starts, and the
/// `$select` as a property mask (`ALL` when none was given).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Token {
    /// `None` in the first round (every user), else the version the round reports changes after.
    from: Option<u64>,
    /// The version the round reports changes up to (the next round starts there).
    to: u64,
    /// First round: the next user position; later rounds: the last version read.
    cursor: u64,
    mask: u32,
}

impl Token {
    fn encode(&self, instance: &str) -> String {
        let from = self.from.map(|f| f.to_string()).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{TOKEN_PREFIX}:{instance}:{from}:{}:{}:{}",
            self.to, self.cursor, self.mask
        ))
    }

    fn decode(s: &str, instance: &str) -> Option<Token> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let parts: Vec<&str> = text.split(':').collect();
        let [TOKEN_PREFIX, inst, from, to, cursor, mask] = parts.as_slice() else {
            return None;
        };
        if *inst != instance {
            return None;
        }
        Some(Token {
            from: if from.is_empty() {
                None
            } else {
                Some(from.parse().ok()?)
            },
            to: to.parse().ok()?,
            cursor: cursor.parse().ok()?,
            mask: mask.parse().ok()?,
        })
    }

    fn select(&self) -> Vec<&'static str> {
        if self.mask == ALL {
            return USER_PROPS.to_vec();
        }
        USER_PROPS
            .iter()
            .enumerate()
            .filter(|(i, p)| **p == "id" || (*i < 32 && self.mask & (1 << i) != 0))
            .map(|(_, p)| *p)
            .collect()
    }
}

/// Whether the delta request selects properties (it then costs one resource unit less), from
/// its query or from its token.
pub fn selects(call: &Call) -> bool {
    call.q("select").is_some()
        || ["skiptoken", "deltatoken"].iter().any(|k| {
            call.q(k).is_some_and(|t| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.rsplit(':').next().and_then(|m| m.parse::<u32>().ok()))
                    .is_some_and(|m| m != ALL)
            })
        })
}

impl Shared {
    pub(super) fn users_delta(&self, st: &State, call: &Call, ctx: &Ctx) -> Reply {
        let skip = call.q("skiptoken");
        let delta = call.q("deltatoken");
        // Graph ignores `$top` on users delta (pages follow `Prefer: odata.maxpagesize`), and
        // SDKs send it.
        let others: Vec<&str> = call
            .query
            .iter()
            .map(|(k, _)| k.trim_start_matches('$'))
            .filter(|k| {
                !["skiptoken", "deltatoken", "top"]
                    .iter()
                    .any(|o| k.eq_ignore_ascii_case(o))
            })
            .collect();
        let page = page_size(call);
        let instance = &st.instance;
        let token = match (skip, delta) {
            (Some(_), Some(_)) => {
                return ctx.err(
                    400,
                    "Request_BadRequest",
                    "Only one of $skiptoken and $deltatoken may be given.",
                )
            }
            (None, Some(t)) if t.eq_ignore_ascii_case("latest") => {
                // Start tracking from now without reading the tenant.
                let mask = match select_mask(call, ctx) {
                    Ok(m) => m,
                    Err(r) => return r,
                };
                let next = Token {
                    from: Some(st.changes.version()),
                    to: st.changes.version(),
                    cursor: st.changes.version(),
                    mask,
                };
                return self.delta_page(st, call, next, Vec::new(), true);
            }
            (Some(t), None) | (None, Some(t)) => {
                if let Some(k) = others.first() {
                    return ctx.err(
                        400,
                        "Request_BadRequest",
                        format!("The query option '${k}' cannot be combined with a state token: the token already carries the first request's options."),
                    );
                }
                match Token::decode(t, instance) {
                    Some(tok) if tok.to <= st.changes.version() => {
                        if delta.is_some() {
                            // A new round: from the last one's end to now.
                            Token {
                                from: Some(tok.to),
                                to: st.changes.version(),
                                cursor: tok.to,
                                mask: tok.mask,
                            }
                        } else {
                            tok
                        }
                    }
                    _ => {
                        return ctx.err(
                            410,
                            "syncStateNotFound",
                            "The sync state is not found or has expired: start a new round of change tracking without a token.",
                        )
                    }
                }
            }
            (None, None) => {
                if let Some(k) = others.iter().find(|k| !k.eq_ignore_ascii_case("select")) {
                    return ctx.err(
                        400,
                        "Request_UnsupportedQuery",
                        format!("The query option '${k}' is not supported for delta queries on users; the page size follows the header 'Prefer: odata.maxpagesize'."),
                    );
                }
                let mask = match select_mask(call, ctx) {
                    Ok(m) => m,
                    Err(r) => return r,
                };
                Token {
                    from: None,
                    to: st.changes.version(),
                    cursor: 0,
                    mask,
                }
            }
        };
        let select = token.select();
        let mut value = Vec::new();
        let mut next = token;
        let done = match token.from {
            None => {
                // First round: every user present, by position.
                let users = &st.tenant.users;
                let mut pos = token.cursor as usize;
                while pos < users.len() && value.len() < page {
                    if !st.removed.contains(&pos) {
                        value.push(project(&users[pos], &select));
                    }
                    pos += 1;
                }
                next.cursor = pos as u64;
                pos >= users.len()
            }
            Some(_) => {
                let mut v = token.cursor;
                while v < token.to && value.len() < page {
                    v += 1;
                    let (pos, m) = st.changes.log[(v - 1) as usize];
                    if m & token.mask == 0 || st.changes.later(pos, v, token.to, token.mask) {
                        continue;
                    }
                    let u = &st.tenant.users[pos];
                    value.push(if st.removed.contains(&pos) {
                        json!({"id": u.id, "@removed": {"reason": "changed"}})
                    } else {
                        project(u, &select)
                    });
                }
                next.cursor = v;
                v >= token.to
            }
        };
        if done {
            next = Token {
                from: Some(token.to),
                to: token.to,
                cursor: token.to,
                mask: token.mask,
            };
        }
        let mut r = self.delta_page(st, call, next, value, done);
        if call
            .header("prefer")
            .is_some_and(|p| p.contains("odata.maxpagesize"))
        {
            r = r.with_header("Preference-Applied", format!("odata.maxpagesize={page}"));
        }
        r
    }

    fn delta_page(
        &self,
        st: &State,
        call: &Call,
        next: Token,
        value: Vec<Value>,
        done: bool,
    ) -> Reply {
        let mut body = Map::new();
        let context = if next.mask == ALL {
            "users".to_string()
        } else {
            format!("users({})", next.select().join(","))
        };
        body.insert(
            "@odata.context".into(),
            json!(format!(
                "https://graph.microsoft.com/v1.0/$metadata#{context}"
            )),
        );
        let (link, param) = if done {
            ("@odata.deltaLink", "$deltatoken")
        } else {
            ("@odata.nextLink", "$skiptoken")
        };
        body.insert(
            link.into(),
            json!(format!(
                "{}/v1.0/users/delta?{param}={}",
                self.link_base(call),
                next.encode(&st.instance)
            )),
        );
        body.insert("value".into(), Value::Array(value));
        Reply::json(200, Value::Object(body))
    }
}

fn page_size(call: &Call) -> usize {
    call.header("prefer")
        .and_then(|p| {
            p.split([',', ';'])
                .filter_map(|part| part.trim().strip_prefix("odata.maxpagesize="))
                .find_map(|n| n.trim().parse::<usize>().ok())
        })
        .filter(|&n| n > 0)
        .map_or(MAX_PAGE, |n| n.min(MAX_PAGE))
}

fn select_mask(call: &Call, ctx: &Ctx) -> Result<u32, Reply> {
    let Some(sel) = call.q("select") else {
        return Ok(ALL);
    };
    let mut mask = 1; // id
    for name in sel.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match USER_PROPS.iter().position(|p| p.eq_ignore_ascii_case(name)) {
            Some(i) if i < 32 => mask |= 1 << i,
            _ => {
                return Err(ctx.err(
                    400,
                    "BadRequest",
                    format!(
                        "Could not find a property named '{name}' on type 'microsoft.graph.user'."
                    ),
                ))
            }
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_emulator() {
        let t = Token {
            from: Some(7),
            to: 9,
            cursor: 8,
            mask: 5,
        };
        assert_eq!(Token::decode(&t.encode("abc"), "abc"), Some(t));
        assert_eq!(Token::decode(&t.encode("abc"), "xyz"), None);
        let first = Token { from: None, ..t };
        assert_eq!(Token::decode(&first.encode("abc"), "abc"), Some(first));
        assert_eq!(Token::decode("not-a-token", "abc"), None);
    }

    #[test]
    fn a_user_is_reported_once_per_round_at_its_last_relevant_change() {
        let mut c = Changes::new(3);
        c.record(0, 0b10); // v1
        c.record(1, 0b10); // v2
        c.record(0, 0b100); // v3
        c.record(0, 0b10); // v4
        assert_eq!(c.version(), 4);
        assert!(c.later(0, 1, 4, 0b10));
        assert!(!c.later(0, 4, 4, 0b10));
        assert!(!c.later(0, 1, 3, 0b10), "v4 is after the round's end");
        assert!(!c.later(0, 1, 4, 0b1000), "not a tracked property");
    }

    #[test]
    fn masks_name_the_changed_properties() {
        let a = User {
            id: "1".into(),
            mail: Some("a@b.com".into()),
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(changed_mask(&a, &b), 0);
        b.mail = Some("c@d.com".into());
        let mail = USER_PROPS.iter().position(|p| *p == "mail").unwrap();
        assert_eq!(changed_mask(&a, &b), 1 << mail);
    }
}
