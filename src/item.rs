//! The vocabulary of a run: item states, reason codes, run mode, options and the records the
//! queue stores. Every stage (source, queue, workers, report) speaks these types; the strings
//! they serialise to are the external contract of docs/usage.md and must not change.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::model::User;

/// Declares a fieldless enum whose every variant has one spelling on the wire (database, CSV,
/// JSON, reports), with `ALL` (the variants in order), `as_str`, `Display`, and a `FromStr` that
/// refuses any other spelling with the message `unknown` makes of it. The serde attributes
/// given with the enum must spell the variants the same way (a test checks each enum).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $wire:literal,)+
        }
        unknown = $unknown:expr;
    ) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($wire),+].len()] = [$($name::$variant),+];

            /// The spelling on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> ::std::result::Result<Self, String> {
                let unknown: fn(&str) -> String = $unknown;
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| unknown(s))
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// Where an item is in its life: `pending` → `in_flight` → one terminal state.
    #[derive(
        Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
    )]
    #[serde(rename_all = "snake_case")]
    pub enum ItemState {
        /// Where every item starts.
        #[default]
        Pending = "pending",
        /// Only while a request for the item may be on the wire.
        InFlight = "in_flight",
        Converted = "converted",
        WouldConvert = "would_convert",
        Skipped = "skipped",
        Blocked = "blocked",
        Failed = "failed",
    }
    unknown = |s| format!("unknown item state `{s}`");
}

wire_enum! {
    /// Where a run stands (`runs.status`). `RunRecord::status` keeps the stored text for display.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum RunStatus {
        /// Being worked, or died while being worked (the lease tells which).
        Running = "running",
        Finished = "finished",
        /// Ctrl-C, a crash-safe stop or an error: `resume` continues it.
        Interrupted = "interrupted",
        /// The tenant refused to go on (exit 4).
        Stopped = "stopped",
    }
    unknown = |s| format!("unknown run status {s:?}");
}

impl ItemState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, ItemState::Pending | ItemState::InFlight)
    }

    /// Terminal states that still make the run's exit code 3.
    pub fn needs_attention(self) -> bool {
        matches!(self, ItemState::Blocked | ItemState::Failed)
    }
}

wire_enum! {
    /// Why an item was blocked or skipped (docs/usage.md, "Reason codes").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Reason {
        BadInput = "bad_input",
        DuplicateUser = "duplicate_user",
        DuplicateEmail = "duplicate_email",
        UserNotFound = "user_not_found",
        AlreadyB2b = "already_b2b",
        MailMissing = "mail_missing",
        MailMismatch = "mail_mismatch",
        DomainVerified = "domain_verified",
        OnpremUpnPresent = "onprem_upn_present",
        ExchangeMailbox = "exchange_mailbox",
        MailConflict = "mail_conflict",
        AccountDisabled = "account_disabled",
        ConvertedBack = "converted_back",
        /// `apply` only: the user changed since the approved dry run.
        ChangedSincePlan = "changed_since_plan",
    }
    unknown = |s| format!("unknown reason code `{s}`");
}

impl Reason {
    /// The state an item with this reason ends in.
    pub fn state(self) -> ItemState {
        match self {
            Reason::AlreadyB2b => ItemState::Skipped,
            _ => ItemState::Blocked,
        }
    }

