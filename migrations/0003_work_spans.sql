-- b2b-convert work queue, schema version 3: work spans.
-- One row per stretch of time a process worked a run: opened when it starts working, its
-- last_seen_at moved forward by a heartbeat while it works, ended_at set when it stops. A process
-- killed without a chance to close its span leaves ended_at NULL; readers end such a span at its
-- last heartbeat, so a SIGKILL never makes a span (or a run's working time) unbounded.
CREATE TABLE work_spans (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    started_at   TEXT    NOT NULL,
    last_seen_at TEXT    NOT NULL,
    ended_at     TEXT
);

CREATE INDEX work_spans_run ON work_spans (run_id);
