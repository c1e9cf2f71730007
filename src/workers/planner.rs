//! The exactly-once planner: pure decisions, no I/O.
//!
//! Every decision about one item in any pass over users — which step to take next, what an
//! answer means, what a re-read of the user proves, when the attempts at a step are spent, what
//! to do at resume with an item a crash left `in_flight` — is made here from plain data, and the
//! one executor (`workers/executor.rs`) only carries out the [`Action`]s ("compute operations,
//! then execute", as atuin's sync does). The state those decisions need (the step checkpoint,
//! the attempts at the current step, whether an earlier answer was lost, the last answer) lives
//! in [`ItemPlan`], so nothing outside this module can drift from it. Each branch is a row of an
//! exhaustive table test over every combination of inputs.
//!
//! A pass declares its steps in order ([`Pass::steps`]); adding a pass (retire: set a password,
//! then revoke sessions) is declaring its [`Step`]s here and their requests and re-reads in the
//! executor's `PassOps`.

/// One write the tool makes for an item, in the order its pass makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// `PATCH /users/{id}` `{"mail": …}` (`--set-mail`), before the invitation.
    SetMail,
    /// `POST /invitations` with `invitedUser.id`.
    Invite,
    /// `PATCH /users/{id}` `{"userType": "Guest"}` (`--set-guest`), after the invitation.
    SetGuest,
    /// `resend`: `POST /invitations` with `resetRedemption: true`.
    Reinvite,
    /// `retire`: `PATCH /users/{id}` with a random `passwordProfile`, so the internal password
    /// stops working.
    SetPassword,
    /// `retire`: `POST /users/{id}/revokeSignInSessions`, after the password is set.
    RevokeSessions,
    /// `restore`: `PATCH /users/{id}` `{"userType": <snapshot's>}`, undoing `--set-guest`. The
    /// last write of the convert pass is undone first.
    RestoreUserType,
    /// `restore`: `PATCH /users/{id}` `{"mail": <snapshot's>}`, undoing `--set-mail`.
    RestoreMail,
    /// `rollback`: beta `POST /users/{id}/convertExternalToInternalMemberUser`.
    ConvertBack,
}

/// Every step, for tables that must cover them all.
pub const ALL_STEPS: [Step; 9] = [
    Step::SetMail,
    Step::Invite,
    Step::SetGuest,
    Step::Reinvite,
    Step::SetPassword,
    Step::RevokeSessions,
    Step::RestoreUserType,
    Step::RestoreMail,
    Step::ConvertBack,
];

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::SetMail => "set_mail",
            Step::Invite => "invite",
            Step::SetGuest => "set_guest",
            Step::Reinvite => "reinvite",
            Step::SetPassword => "set_password",
            Step::RevokeSessions => "revoke_sessions",
            Step::RestoreUserType => "restore_user_type",
            Step::RestoreMail => "restore_mail",
            Step::ConvertBack => "convert_back",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        ALL_STEPS.into_iter().find(|step| step.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A pass over users: the steps it may take, in the order it takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// `run` / `resume` / `retry`: (set mail) → invite → (set userType).
    Convert,
    /// `resend`: one re-invitation with `resetRedemption`.
    Resend,
    /// `retire`: set a random password, then revoke the sign-in sessions.
    Retire,
    /// `restore`: userType back, then mail back (the reverse of the convert pass's order).
    Restore,
    /// `rollback`: one conversion back to an internal member.
    Rollback,
}

impl Pass {
    pub const fn steps(self) -> &'static [Step] {
        match self {
            Pass::Convert => &[Step::SetMail, Step::Invite, Step::SetGuest],
            Pass::Resend => &[Step::Reinvite],
            Pass::Retire => &[Step::SetPassword, Step::RevokeSessions],
            Pass::Restore => &[Step::RestoreUserType, Step::RestoreMail],
            Pass::Rollback => &[Step::ConvertBack],
        }
    }
}

/// Which of its pass's steps an item needs and which are done, as checkpointed in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pass: Pass,
    needed: u16,
    done: u16,
}

impl Checkpoint {
    /// An item of `pass` that needs `needed` (steps outside the pass are ignored), none done.
    pub fn new(pass: Pass, needed: &[Step]) -> Checkpoint {
        let needed = needed
            .iter()
            .filter(|s| pass.steps().contains(s))
            .fold(0, |bits, s| bits | s.bit());
        Checkpoint {
            pass,
            needed,
            done: 0,
        }
    }

    /// The convert pass's checkpoint as the queue stores it (the invitation is always needed).
    pub fn convert(
        needs_mail: bool,
        mail_set: bool,
        invited: bool,
        needs_guest: bool,
        guest_set: bool,
    ) -> Checkpoint {
        let mut needed = vec![Step::Invite];
        needed.extend(needs_mail.then_some(Step::SetMail));
        needed.extend(needs_guest.then_some(Step::SetGuest));
        let mut cp = Checkpoint::new(Pass::Convert, &needed);
        for (done, step) in [
            (mail_set, Step::SetMail),
            (invited, Step::Invite),
            (guest_set, Step::SetGuest),
        ] {
            if done {
                cp.mark_done(step);
            }
        }
        cp
    }