    /// Plain-language meaning, for reports and `status`.
    pub fn explanation(self) -> &'static str {
        match self {
            Reason::BadInput => "The input row could not be used (unparseable, no user key, or an invalid email address).",
            Reason::DuplicateUser => "The same user appears more than once in this run; only the first row is processed.",
            Reason::DuplicateEmail => "Two or more users would be invited with the same external email address.",
            Reason::UserNotFound => "No user with this object id or UPN exists in the tenant.",
            Reason::AlreadyB2b => "The account already signs in with an external identity (externalUserState set or creationType Invitation).",
            Reason::MailMissing => "The user has no mail address and the input gives no external email.",
            Reason::MailMismatch => "The external email is not the user's current mail property; Microsoft requires mail to be the external address before conversion.",
            Reason::DomainVerified => "The external email is in a verified domain of this tenant; a B2B address cannot be.",
            Reason::OnpremUpnPresent => "onPremisesUserPrincipalName is set (Entra Connect default rule); Microsoft blocks conversion of such users.",
            Reason::ExchangeMailbox => "The user has an enabled Exchange Online plan; mail cannot point outside the tenant while a mailbox exists.",
            Reason::MailConflict => "Another user of the tenant already holds this address in mail, otherMails or proxyAddresses.",
            Reason::AccountDisabled => "The account is disabled; converting it would invite someone who cannot sign in.",
            Reason::ConvertedBack => "The user was converted back from B2B to an internal member (externalUserConvertedOn is set); Graph refuses a new invitation of such a user with 412.",
            Reason::ChangedSincePlan => "The user changed since the approved dry run (the detail says what); what the board approved no longer describes this user.",
        }
    }

    /// What an administrator does to clear the reason.
    pub fn fix_hint(self) -> &'static str {
        match self {
            Reason::BadInput => "Correct the row in the input file (see the line number and message) and run it again.",
            Reason::DuplicateUser => "Remove the repeated row; nothing else is needed.",
            Reason::DuplicateEmail => "Give each user their own external address in the input or in their mail property.",
            Reason::UserNotFound => "Check the object id or UPN; the account may have been deleted or renamed.",
            Reason::AlreadyB2b => "Nothing to do. To re-send, use the portal's reset redemption on that user.",
            Reason::MailMissing => "Set the user's mail property to the partner's external address, or give externalEmail in the input.",
            Reason::MailMismatch => "Set the user's mail property to the external address first (for cloud-only users the older guidance used otherMails; the newer requires mail).",
            Reason::DomainVerified => "Set mail to the partner's own address at their domain, not an address in one of your verified domains.",
            Reason::OnpremUpnPresent => "Change the Entra Connect sync rule so onPremisesUserPrincipalName is not written, sync, then re-run.",
            Reason::ExchangeMailbox => "Remove the mailbox or change mail in the Exchange admin center first, then re-run.",
            Reason::MailConflict => "Remove the address from the other user's mail, otherMails or proxyAddresses, or choose another external address.",
            Reason::AccountDisabled => "Enable the account if the partner still needs access, or leave it out of the migration.",
            Reason::ConvertedBack => "Leave the user out of the migration: Microsoft offers no second conversion of a user converted back. If the partner needs B2B access, invite their external address as a new guest.",
            Reason::ChangedSincePlan => "Check the change; if the user should still be converted, include them in a new dry run and have it approved.",
        }
    }
}

wire_enum! {
    /// Dry run validates only; live sends invitations.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum RunMode {
        DryRun = "dry_run",
        Live = "live",
    }
    unknown = |s| format!("unknown run mode `{s}`");
}

/// Where a run's users come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    Csv { path: String },
    Filter { filter: String },
    Group { id: String, transitive: bool },
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Csv { path } => write!(f, "csv:{path}"),
            SourceSpec::Filter { filter } => write!(f, "filter:{filter}"),
            SourceSpec::Group { id, transitive } => {
                write!(
                    f,
                    "group:{id}{}",
                    if *transitive { " (transitive)" } else { "" }
                )
            }
        }
    }
}

pub use crate::config::DEFAULT_REDIRECT_URL;

/// Options that change what a run does, stored with the run so `resume` behaves the same.
/// Holds no secret: credentials always come from the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOptions {
    pub silent: bool,
    pub redirect_url: String,
    pub message_language: Option<String>,
    /// The text of `--message-file`, read once at `run` so a resume sends the same body.
    pub message_body: Option<String>,
    pub cc: Option<String>,
    /// Requests per second ceiling.
    pub rate: f64,
    /// The pace under pressure (`x-ms-throttle-limit-percentage`); `None`: the default, at
    /// most `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_rate: Option<f64>,
    /// Resource units per 10 s for reads (`--read-budget`); `None`: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_budget: Option<f64>,
    /// Dry runs always look users up by key, never by reading the tenant in pages (hidden
    /// `--read-by-key`: tests and benchmarks of the look-ups).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_by_key: bool,
    pub concurrency: usize,
    pub max_attempts: u32,
    /// Retries of one HTTP request inside the Graph client; separate from `max_attempts`.
    #[serde(default = "default_http_retries")]
    pub http_retries: u32,
    /// `--limit` of the invocation that last worked the run: it counts users of that
    /// invocation only, so `resume` never inherits it (docs/usage.md: "`--limit N` counts the
    /// users of one invocation").
    pub limit: Option<u64>,
    /// `--only`: how many users the invocation that last worked the run named. Like `limit` it
    /// belongs to one invocation; kept so the option history can mark that stretch a pilot.
    pub only: Option<u64>,
    /// `--set-mail`: PATCH a fixable user's `mail` to the input's externalEmail before inviting.
    #[serde(default)]
    pub set_mail: bool,
    /// `--set-guest`: PATCH `userType` to `Guest` after the invitation is accepted.
    #[serde(default)]
    pub set_guest: bool,
    /// `--keep-redeem-links`: store each invitation's redeem URL for `export-links`. Off, no
    /// redeem URL is stored anywhere (runs stored before the flag existed read as off).
    #[serde(default)]
    pub keep_redeem_links: bool,
}

