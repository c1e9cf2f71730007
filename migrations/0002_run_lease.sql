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

-- `status`, `runs` and `resume` count a run's reasons, reconciled items and requests from these
-- instead of scanning every item (issue 15). Partial indexes cost nothing at ingest for the rows
-- they leave out (most rows have no reason and are not reconciled).
CREATE INDEX items_run_reason ON items (run_id, reason) WHERE reason IS NOT NULL;
CREATE INDEX items_run_reconciled ON items (run_id) WHERE reconciled = 1;
CREATE INDEX requests_run_counts ON requests (run_id, throttled, attempt);
DROP INDEX requests_run;