    /// The restore pass's checkpoint as the queue stores it: which of the tool's follow-up
    /// writes to undo, and which are undone already.
    pub fn restore(
        needs_user_type: bool,
        user_type_done: bool,
        needs_mail: bool,
        mail_done: bool,
    ) -> Checkpoint {
        let mut needed = Vec::new();
        needed.extend(needs_user_type.then_some(Step::RestoreUserType));
        needed.extend(needs_mail.then_some(Step::RestoreMail));
        let mut cp = Checkpoint::new(Pass::Restore, &needed);
        for (done, step) in [
            (user_type_done, Step::RestoreUserType),
            (mail_done, Step::RestoreMail),
        ] {
            if done {
                cp.mark_done(step);
            }
        }
        cp
    }

    pub fn pass(&self) -> Pass {
        self.pass
    }

    pub fn needs(&self, step: Step) -> bool {
        self.needed & step.bit() != 0
    }

    pub fn is_done(&self, step: Step) -> bool {
        self.done & step.bit() != 0
    }

    pub fn mark_done(&mut self, step: Step) {
        self.done |= step.bit();
    }
}

/// What the answer to one request was, reduced to what the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 201 / 204: Graph carried it out.
    Accepted,
    /// A permanent refusal of this request (4xx with Graph's code and message).
    Refused { code: String, message: String },
    /// A refusal that says the step is done already (400 "The user is already a B2B
    /// collaboration user" to an invitation): an earlier request took effect after the tool
    /// last read the user. Only a re-read can tell, and it decides.
    AlreadyDone { code: String, message: String },
    /// The tenant refuses to go on (invitations blocked, consent revoked): the whole run stops.
    TenantRefused { message: String },
    /// The request may have reached Graph, the answer is unknown (lost answer, timeout, 5xx).
    Unknown { code: String, message: String },
    /// The request never left the process; the client already retried for a bounded stretch.
    NotSent { message: String },
}

/// Graph's words for "this user is converted already", in the refusal of an invitation.
const ALREADY_B2B: &str = "already a B2B collaboration user";

/// Graph's words for "this user is internal already", in the refusal of a conversion back.
const ALREADY_INTERNAL: &str = "already internal";

/// Sorts a 4xx refusal of `step`: one that says the step is done already is [`Answer::AlreadyDone`].
pub fn refusal(step: Step, code: &str, message: &str) -> Answer {
    let (code, message) = (code.to_string(), message.to_string());
    let done_already = match step {
        Step::Invite | Step::Reinvite => message.contains(ALREADY_B2B),
        Step::ConvertBack => message.contains(ALREADY_INTERNAL),
        _ => false,
    };
    if done_already {
        Answer::AlreadyDone { code, message }
    } else {
        Answer::Refused { code, message }
    }
}

/// What reading the user back says about a step whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reread {
    /// The step took effect (the invitation's `externalUserState`, the new `mail`, `Guest`).
    Done,
    /// The user is unchanged (or gone): the step did not take effect.
    NotDone,
    /// Nothing is left to do for this user (a resend's user redeemed meanwhile, or is gone).
    Moot { why: String },
    /// The user shows neither that the step took effect nor that sending it again is safe (a
    /// change time too coarse to tell): never send blind; the item ends with this.
    Unprovable { code: String, message: String },
    /// The tenant refused the read: stop the run.
    TenantRefused { message: String },
    /// Graph cannot be reached at all.
    NotSent { message: String },
    /// Any other failure to read: the outcome stays unknown.
    Unreadable { message: String },
}

/// Why a run stops before its queue is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Exit 4, resumable.
    TenantRefused(String),
    /// Graph unreachable after the client's bounded retries: exit 1, resumable.
    Unreachable(String),
    /// A re-read at resume failed for another reason: exit 1, resumable.
    Error(String),
    /// The lease refused a write: another process took the run over while this one was
    /// frozen. Exit 1 without writing anything more.
    LeaseLost,
}

/// Where a stopped item is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Nothing could have taken effect: the next pass takes it again.
    Pending,
    /// The outcome is unknown: the next `resume` re-reads the user first.
    InFlight,
}

/// The next thing the executor does for an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Checkpoint `in_flight` for the step, then send its request.
    Send(Step),
    /// Read the user back to learn whether the step took effect.
    Reread(Step),
    /// Checkpoint the step as done, then ask [`ItemPlan::step_done`] for the following step.
    StepDone { step: Step, reconciled: bool },
    /// Every step asked for is done: the item ends done (`converted`, `sent`).
    RecordDone,
    /// The step certainly did not take effect: back to `pending`, wait `retry::delay(attempts)`,
    /// send again.
    Retry(Step),
    /// The step certainly did not take effect and the pass is stopping: back to `pending`.
    BackToPending,
    /// The item ends `failed` with this code and message.
    Fail { code: String, message: String },
    /// Nothing is left to do for the item: it ends `skipped`.
    Skip { why: String },
    /// The outcome is unknown and the user cannot be read now: leave it for `resume`.
    LeaveInFlight,
    /// Stop the whole run, leaving this item as said.
    StopRun { reason: StopReason, item: Leave },
}

