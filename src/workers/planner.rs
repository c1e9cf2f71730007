//! The exactly-once planner: pure decisions, no I/O.
//!
//! Every decision about one item — which step to take next, what an answer means, what a re-read
//! of the user proves, what to do at resume with an item a crash left `in_flight` — is a function
//! here from plain data to an [`Action`]. The workers only execute actions ("compute operations,
//! then execute", as atuin's sync does), so each branch is a row in a table-driven test instead of
//! a path through async control flow.

/// One write the tool makes for an item, in the order they are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// `PATCH /users/{id}` `{"mail": …}` (`--set-mail`), before the invitation.
    SetMail,
    /// `POST /invitations` with `invitedUser.id`.
    Invite,
    /// `PATCH /users/{id}` `{"userType": "Guest"}` (`--set-guest`), after the invitation.
    SetGuest,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::SetMail => "set_mail",
            Step::Invite => "invite",
            Step::SetGuest => "set_guest",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "set_mail" => Some(Step::SetMail),
            "invite" => Some(Step::Invite),
            "set_guest" => Some(Step::SetGuest),
            _ => None,
        }
    }
}

/// Which steps an item needs and which are done, as checkpointed in the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The mail step is asked for (the user's `mail` must become the invited address).
    pub needs_mail: bool,
    pub mail_set: bool,
    pub invited: bool,
    /// The userType step is asked for (the user is not `Guest` yet and `--set-guest` is on).
    pub needs_guest: bool,
    pub guest_set: bool,
}

impl Checkpoint {
    pub fn mark_done(&mut self, step: Step) {
        match step {
            Step::SetMail => self.mail_set = true,
            Step::Invite => self.invited = true,
            Step::SetGuest => self.guest_set = true,
        }
    }
}

/// What the answer to one request was, reduced to what the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 201 / 204: Graph carried it out.
    Accepted,
    /// A permanent refusal of this request (4xx with Graph's code and message).
    Refused { code: String, message: String },
    /// The tenant refuses to go on (invitations blocked, consent revoked): the whole run stops.
    TenantRefused { message: String },
    /// The request may have reached Graph, the answer is unknown (lost answer, timeout, 5xx).
    Unknown { code: String, message: String },
    /// The request never left the process; the client already retried for a bounded stretch.
    NotSent { message: String },
}

/// What reading the user back says about a step whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reread {
    /// The step took effect (the invitation's `externalUserState`, the new `mail`, `Guest`).
    Done,
    /// The user is unchanged (or gone): the step did not take effect.
    NotDone,
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
    /// Checkpoint the step as done, then ask [`next`] for the following step.
    StepDone { step: Step, reconciled: bool },
    /// Every step asked for is done: the item ends `converted`.
    RecordConverted,
    /// The step certainly did not take effect: back to `pending`, wait `backoff(attempts)`, send
    /// again.
    Retry(Step),
    /// The step certainly did not take effect and the pass is stopping: back to `pending`.
    BackToPending,
    /// The item ends `failed` with this code and message.
    Fail { code: String, message: String },
    /// The outcome is unknown and the user cannot be read now: leave it for `resume`.
    LeaveInFlight,
    /// Stop the whole run, leaving this item as said.
    StopRun { reason: StopReason, item: Leave },
}

/// What the planner knows about the attempts at the current step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Requests for this item that may have reached Graph, this one included.
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
    Checkpoint {
        needs_mail: mail_change,
        needs_guest: set_guest
            && !user_type.is_some_and(|t| t.trim().eq_ignore_ascii_case("Guest")),
        ..Default::default()
    }
}

