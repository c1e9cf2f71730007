-- b2b-convert work queue, schema version 1.
-- Times are RFC 3339 UTC strings. JSON columns hold the serde shapes of src/item.rs / src/model.rs.
-- No column ever holds a token or a secret; invite_redeem_url is credential-like and never leaves
-- this file (not logged, not reported).

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source          TEXT    NOT NULL,                 -- JSON SourceSpec
    mode            TEXT    NOT NULL CHECK (mode IN ('dry_run', 'live')),
    options         TEXT    NOT NULL,                 -- JSON RunOptions
    tenant_id       TEXT,
    graph_url       TEXT    NOT NULL,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    status          TEXT    NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'finished', 'interrupted', 'stopped')),
    -- Where ingestion stopped: CSV the last line stored, Graph queries the nextLink still to read.
    ingest_cursor   TEXT,
    ingest_complete INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE items (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id              INTEGER NOT NULL REFERENCES runs (id),
    line                INTEGER,
    key_kind            TEXT CHECK (key_kind IN ('id', 'userPrincipalName')),
    key_value           TEXT,
    key_norm            TEXT,                         -- case-folded key, spots the same user twice
    user_id             TEXT,                         -- object id once resolved
    user_principal_name TEXT,
    display_name        TEXT,
    user_type           TEXT,
    requested_email     TEXT,                         -- externalEmail from the input, if any
    external_email      TEXT,                         -- the address the invitation goes to
    overrides           TEXT,                         -- JSON Overrides, NULL when none
    state               TEXT    NOT NULL
                        CHECK (state IN ('pending', 'in_flight', 'converted', 'would_convert',
                                         'skipped', 'blocked', 'failed')),
    reason              TEXT,
    detail              TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    snapshot            TEXT,                         -- JSON User as read before any change
    error_code          TEXT,
    error_message       TEXT,
    request_id          TEXT,
    client_request_id   TEXT,
    invitation_id       TEXT,
    invitation_status   TEXT,
    invite_redeem_url   TEXT,
    reconciled          INTEGER NOT NULL DEFAULT 0,
    created_at          TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL
);

CREATE INDEX items_run_state ON items (run_id, state, id);
CREATE INDEX items_run_key ON items (run_id, key_norm);
CREATE INDEX items_run_user ON items (run_id, user_id);
CREATE INDEX items_run_email ON items (run_id, requested_email COLLATE NOCASE);

-- Append-only log of every Graph request: what support asks for (client-request-id, request-id).
CREATE TABLE requests (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id            INTEGER NOT NULL REFERENCES runs (id),
    item_id           INTEGER,
    method            TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    status            INTEGER,                        -- NULL: no answer arrived
    client_request_id TEXT    NOT NULL,
    request_id        TEXT,
    duration_ms       INTEGER NOT NULL,
    throttled         INTEGER NOT NULL DEFAULT 0,
    attempt           INTEGER NOT NULL DEFAULT 1,
    error             TEXT,
    at                TEXT    NOT NULL
);

CREATE INDEX requests_run ON requests (run_id);