/// What the planner knows about the attempts at the current step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Requests for this step of this item that may have reached Graph, this one included.
    pub made: u32,
    /// `--max-attempts`.
    pub max: u32,
    /// An earlier answer for this step was lost: a refusal now may mean "already done".
    pub unknown_before: bool,
    /// Ctrl-C or another item's stop: finish, do not start anything new.
    pub stopping: bool,
}

/// Which steps a user that validation lets through needs: the mail step when validation planned
/// a mail change (`--set-mail`), the userType step with `--set-guest` unless already `Guest`.
pub fn plan(mail_change: bool, user_type: Option<&str>, set_guest: bool) -> Checkpoint {
    let needs_guest =
        set_guest && !user_type.is_some_and(|t| t.trim().eq_ignore_ascii_case("Guest"));
    Checkpoint::convert(mail_change, false, false, needs_guest, false)
}

/// The first step the item needs that is not done, or `RecordDone` when none is left. A step
/// whose successor is done already is past (an item invited before its mail step was asked for
/// is never PATCHed back).
pub fn next(cp: &Checkpoint) -> Action {
    let steps = cp.pass.steps();
    steps
        .iter()
        .enumerate()
        .find(|&(i, &s)| {
            cp.needs(s) && !cp.is_done(s) && !steps[i + 1..].iter().any(|&l| cp.is_done(l))
        })
        .map_or(Action::RecordDone, |(_, &s)| Action::Send(s))
}

/// Whether an answer charges an attempt: only requests that may have reached Graph count.
pub fn charges_attempt(answer: &Answer) -> bool {
    !matches!(answer, Answer::NotSent { .. })
}

/// What to do after the answer to `step`'s request.
pub fn after_answer(step: Step, answer: &Answer, attempts: &Attempts) -> Action {
    match answer {
        Answer::Accepted => Action::StepDone {
            step,
            reconciled: false,
        },
        // After a lost answer a refusal may be Graph saying "done already": the user decides.
        Answer::Refused { .. } if attempts.unknown_before => Action::Reread(step),
        Answer::Refused { code, message } => Action::Fail {
            code: code.clone(),
            message: message.clone(),
        },
        Answer::AlreadyDone { .. } => Action::Reread(step),
        // Refused before it was carried out: the user was not touched.
        Answer::TenantRefused { message } => Action::StopRun {
            reason: StopReason::TenantRefused(message.clone()),
            item: Leave::Pending,
        },
        Answer::Unknown { .. } => Action::Reread(step),
        Answer::NotSent { message } => Action::StopRun {
            reason: StopReason::Unreachable(message.clone()),
            item: Leave::Pending,
        },
    }
}

/// What to do after re-reading the user while working an item. `last` is the answer that led to
/// the re-read (an `Unknown`, an `AlreadyDone`, or a `Refused` after an earlier `Unknown`).
pub fn after_reread(step: Step, reread: &Reread, last: &Answer, attempts: &Attempts) -> Action {
    match reread {
        Reread::Done => Action::StepDone {
            step,
            reconciled: true,
        },
        Reread::NotDone => match last {
            // A refusal, and the user shows the step never took effect: the refusal stands.
            Answer::Refused { code, message } | Answer::AlreadyDone { code, message } => {
                Action::Fail {
                    code: code.clone(),
                    message: message.clone(),
                }
            }
            _ if attempts.stopping => Action::BackToPending,
            _ if attempts.made < attempts.max.max(1) => Action::Retry(step),
            _ => {
                let (code, message) = match last {
                    Answer::Unknown { code, message } => (code.as_str(), message.as_str()),
                    _ => ("UnknownOutcome", "the outcome of the request is unknown"),
                };
                Action::Fail {
                    code: code.to_string(),
                    message: format!("{message} (after {} attempts)", attempts.made),
                }
            }
        },
        Reread::Moot { why } => Action::Skip { why: why.clone() },
        Reread::Unprovable { code, message } => Action::Fail {
            code: code.clone(),
            message: message.clone(),
        },
        // The step may have taken effect: never resend blind.
        Reread::TenantRefused { message } => Action::StopRun {
            reason: StopReason::TenantRefused(message.clone()),
            item: Leave::InFlight,
        },
        Reread::NotSent { message } => Action::StopRun {
            reason: StopReason::Unreachable(message.clone()),
            item: Leave::InFlight,
        },
        Reread::Unreadable { .. } => Action::LeaveInFlight,
    }
}

