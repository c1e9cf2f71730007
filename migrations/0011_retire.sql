-- `retire` passes (issue 19): after redemption, each converted cloud-only user's internal
-- password is set to a random value nobody knows, then its sign-in sessions are revoked. A pass
-- fixes its users when it starts and is continued, never restarted, until it is finished.
-- No password is ever stored: only when each step was checkpointed and done, and the two Graph
-- times a lost answer is judged against.
CREATE TABLE retire_passes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    started_at  TEXT    NOT NULL,
    finished_at TEXT
);

CREATE INDEX retire_passes_run ON retire_passes (run_id, id);

CREATE TABLE retires (
    pass_id             INTEGER NOT NULL REFERENCES retire_passes (id),
    item_id             INTEGER NOT NULL REFERENCES items (id),
    state               TEXT    NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'in_flight', 'retired', 'failed', 'skipped')),
    -- The step a request may be on the wire for (set_password, revoke_sessions).
    step                TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,  -- at the current step
    checkpoint_at       TEXT,
    -- lastPasswordChangeDateTime / signInSessionsValidFromDateTime as Graph showed them just
    -- before the first step was checkpointed (Graph's clock): a lost answer is judged by
    -- whether the time moved past these.
    password_before     TEXT,
    sessions_before     TEXT,
    password_set_at     TEXT,                         -- step done (our clock)
    sessions_revoked_at TEXT,
    -- Why a skipped user was not written: unredeemed (redeem first), synced (on-premises
    -- password: `scripts`), privileged (holds an admin role: needs Privileged Authentication
    -- Administrator), gone (no longer in the tenant).
    skip_kind           TEXT CHECK (skip_kind IN ('unredeemed', 'synced', 'privileged', 'gone')),
    reconciled          INTEGER NOT NULL DEFAULT 0,
    error_code          TEXT,
    error_message       TEXT,
    request_id          TEXT,
    client_request_id   TEXT,
    PRIMARY KEY (pass_id, item_id)
);

CREATE INDEX retires_item ON retires (item_id);

-- What `track` and `retire` last read of each converted user's credentials: whether it is
-- synced from on-premises, and its lastPasswordChangeDateTime (normalised). A synced user whose
-- password changed after their redemption is retired on-premises.
ALTER TABLE items ADD COLUMN on_premises_sync INTEGER;
ALTER TABLE items ADD COLUMN password_changed_at TEXT;
