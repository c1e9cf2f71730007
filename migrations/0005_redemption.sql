-- Redemption tracking and resend passes (issue 10).
-- invite_redeem_url stays NULL unless the run was started with --keep-redeem-links (the queue
-- decides when it writes the column; nothing here stores one).

ALTER TABLE items ADD COLUMN external_user_state TEXT;            -- as read by the last `track`
ALTER TABLE items ADD COLUMN external_user_state_changed_at TEXT; -- Graph's externalUserStateChangeDateTime
ALTER TABLE items ADD COLUMN tracked_at TEXT;                     -- when `track` last read the user
ALTER TABLE items ADD COLUMN invited_at TEXT;                     -- when the item last became converted

UPDATE items SET invited_at = updated_at WHERE state = 'converted';

-- Whoever writes the conversion (workers, reconciliation, follow-up steps), the item's
-- invitation date is the moment it entered `converted`.
CREATE TRIGGER items_invited_at AFTER UPDATE OF state ON items
WHEN NEW.state = 'converted' AND OLD.state <> 'converted'
BEGIN
    UPDATE items SET invited_at = NEW.updated_at WHERE id = NEW.id;
END;

-- One row per `track` invocation: the redemption history of a run.
CREATE TABLE tracks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    started_at   TEXT    NOT NULL,
    finished_at  TEXT,
    accepted     INTEGER NOT NULL DEFAULT 0,
    pending      INTEGER NOT NULL DEFAULT 0,
    not_applied  INTEGER NOT NULL DEFAULT 0,
    missing      INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX tracks_run ON tracks (run_id, id);

-- One row per `resend` pass; a pass is continued, never restarted, until it is finished.
CREATE TABLE resend_passes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    older_than_days INTEGER NOT NULL,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT
);

CREATE INDEX resend_passes_run ON resend_passes (run_id, id);

-- The users a pass re-invites, fixed when the pass starts. `in_flight` only while a request may
-- be on the wire; `checkpoint_at` is when it was put there (compared with Graph's
-- externalUserStateChangeDateTime when the answer is lost).
CREATE TABLE resends (
    pass_id           INTEGER NOT NULL REFERENCES resend_passes (id),
    item_id           INTEGER NOT NULL REFERENCES items (id),
    state             TEXT    NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'in_flight', 'sent', 'failed', 'skipped')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    checkpoint_at     TEXT,
    sent_at           TEXT,
    reconciled        INTEGER NOT NULL DEFAULT 0,
    invitation_id     TEXT,
    request_id        TEXT,
    client_request_id TEXT,
    error_code        TEXT,
    error_message     TEXT,
    PRIMARY KEY (pass_id, item_id)
);