/// At resume, for an item a previous process left `in_flight` at `step`: `None` when the item
/// has no resolved user (nothing can have been sent for it). Never sends anything.
pub fn at_resume(step: Step, reread: Option<&Reread>) -> Action {
    match reread {
        None | Some(Reread::NotDone) => Action::BackToPending,
        Some(Reread::Done) => Action::StepDone {
            step,
            reconciled: true,
        },
        Some(Reread::Moot { why }) => Action::Skip { why: why.clone() },
        Some(Reread::Unprovable { code, message }) => Action::Fail {
            code: code.clone(),
            message: message.clone(),
        },
        Some(Reread::TenantRefused { message }) => Action::StopRun {
            reason: StopReason::TenantRefused(message.clone()),
            item: Leave::InFlight,
        },
        Some(Reread::NotSent { message }) => Action::StopRun {
            reason: StopReason::Unreachable(message.clone()),
            item: Leave::InFlight,
        },
        Some(Reread::Unreadable { message }) => Action::StopRun {
            reason: StopReason::Error(message.clone()),
            item: Leave::InFlight,
        },
    }
}

/// After reconciling a step at resume: the item goes on with its next step in this pass's
/// queue, or ends done when nothing is left.
pub fn after_resume_step(cp: &Checkpoint) -> Action {
    match next(cp) {
        Action::RecordDone => Action::RecordDone,
        _ => Action::BackToPending,
    }
}

/// Everything the planner decides on for one item while a process works it: the checkpoint, the
/// attempts at the current step (each step has its own `--max-attempts`: a user invited after
/// two lost answers still gets every attempt at its userType step), whether an earlier answer at
/// this step was lost, and the last answer. The executor feeds it what happened and does what it
/// returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemPlan {
    checkpoint: Checkpoint,
    attempts: Attempts,
    last: Answer,
    /// Re-reads of the current step that failed to read the user (each already retried by the
    /// client): a passing fault must not leave the item `in_flight` at once.
    unreadable: u32,
}

/// How many times a re-read that could not read the user is tried again, while the run goes
/// on, before the item is left `in_flight` for `resume`.
pub const UNREADABLE_REREADS: u32 = 3;