/// The first step not yet done, or `RecordConverted` when every step asked for is done.
pub fn next(cp: &Checkpoint) -> Action {
    if cp.needs_mail && !cp.mail_set && !cp.invited {
        Action::Send(Step::SetMail)
    } else if !cp.invited {
        Action::Send(Step::Invite)
    } else if cp.needs_guest && !cp.guest_set {
        Action::Send(Step::SetGuest)
    } else {
        Action::RecordConverted
    }
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
/// the re-read (an `Unknown`, or a `Refused` after an earlier `Unknown`).
pub fn after_reread(step: Step, reread: &Reread, last: &Answer, attempts: &Attempts) -> Action {
    match reread {
        Reread::Done => Action::StepDone {
            step,
            reconciled: true,
        },
        Reread::NotDone => match last {
            // A refusal, and the user shows the step never took effect: the refusal stands.
            Answer::Refused { code, message } => Action::Fail {
                code: code.clone(),
                message: message.clone(),
            },
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
/// queue, or ends converted when nothing is left.
pub fn after_resume_step(cp: &Checkpoint) -> Action {
    match next(cp) {
        Action::RecordConverted => Action::RecordConverted,
        _ => Action::BackToPending,
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
    fn unknown() -> Answer {
        Answer::Unknown {
            code: "UnknownOutcome".into(),
            message: "answer lost".into(),
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
                (cp.needs_mail, cp.needs_guest),
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

    #[test]
    fn next_step_follows_mail_invite_guest() {
        let cp = |needs_mail, mail_set, invited, needs_guest, guest_set| Checkpoint {
            needs_mail,
            mail_set,
            invited,
            needs_guest,
            guest_set,
        };
        let rows = [
            (
                "invite only",
                cp(false, false, false, false, false),
                Action::Send(Step::Invite),
            ),
            (
                "mail first",
                cp(true, false, false, true, false),
                Action::Send(Step::SetMail),
            ),
            (
                "mail set: invite",
                cp(true, true, false, true, false),
                Action::Send(Step::Invite),
            ),
            (
                "invited: guest",
                cp(true, true, true, true, false),
                Action::Send(Step::SetGuest),
            ),
            (
                "all done",
                cp(true, true, true, true, true),
                Action::RecordConverted,
            ),
            (
                "invited, no guest",
                cp(false, false, true, false, false),
                Action::RecordConverted,
            ),
        ];
        for (name, cp, want) in rows {
            assert_eq!(next(&cp), want, "{name}");
        }
    }

    #[test]
    fn only_requests_that_may_have_reached_graph_are_charged() {
        let rows = [
            (Answer::Accepted, true),
            (refused(), true),
            (
                Answer::TenantRefused {
                    message: "m".into(),
                },
                true,
            ),
            (unknown(), true),
            (
                Answer::NotSent {
                    message: "m".into(),
                },
                false,
            ),
        ];
        for (answer, want) in rows {
            assert_eq!(charges_attempt(&answer), want, "{answer:?}");
        }
    }

    #[test]
    fn after_each_kind_of_answer() {
        let t = || StopReason::TenantRefused("blocked".into());
        let u = || StopReason::Unreachable("http://127.0.0.1:9 refused".into());
        let rows = [
            (
                "201",
                Step::Invite,
                Answer::Accepted,
                tries(1, false, false),
                done(Step::Invite, false),
            ),
            (
                "204 mail",
                Step::SetMail,
                Answer::Accepted,
                tries(1, false, false),
                done(Step::SetMail, false),
            ),
            (
                "204 guest",
                Step::SetGuest,
                Answer::Accepted,
                tries(1, false, false),
                done(Step::SetGuest, false),
            ),
            (
                "4xx",
                Step::Invite,
                refused(),
                tries(1, false, false),
                fail("BadRequest", "nope"),
            ),
            (
                "4xx on mail",
                Step::SetMail,
                refused(),
                tries(1, false, false),
                fail("BadRequest", "nope"),
            ),
            (
                "4xx after unknown",
                Step::Invite,
                refused(),
                tries(2, true, false),
                Action::Reread(Step::Invite),
            ),
            (
                "unknown",
                Step::Invite,
                unknown(),
                tries(1, false, false),
                Action::Reread(Step::Invite),
            ),
            (
                "unknown guest",
                Step::SetGuest,
                unknown(),
                tries(1, false, false),
                Action::Reread(Step::SetGuest),
            ),
            (
                "tenant refusal",
                Step::Invite,
                Answer::TenantRefused {
                    message: "blocked".into(),
                },
                tries(1, false, false),
                stop(t(), Leave::Pending),
            ),
            (
                "not sent",
                Step::Invite,
                Answer::NotSent {
                    message: "http://127.0.0.1:9 refused".into(),
                },
                tries(0, false, false),
                stop(u(), Leave::Pending),
            ),
        ];
        for (name, step, answer, attempts, want) in rows {
            assert_eq!(after_answer(step, &answer, &attempts), want, "{name}");
        }
    }

    #[test]
    fn after_each_kind_of_reread() {
        let rows = [
            (
                "done",
                Reread::Done,
                unknown(),
                tries(1, true, false),
                done(Step::Invite, true),
            ),
            (
                "not done: retry",
                Reread::NotDone,
                unknown(),
                tries(1, true, false),
                Action::Retry(Step::Invite),
            ),
            (
                "not done, stopping",
                Reread::NotDone,
                unknown(),
                tries(1, true, true),
                Action::BackToPending,
            ),
            (
                "not done, attempts spent",
                Reread::NotDone,
                unknown(),
                tries(3, true, false),
                fail("UnknownOutcome", "answer lost (after 3 attempts)"),
            ),
            (
                "refusal stands",
                Reread::NotDone,
                refused(),
                tries(2, true, false),
                fail("BadRequest", "nope"),
            ),
            (
                "refusal was a repeat",
                Reread::Done,
                refused(),
                tries(2, true, false),
                done(Step::Invite, true),
            ),
            (
                "tenant refuses the read",
                Reread::TenantRefused {
                    message: "m".into(),
                },
                unknown(),
                tries(1, true, false),
                stop(StopReason::TenantRefused("m".into()), Leave::InFlight),
            ),
            (
                "graph unreachable",
                Reread::NotSent {
                    message: "m".into(),
                },
                unknown(),
                tries(1, true, false),
                stop(StopReason::Unreachable("m".into()), Leave::InFlight),
            ),
            (
                "unreadable",
                Reread::Unreadable {
                    message: "m".into(),
                },
                unknown(),
                tries(1, true, false),
                Action::LeaveInFlight,
            ),
        ];
        for (name, reread, last, attempts, want) in rows {
            assert_eq!(
                after_reread(Step::Invite, &reread, &last, &attempts),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn reconciliation_at_resume() {
        let rows = [
            ("no user", Step::Invite, None, Action::BackToPending),
            (
                "not done",
                Step::Invite,
                Some(Reread::NotDone),
                Action::BackToPending,
            ),
            (
                "invited",
                Step::Invite,
                Some(Reread::Done),
                done(Step::Invite, true),
            ),
            (
                "mail set",
                Step::SetMail,
                Some(Reread::Done),
                done(Step::SetMail, true),
            ),
            (
                "guest set",
                Step::SetGuest,
                Some(Reread::Done),
                done(Step::SetGuest, true),
            ),
            (
                "tenant refuses",
                Step::Invite,
                Some(Reread::TenantRefused {
                    message: "m".into(),
                }),
                stop(StopReason::TenantRefused("m".into()), Leave::InFlight),
            ),
            (
                "unreachable",
                Step::Invite,
                Some(Reread::NotSent {
                    message: "m".into(),
                }),
                stop(StopReason::Unreachable("m".into()), Leave::InFlight),
            ),
            (
                "unreadable",
                Step::Invite,
                Some(Reread::Unreadable {
                    message: "m".into(),
                }),
                stop(StopReason::Error("m".into()), Leave::InFlight),
            ),
        ];
        for (name, step, reread, want) in rows {
            assert_eq!(at_resume(step, reread.as_ref()), want, "{name}");
        }
    }

    #[test]
    fn after_a_step_reconciled_at_resume() {
        let invited = Checkpoint {
            invited: true,
            ..Default::default()
        };
        assert_eq!(after_resume_step(&invited), Action::RecordConverted);
        let guest_left = Checkpoint {
            invited: true,
            needs_guest: true,
            ..Default::default()
        };
        assert_eq!(after_resume_step(&guest_left), Action::BackToPending);
        let mail_done = Checkpoint {
            needs_mail: true,
            mail_set: true,
            ..Default::default()
        };
        assert_eq!(after_resume_step(&mail_done), Action::BackToPending);
    }

    #[test]
    fn step_names_round_trip() {
        for s in [Step::SetMail, Step::Invite, Step::SetGuest] {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
        assert_eq!(Step::parse("other"), None);
    }
}
