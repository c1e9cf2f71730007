-- b2b-convert work queue, schema version 2: the run lease (SPEC.md, "One process at a time works
-- a run"). One row per run being worked; no row means nobody works it. The holder's token fences
-- its heartbeats and its release, so a holder that was taken over can never extend or drop the
-- lease of the process that took over.

CREATE TABLE run_leases (
    run_id       INTEGER PRIMARY KEY REFERENCES runs (id),
    token        TEXT    NOT NULL,   -- random per taking
    pid          INTEGER NOT NULL,
    host         TEXT    NOT NULL,
    acquired_at  TEXT    NOT NULL,   -- RFC 3339 UTC, shown to a refused second process
    heartbeat_ms INTEGER NOT NULL    -- holder's clock, unix milliseconds of its last heartbeat
);