impl ItemPlan {
    /// `made` is what the queue has charged to the item's current step so far.
    pub fn new(checkpoint: Checkpoint, made: u32, max_attempts: u32) -> ItemPlan {
        ItemPlan {
            checkpoint,
            attempts: Attempts {
                made,
                max: max_attempts.max(1),
                ..Attempts::default()
            },
            last: Answer::Accepted,
            unreadable: 0,
        }
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Attempts at the current step that may have reached Graph.
    pub fn attempts_made(&self) -> u32 {
        self.attempts.made
    }

    /// The first action for the item.
    pub fn start(&self) -> Action {
        next(&self.checkpoint)
    }

    /// `step`'s request was answered (or not sent). The executor charges the attempt in the
    /// queue when [`charges_attempt`] says so.
    pub fn answered(&mut self, step: Step, answer: Answer, stopping: bool) -> Action {
        if charges_attempt(&answer) {
            self.attempts.made += 1;
        }
        self.attempts.stopping = stopping;
        let action = after_answer(step, &answer, &self.attempts);
        self.attempts.unknown_before |= matches!(answer, Answer::Unknown { .. });
        self.last = answer;
        action
    }

    /// The user was read back after an unknown outcome or a "done already" refusal of `step`.
    pub fn reread(&mut self, step: Step, reread: &Reread, stopping: bool) -> Action {
        self.attempts.stopping = stopping;
        if matches!(reread, Reread::Unreadable { .. })
            && !stopping
            && self.unreadable < UNREADABLE_REREADS
        {
            // Never a resend: only the read is tried again, the outcome still unknown.
            self.unreadable += 1;
            return Action::Reread(step);
        }
        after_reread(step, reread, &self.last, &self.attempts)
    }

    /// `step` is checkpointed done: the next step starts with no attempts made and a fresh view
    /// (an earlier step's lost answer says nothing about this one's refusal).
    pub fn step_done(&mut self, step: Step) -> Action {
        self.checkpoint.mark_done(step);
        self.attempts.made = 0;
        self.attempts.unknown_before = false;
        self.last = Answer::Accepted;
        self.unreadable = 0;
        next(&self.checkpoint)
    }

    /// At resume, the user was read back for `step`, left in flight by an earlier process.
    pub fn resumed(&self, step: Step, reread: Option<&Reread>) -> Action {
        at_resume(step, reread)
    }

    /// At resume, the item was left between two steps (nothing on the wire): what is left.
    pub fn between_steps(&self) -> Action {
        after_resume_step(&self.checkpoint)
    }

    /// At resume, `step` was reconciled done: what is left of the item.
    pub fn resumed_step_done(&mut self, step: Step) -> Action {
        self.checkpoint.mark_done(step);
        self.attempts.made = 0;
        after_resume_step(&self.checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Answer {
        Answer::Refused {
            code: "BadRequest".into(),
            message: "nope".into(),
        }
    }
    fn already() -> Answer {
        Answer::AlreadyDone {
            code: "BadRequest".into(),
            message: "The user is already a B2B collaboration user".into(),
        }
    }
    fn unknown() -> Answer {
        Answer::Unknown {
            code: "UnknownOutcome".into(),
            message: "answer lost".into(),
        }
    }
    fn tenant() -> Answer {
        Answer::TenantRefused {
            message: "blocked".into(),
        }
    }
    fn not_sent() -> Answer {
        Answer::NotSent {
            message: "http://127.0.0.1:9 refused".into(),
        }
    }
    fn fail(code: &str, message: &str) -> Action {
        Action::Fail {
            code: code.into(),
            message: message.into(),
        }
    }
    fn stop(reason: StopReason, item: Leave) -> Action {
        Action::StopRun { reason, item }
    }
    fn done(step: Step, reconciled: bool) -> Action {
        Action::StepDone { step, reconciled }
    }
    fn tries(made: u32, unknown_before: bool, stopping: bool) -> Attempts {
        Attempts {
            made,
            max: 3,
            unknown_before,
            stopping,
        }
    }
    /// A wildcard in a decision table: `None` matches any value.
    fn fits(pattern: Option<bool>, value: bool) -> bool {
        pattern.is_none_or(|p| p == value)
    }
    /// The one row of a decision table that `matches` the case, asserting there is exactly one.
    #[track_caller]
    fn the_row<'a, R>(rows: &'a [R], case: &str, matches: impl Fn(&R) -> bool) -> &'a R {
        let matching: Vec<&R> = rows.iter().filter(|r| matches(r)).collect();
        assert_eq!(matching.len(), 1, "{case} matches {} rows", matching.len());
        matching[0]
    }
    /// Every checkpoint of `N` flags matches exactly one row, and `next` takes its action.
    #[track_caller]
    fn next_over_every_checkpoint<const N: usize>(
        rows: &[([Option<bool>; N], Action)],
        checkpoint: impl Fn([bool; N]) -> Checkpoint,
    ) {
        for bits in 0u32..1 << N {
            let v: [bool; N] = std::array::from_fn(|k| bits & (1 << k) != 0);
            let case = format!("{v:?}");
            let (_, want) = the_row(rows, &case, |(p, _)| {
                p.iter().zip(v).all(|(p, v)| fits(*p, v))
            });
            assert_eq!(next(&checkpoint(v)), *want, "{case}");
        }
    }
    fn answers() -> [(&'static str, Answer); 6] {
        [
            ("accepted", Answer::Accepted),
            ("refused", refused()),
            ("already done", already()),
            ("tenant refused", tenant()),
            ("unknown", unknown()),
            ("not sent", not_sent()),
        ]
    }
    fn rereads() -> [(&'static str, Reread); 7] {
        [
            ("done", Reread::Done),
            ("not done", Reread::NotDone),
            (
                "moot",
                Reread::Moot {
                    why: "redeemed".into(),
                },
            ),
            (
                "unprovable",
                Reread::Unprovable {
                    code: "UnknownOutcome".into(),
                    message: "cannot tell".into(),
                },
            ),
            (
                "tenant refused",
                Reread::TenantRefused {
                    message: "m".into(),
                },
            ),
            (
                "not sent",
                Reread::NotSent {
                    message: "m".into(),
                },
            ),
            (
                "unreadable",
                Reread::Unreadable {
                    message: "m".into(),
                },
            ),
        ]
    }

    #[test]
    fn which_steps_each_user_needs() {
        let rows = [
            ("plain", false, Some("Member"), false, (false, false)),
            (
                "set-guest, Member",
                false,
                Some("Member"),
                true,
                (false, true),
            ),
            ("set-guest, no userType", false, None, true, (false, true)),
            (
                "set-guest, already Guest",
                false,
                Some("guest"),
                true,
                (false, false),
            ),
            ("set-mail fix", true, Some("Guest"), false, (true, false)),
            ("both", true, Some("Member"), true, (true, true)),
        ];
        for (name, mail, user_type, set_guest, (needs_mail, needs_guest)) in rows {
            let cp = plan(mail, user_type, set_guest);
            assert_eq!(
                (cp.needs(Step::SetMail), cp.needs(Step::SetGuest)),
                (needs_mail, needs_guest),
                "{name}"
            );
            let first = if needs_mail {
                Step::SetMail
            } else {
                Step::Invite
            };
            assert_eq!(next(&cp), Action::Send(first), "{name}");
        }
    }

    /// Every one of the 32 convert checkpoints matches exactly one row.
    #[test]
    fn next_step_over_every_convert_checkpoint() {
        type Row = ([Option<bool>; 5], Action);
        // (needs_mail, mail_set, invited, needs_guest, guest_set)
        let (y, n, any) = (Some(true), Some(false), None);
        let rows: [Row; 6] = [
            // A later step done: every step before it is past.
            ([any, any, any, any, y], Action::RecordDone),
            ([any, any, y, y, n], Action::Send(Step::SetGuest)),
            ([any, any, y, n, n], Action::RecordDone),
            ([y, n, n, any, n], Action::Send(Step::SetMail)),
            ([y, y, n, any, n], Action::Send(Step::Invite)),
            ([n, any, n, any, n], Action::Send(Step::Invite)),
        ];
        next_over_every_checkpoint(&rows, |v| Checkpoint::convert(v[0], v[1], v[2], v[3], v[4]));
    }

    /// Every one of the retire pass's four checkpoints (password set, sessions revoked) matches
    /// exactly one row: the password first, the revocation only after it, and a revocation done
    /// is never followed by a second password.
    #[test]
    fn next_step_over_every_retire_checkpoint() {
        type Row = ([Option<bool>; 2], Action);
        let (y, n, any) = (Some(true), Some(false), None);
        let rows: [Row; 3] = [
            ([any, y], Action::RecordDone),
            ([y, n], Action::Send(Step::RevokeSessions)),
            ([n, n], Action::Send(Step::SetPassword)),
        ];
        next_over_every_checkpoint(&rows, |v| {
            let mut cp = Checkpoint::new(Pass::Retire, Pass::Retire.steps());
            for (done, step) in v.into_iter().zip([Step::SetPassword, Step::RevokeSessions]) {
                if done {
                    cp.mark_done(step);
                }
            }
            cp
        });
        // A refusal of either retire step is never read as "done already".
        for step in [Step::SetPassword, Step::RevokeSessions] {
            assert!(matches!(
                refusal(step, "Authorization_RequestDenied", ALREADY_B2B),
                Answer::Refused { .. }
            ));
        }
    }

    #[test]
    fn every_pass_starts_with_its_first_step() {
        let rows = [
            (Pass::Convert, Step::Invite),
            (Pass::Resend, Step::Reinvite),
            (Pass::Retire, Step::SetPassword),
            (Pass::Restore, Step::RestoreUserType),
            (Pass::Rollback, Step::ConvertBack),
        ];
        for (pass, first) in rows {
            let mut cp = Checkpoint::new(pass, pass.steps());
            let first_needed = if pass == Pass::Convert {
                Step::SetMail
            } else {
                first
            };
            assert_eq!(next(&cp), Action::Send(first_needed), "{pass:?}");
            for &s in pass.steps() {
                cp.mark_done(s);
            }
            assert_eq!(next(&cp), Action::RecordDone, "{pass:?}");
        }
        let mut retire = Checkpoint::new(Pass::Retire, Pass::Retire.steps());
        retire.mark_done(Step::SetPassword);
        assert_eq!(next(&retire), Action::Send(Step::RevokeSessions));
        // A step outside the pass is never asked for.
        assert!(!Checkpoint::new(Pass::Resend, &[Step::Invite]).needs(Step::Invite));
    }

    #[test]
    fn only_requests_that_may_have_reached_graph_are_charged() {
        for (name, answer) in answers() {
            assert_eq!(charges_attempt(&answer), name != "not sent", "{name}");
        }
    }

    #[test]
    fn a_refusal_that_says_done_already_is_told_apart() {
        let msg = "User invitation failed. The user is already a B2B collaboration user; set \
                   resetRedemption to true to reset its redemption status.";
        let internal = "The user authentication is already internal and isn't eligible for \
                        conversion.";
        // (step, message, read as done already rather than refused)
        let rows = [
            (Step::Invite, msg, true),
            (Step::Reinvite, msg, true),
            (Step::SetGuest, msg, false),
            (Step::ConvertBack, internal, true),
            (Step::RestoreMail, internal, false),
        ];
        for (step, message, done_already) in rows {
            let told_apart = match refusal(step, "BadRequest", message) {
                Answer::AlreadyDone { .. } => true,
                Answer::Refused { .. } => false,
                other => panic!("{step:?}: neither done already nor refused: {other:?}"),
            };
            assert_eq!(told_apart, done_already, "{step:?}");
        }
        assert_eq!(refusal(Step::Invite, "BadRequest", "nope"), refused());
    }

    /// Every one of the 16 restore checkpoints matches exactly one row: userType is put back
    /// before mail, and a step done is never asked for again.
    #[test]
    fn next_step_over_every_restore_checkpoint() {
        type Row = ([Option<bool>; 4], Action);
        // (needs_user_type, user_type_done, needs_mail, mail_done)
        let (y, n, any) = (Some(true), Some(false), None);
        let rows: [Row; 6] = [
            // The later step done: the earlier one is past.
            ([any, any, any, y], Action::RecordDone),
            ([y, n, any, n], Action::Send(Step::RestoreUserType)),
            ([y, y, y, n], Action::Send(Step::RestoreMail)),
            ([n, any, y, n], Action::Send(Step::RestoreMail)),
            ([y, y, n, n], Action::RecordDone),
            ([n, any, n, n], Action::RecordDone),
        ];
        next_over_every_checkpoint(&rows, |v| Checkpoint::restore(v[0], v[1], v[2], v[3]));
    }

    /// Every answer × earlier unknown × stopping × attempts spent matches exactly one row.
    #[test]
    fn after_every_answer_in_every_state() {
        type Row = (
            &'static str,
            Option<bool>,
            Option<bool>,
            Option<bool>,
            Action,
        );
        let (y, n, any) = (Some(true), Some(false), None);
        let t = || StopReason::TenantRefused("blocked".into());
        let u = || StopReason::Unreachable("http://127.0.0.1:9 refused".into());
        // (answer, unknown before, stopping, attempts spent) → action
        let rows: Vec<Row> = vec![
            ("accepted", any, any, any, done(Step::Invite, false)),
            ("refused", n, any, any, fail("BadRequest", "nope")),
            ("refused", y, any, any, Action::Reread(Step::Invite)),
            ("already done", any, any, any, Action::Reread(Step::Invite)),
            ("tenant refused", any, any, any, stop(t(), Leave::Pending)),
            ("unknown", any, any, any, Action::Reread(Step::Invite)),
            ("not sent", any, any, any, stop(u(), Leave::Pending)),
        ];
        for (name, answer) in answers() {
            for bits in 0u8..8 {
                let [before, stopping, spent] = std::array::from_fn(|k| bits & (1 << k) != 0);
                let case = format!("{name}, before {before}, stopping {stopping}, spent {spent}");
                let row = the_row(&rows, &case, |r| {
                    r.0 == name && fits(r.1, before) && fits(r.2, stopping) && fits(r.3, spent)
                });
                let attempts = tries(if spent { 3 } else { 1 }, before, stopping);
                assert_eq!(
                    after_answer(Step::Invite, &answer, &attempts),
                    row.4,
                    "{case}"
                );
            }
        }
    }

    /// Every re-read × the answer before it × stopping × attempts spent matches exactly one row.
    #[test]
    fn after_every_reread_in_every_state() {
        type Row = (
            &'static str,
            Option<&'static str>,
            Option<bool>,
            Option<bool>,
            Action,
        );
        let (y, n, any) = (Some(true), Some(false), None);
        let already_msg = "The user is already a B2B collaboration user";
        // (re-read, last answer, stopping, attempts spent) → action
        let rows: Vec<Row> = vec![
            ("done", None, any, any, done(Step::Invite, true)),
            (
                "not done",
                Some("refused"),
                any,
                any,
                fail("BadRequest", "nope"),
            ),
            (
                "not done",
                Some("already done"),
                any,
                any,
                fail("BadRequest", already_msg),
            ),
            ("not done", Some("unknown"), y, any, Action::BackToPending),
            (
                "not done",
                Some("unknown"),
                n,
                n,
                Action::Retry(Step::Invite),
            ),
            (
                "not done",
                Some("unknown"),
                n,
                y,
                fail("UnknownOutcome", "answer lost (after 3 attempts)"),
            ),
            (
                "moot",
                None,
                any,
                any,
                Action::Skip {
                    why: "redeemed".into(),
                },
            ),
            (
                "unprovable",
                None,
                any,
                any,
                fail("UnknownOutcome", "cannot tell"),
            ),
            (
                "tenant refused",
                None,
                any,
                any,
                stop(StopReason::TenantRefused("m".into()), Leave::InFlight),
            ),
            (
                "not sent",
                None,
                any,
                any,
                stop(StopReason::Unreachable("m".into()), Leave::InFlight),
            ),
            ("unreadable", None, any, any, Action::LeaveInFlight),
        ];
        // The answers that lead to a re-read.
        let lasts = [
            ("refused", refused()),
            ("already done", already()),
            ("unknown", unknown()),
        ];
        for (name, reread) in rereads() {
            for (last_name, last) in &lasts {
                for bits in 0u8..4 {
                    let [stopping, spent] = std::array::from_fn(|k| bits & (1 << k) != 0);
                    let case =
                        format!("{name} after {last_name}, stopping {stopping}, spent {spent}");
                    let row = the_row(&rows, &case, |r| {
                        r.0 == name
                            && r.1.is_none_or(|l| l == *last_name)
                            && fits(r.2, stopping)
                            && fits(r.3, spent)
                    });
                    let attempts = tries(if spent { 3 } else { 1 }, true, stopping);
                    assert_eq!(
                        after_reread(Step::Invite, &reread, last, &attempts),
                        row.4,
                        "{case}"
                    );
                }
            }
        }
    }

    /// Every re-read at resume (and none, for an item without a user) has its row.
    #[test]
    fn reconciliation_at_resume_for_every_reread() {
        let mut rows: Vec<(&str, Option<Reread>, Action)> = vec![
            ("no user", None, Action::BackToPending),
            ("not done", Some(Reread::NotDone), Action::BackToPending),
            ("done", Some(Reread::Done), done(Step::Invite, true)),
        ];
        for (name, reread) in rereads() {
            let want = match name {
                "done" | "not done" => continue,
                "moot" => Action::Skip {
                    why: "redeemed".into(),
                },
                "unprovable" => fail("UnknownOutcome", "cannot tell"),
                "tenant refused" => stop(StopReason::TenantRefused("m".into()), Leave::InFlight),
                "not sent" => stop(StopReason::Unreachable("m".into()), Leave::InFlight),
                "unreadable" => stop(StopReason::Error("m".into()), Leave::InFlight),
                other => panic!("no row for re-read {other}"),
            };
            rows.push((name, Some(reread), want));
        }
        assert_eq!(
            rows.len(),
            rereads().len() + 1,
            "one row per re-read and none"
        );
        for (name, reread, want) in rows {
            assert_eq!(at_resume(Step::Invite, reread.as_ref()), want, "{name}");
        }
        for step in ALL_STEPS {
            assert_eq!(
                at_resume(step, Some(&Reread::Done)),
                done(step, true),
                "{step:?}"
            );
        }
    }

    #[test]
    fn after_a_step_reconciled_at_resume() {
        let invited = Checkpoint::convert(false, false, true, false, false);
        assert_eq!(after_resume_step(&invited), Action::RecordDone);
        let guest_left = Checkpoint::convert(false, false, true, true, false);
        assert_eq!(after_resume_step(&guest_left), Action::BackToPending);
        let mail_done = Checkpoint::convert(true, true, false, false, false);
        assert_eq!(after_resume_step(&mail_done), Action::BackToPending);
    }

    /// An answer lost: the step is re-read, found not done, and sent again.
    #[track_caller]
    fn lost_then_retried(plan: &mut ItemPlan, step: Step) {
        assert_eq!(plan.answered(step, unknown(), false), Action::Reread(step));
        assert_eq!(
            plan.reread(step, &Reread::NotDone, false),
            Action::Retry(step)
        );
    }

    /// An answer not taken at its word: the step is re-read and found done.
    #[track_caller]
    fn reread_as_done(plan: &mut ItemPlan, step: Step, answer: Answer) {
        assert_eq!(plan.answered(step, answer, false), Action::Reread(step));
        assert_eq!(plan.reread(step, &Reread::Done, false), done(step, true));
    }

    #[test]
    fn attempts_are_counted_per_step() {
        let cp = Checkpoint::convert(false, false, false, true, false);
        let mut plan = ItemPlan::new(cp, 0, 3);
        assert_eq!(plan.start(), Action::Send(Step::Invite));
        // Two lost answers at the invitation, the third accepted: 3 of 3 attempts used.
        for _ in 0..2 {
            lost_then_retried(&mut plan, Step::Invite);
        }
        assert_eq!(
            plan.answered(Step::Invite, Answer::Accepted, false),
            done(Step::Invite, false)
        );
        assert_eq!(plan.attempts_made(), 3);
        assert_eq!(plan.step_done(Step::Invite), Action::Send(Step::SetGuest));
        // The userType step has its own attempts, and no earlier lost answer.
        assert_eq!(plan.attempts_made(), 0);
        lost_then_retried(&mut plan, Step::SetGuest);
        reread_as_done(&mut plan, Step::SetGuest, refused());
        assert_eq!(plan.step_done(Step::SetGuest), Action::RecordDone);
    }

    #[test]
    fn a_not_sent_request_is_not_an_attempt() {
        let mut plan = ItemPlan::new(Checkpoint::new(Pass::Resend, &[Step::Reinvite]), 2, 3);
        assert_eq!(
            plan.answered(Step::Reinvite, not_sent(), false),
            stop(
                StopReason::Unreachable("http://127.0.0.1:9 refused".into()),
                Leave::Pending
            )
        );
        assert_eq!(plan.attempts_made(), 2);
    }

    #[test]
    fn a_done_already_refusal_is_reconciled_as_done() {
        let mut plan = ItemPlan::new(Checkpoint::convert(false, false, false, false, false), 0, 3);
        reread_as_done(&mut plan, Step::Invite, already());
        assert_eq!(plan.step_done(Step::Invite), Action::RecordDone);
    }

    #[test]
    fn resume_reconciles_then_goes_on() {
        let mut plan = ItemPlan::new(Checkpoint::convert(true, false, false, true, false), 1, 3);
        assert_eq!(
            plan.resumed(Step::SetMail, Some(&Reread::Done)),
            done(Step::SetMail, true)
        );
        assert_eq!(plan.resumed_step_done(Step::SetMail), Action::BackToPending);
        assert_eq!(plan.start(), Action::Send(Step::Invite));
        assert_eq!(plan.attempts_made(), 0);
    }

    #[test]
    fn step_names_round_trip() {
        for s in ALL_STEPS {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
        assert_eq!(Step::parse("other"), None);
    }

    /// A re-read that cannot read the user is tried again a few times while the run goes on,
    /// never turning into a resend; then, or at once when stopping, the item stays in flight.
    #[test]
    fn an_unreadable_user_is_re_read_again_before_the_item_is_left_in_flight() {
        let unreadable = Reread::Unreadable {
            message: "503".into(),
        };
        let mut plan = ItemPlan::new(plan(false, None, false), 1, 5);
        let _ = plan.answered(
            Step::Invite,
            Answer::Unknown {
                code: "ServiceUnavailable".into(),
                message: "lost".into(),
            },
            false,
        );
        for _ in 0..UNREADABLE_REREADS {
            assert_eq!(
                plan.reread(Step::Invite, &unreadable, false),
                Action::Reread(Step::Invite)
            );
        }
        assert_eq!(
            plan.reread(Step::Invite, &unreadable, false),
            Action::LeaveInFlight
        );
        let mut stopping = ItemPlan::new(plan_for_invite(), 1, 5);
        assert_eq!(
            stopping.reread(Step::Invite, &unreadable, true),
            Action::LeaveInFlight
        );
    }

    fn plan_for_invite() -> Checkpoint {
        plan(false, None, false)
    }
}
