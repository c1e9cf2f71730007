-- Back-out (issue 20): `restore` undoes the tool's own follow-up writes (userType, mail) from
-- the snapshot; `rollback` converts named redeemed users back to internal members (Graph beta).
-- One entry per item and kind, created when the command is confirmed and never started over: an
-- interrupted back-out is continued by the next `restore` / `rollback`, and a user is restored
-- or rolled back at most once.
CREATE TABLE backout_entries (
    item_id        INTEGER NOT NULL REFERENCES items (id),
    run_id         INTEGER NOT NULL REFERENCES runs (id),
    kind           TEXT    NOT NULL CHECK (kind IN ('restore', 'rollback')),
    state          TEXT    NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'in_flight', 'done', 'failed', 'skipped')),
    -- restore: which writes to undo and the values to put back (from the snapshot / item_steps).
    needs_user_type INTEGER NOT NULL DEFAULT 0,
    user_type_to    TEXT,                 -- the snapshot's userType
    needs_mail      INTEGER NOT NULL DEFAULT 0,
    mail_to         TEXT,                 -- the snapshot's mail (NULL: none)
    mail_tool       TEXT,                 -- the address --set-mail wrote
    -- The step whose request may be on the wire while the entry is in_flight.
    in_flight       TEXT CHECK (in_flight IN ('restore_user_type', 'restore_mail', 'convert_back')),
    user_type_done_at TEXT,
    mail_done_at      TEXT,
    -- rollback: the file the password of the last request was written to (never the password).
    passwords_file  TEXT,
    converted_back_at TEXT,               -- the answer's convertedToInternalUserDateTime
    attempts        INTEGER NOT NULL DEFAULT 0,
    detail          TEXT,                 -- why skipped, or what was done
    error_code      TEXT,
    error_message   TEXT,
    request_id      TEXT,
    client_request_id TEXT,
    created_at      TEXT    NOT NULL,
    finished_at     TEXT,
    PRIMARY KEY (item_id, kind)
);

CREATE INDEX backout_entries_run ON backout_entries (run_id, kind, state);