fn default_http_retries() -> u32 {
    crate::config::DEFAULT_HTTP_RETRIES
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            silent: false,
            redirect_url: DEFAULT_REDIRECT_URL.to_string(),
            message_language: None,
            message_body: None,
            cc: None,
            rate: crate::config::DEFAULT_RATE,
            settle_rate: None,
            read_budget: None,
            read_by_key: false,
            concurrency: crate::config::DEFAULT_CONCURRENCY,
            max_attempts: crate::config::DEFAULT_MAX_ATTEMPTS,
            http_retries: crate::config::DEFAULT_HTTP_RETRIES,
            limit: None,
            only: None,
            set_mail: false,
            set_guest: false,
            keep_redeem_links: false,
        }
    }
}

/// Per-row overrides from the CSV columns of the same names.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    pub send_invitation_message: Option<bool>,
    pub invite_redirect_url: Option<String>,
    pub message_language: Option<String>,
    pub customized_message_body: Option<String>,
    pub cc_recipient: Option<String>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

/// How a source row names its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "value", rename_all = "camelCase")]
pub enum UserKey {
    Id(String),
    UserPrincipalName(String),
}

impl UserKey {
    pub fn value(&self) -> &str {
        match self {
            UserKey::Id(v) | UserKey::UserPrincipalName(v) => v,
        }
    }

    /// Case-folded form used to spot the same user twice in one run.
    pub fn normalized(&self) -> String {
        match self {
            UserKey::Id(v) => format!("id:{}", v.to_ascii_lowercase()),
            UserKey::UserPrincipalName(v) => format!("upn:{}", v.to_lowercase()),
        }
    }
}

/// One row handed by a source to the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// 1-based line of the CSV file (header is line 1); `None` for Graph-query sources.
    pub line: Option<u64>,
    /// `None` only for bad rows that name no user.
    pub key: Option<UserKey>,
    /// Empty means "use the user's current mail".
    pub external_email: Option<String>,
    pub overrides: Overrides,
    /// Set when the row is unusable: the item is stored `blocked` / `bad_input` with this text.
    pub bad_input: Option<String>,
    /// The user as a Graph-query source already read it (saves a second GET).
    pub snapshot: Option<User>,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub id: i64,
    pub source: SourceSpec,
    pub mode: RunMode,
    pub options: RunOptions,
    pub tenant_id: Option<String>,
    pub graph_url: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `running`, `finished`, `interrupted` (Ctrl-C), `stopped` (tenant refused, exit 4).
    pub status: String,
    pub ingest_complete: bool,
    /// The tenant the run belongs to; `None`: it could not be known (a run made before runs
    /// recorded their tenant, with no tenant id among its stored options).
    pub tenant: Option<TenantIdentity>,
    /// `apply`: the dry run this live run executes.
    pub plan_run_id: Option<i64>,
}

/// Which tenant a run belongs to: the token's `tid` and the names an administrator knows it by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantIdentity {
    /// The directory id (`tid` claim), lower case.
    pub id: String,
    /// The `*.onmicrosoft.com` domain every tenant has.
    pub initial_domain: Option<String>,
    pub default_domain: Option<String>,
}

impl TenantIdentity {
    /// The tenant as people name it: its initial domain, else its default one, else its id.
    pub fn name(&self) -> &str {
        self.initial_domain
            .as_deref()
            .or(self.default_domain.as_deref())
            .unwrap_or(&self.id)
    }
}

impl fmt::Display for TenantIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name() == self.id {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{} ({})", self.name(), self.id)
        }
    }
}

/// A stored item: one user of one run, with everything the report needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemRecord {
    pub id: i64,
    pub run_id: i64,
    pub line: Option<u64>,
    pub key: Option<UserKey>,
    /// Object id once resolved.
    pub user_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub user_type: Option<String>,
    /// The address the invitation goes (or would go) to.
    pub external_email: Option<String>,
    pub overrides: Overrides,
    pub state: ItemState,
    pub reason: Option<Reason>,
    /// What exactly was wrong (bad_input message, which verified domain, …).
    pub detail: Option<String>,
    pub attempts: u32,
    /// The user as read before any change: the record of a one-way conversion.
    pub snapshot: Option<User>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// `request-id` of the last Graph answer about this item, for Microsoft support.
    pub request_id: Option<String>,
    pub client_request_id: Option<String>,
    pub invitation_id: Option<String>,
    pub invitation_status: Option<String>,
    /// Converted by reconciliation: the outcome was unknown and a re-read showed it took effect.
    pub reconciled: bool,
    pub updated_at: String,
}

/// One Graph request as logged in the append-only events table. Never holds a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub run_id: i64,
    pub item_id: Option<i64>,
    pub method: String,
    /// Path with query, never a full URL with credentials.
    pub path: String,
    /// `None` when no answer arrived (connection lost, timeout).
    pub status: Option<u16>,
    pub client_request_id: String,
    pub request_id: Option<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub at: String,
}

/// Aggregates for `status` and reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunCounts {
    pub total: u64,
    pub states: std::collections::BTreeMap<String, u64>,
    pub reasons: std::collections::BTreeMap<String, u64>,
    pub graph_requests: u64,
    pub throttled_requests: u64,
    pub retries: u64,
    pub reconciled: u64,
}

impl RunCounts {
    pub fn state(&self, s: ItemState) -> u64 {
        self.states.get(s.as_str()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_reason_strings_round_trip() {
        for s in ItemState::ALL {
            assert_eq!(s.as_str().parse::<ItemState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for r in RunStatus::ALL {
            assert_eq!(r.as_str().parse::<RunStatus>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for m in RunMode::ALL {
            assert_eq!(m.as_str().parse::<RunMode>().unwrap(), m);
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        assert_eq!(
            "bogus".parse::<ItemState>().unwrap_err(),
            "unknown item state `bogus`"
        );
        assert_eq!(
            "bogus".parse::<RunStatus>().unwrap_err(),
            "unknown run status \"bogus\""
        );
    }

    /// Options stored by an older version lack the later ones: each reads as unset.
    #[test]
    fn options_stored_before_later_flags_read_as_unset() {
        let stored = r#"{"silent":true,"redirectUrl":"https://x.example","rate":20.0,
                         "concurrency":8,"maxAttempts":6}"#;
        let o: RunOptions = serde_json::from_str(stored).unwrap();
        assert!(o.silent);
        assert_eq!((o.limit, o.only, o.settle_rate), (None, None, None));
        assert_eq!(o.http_retries, crate::config::DEFAULT_HTTP_RETRIES);
        assert!(!o.set_mail && !o.set_guest && !o.keep_redeem_links && !o.read_by_key);
    }

    #[test]
    fn only_already_b2b_is_skipped() {
        for r in Reason::ALL {
            let expected = if r == Reason::AlreadyB2b {
                ItemState::Skipped
            } else {
                ItemState::Blocked
            };
            assert_eq!(r.state(), expected, "{r}");
        }
    }
}

/// One minute of a live run's pace.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaceMinute {
    /// RFC 3339 start of the minute (UTC), e.g. `2025-03-01T10:05:00Z`.
    pub minute: String,
    pub converted: u64,
    pub throttled: u64,
}

/// Users of the run whose follow-up writes were planned and done.
///
/// Live run: `*_planned` counts the users whose step plan (`item_steps`) asked for the write,
/// `*_set` those whose write is done. Dry run: `*_planned` counts the users that would convert
/// with that step (nothing is set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowUpCounts {
    pub mail_planned: u64,
    pub mail_set: u64,
    pub guest_planned: u64,
    pub guest_set: u64,
}

/// Per-item facts beside the item record that the CSV and JSON reports carry: redemption as the
/// last `track` saw it and when each follow-up write was done. Never a redeem URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemExtras {
    /// When the item last became `converted`.
    pub invited_at: Option<String>,
    pub external_user_state: Option<String>,
    pub external_user_state_changed_at: Option<String>,
    pub tracked_at: Option<String>,
    /// When `--set-mail` set the user's mail (RFC 3339).
    pub mail_set_at: Option<String>,
    /// When `--set-guest` set the user's userType to Guest (RFC 3339).
    pub guest_set_at: Option<String>,
}

impl FollowUpCounts {
    /// Extra writes the planned steps cost on Graph's shared write bucket.
    pub fn extra_writes(&self) -> u64 {
        self.mail_planned + self.guest_planned
    }
}
