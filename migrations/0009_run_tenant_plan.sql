-- b2b-convert work queue, schema version 9 (issue 18): runs belong to their tenant, a live run
-- can be the `apply` of an approved dry run, and `resume` keeps a history of send options.

-- The tenant a run was made for: the token's `tid` and the tenant's initial (*.onmicrosoft.com)
-- and default domain names from /v1.0/domains, recorded when the run is created. Every command
-- that works an existing run compares the signed-in token's `tid` with tenant_tid first.
-- tenant_source says where the record comes from: 'token' (recorded at creation), 'options'
-- (a run made before this migration: taken from the tenant it stored, see below); NULL means the
-- tenant could not be known, and the check says it was not made instead of passing silently.
ALTER TABLE runs ADD COLUMN tenant_tid TEXT;
ALTER TABLE runs ADD COLUMN tenant_initial_domain TEXT;
ALTER TABLE runs ADD COLUMN tenant_default_domain TEXT;
ALTER TABLE runs ADD COLUMN tenant_source TEXT CHECK (tenant_source IN ('token', 'options'));

-- Runs made before this migration stored only the tenant they were started with
-- (AZURE_TENANT_ID, the `tenant_id` column). A tenant id (a GUID) is the token's `tid`, taken
-- here. A tenant named by a domain is matched at the run's next check against the signed-in
-- tenant's domains and recorded then. The request log cannot help: it keeps Graph paths, which
-- never name the tenant. A run with neither stays unknown (tenant_source NULL).
UPDATE runs
   SET tenant_tid = lower(tenant_id), tenant_source = 'options'
 WHERE tenant_id IS NOT NULL
   AND length(tenant_id) = 36
   AND lower(tenant_id) GLOB
       '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]';

-- `apply DRY_RUN_ID`: the live run names the dry run it executes.
ALTER TABLE runs ADD COLUMN plan_run_id INTEGER REFERENCES runs (id);

-- An item of an `apply` run keeps what the plan saw: the user's snapshot and the address the
-- plan would have invited. Just before sending, the user is read again and compared with these.
ALTER TABLE items ADD COLUMN plan_snapshot TEXT;     -- JSON User, as the dry run read it
ALTER TABLE items ADD COLUMN plan_email TEXT;

-- `resume` with send options again: each change, when it was made, the first item it applied
-- to (the lowest item id still pending then) and how many items had been sent before it, so
-- reports say "items 1–50 silent, 51–… with Microsoft's invitation email". The first change of a
-- run also stores the options the run started with (sent_before 0, changes 'as started').
CREATE TABLE option_changes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        INTEGER NOT NULL REFERENCES runs (id),
    at            TEXT    NOT NULL,
    first_item_id INTEGER,                            -- NULL: nothing was pending
    sent_before   INTEGER NOT NULL,                   -- items converted or failed before it
    options       TEXT    NOT NULL,                   -- JSON RunOptions in force from then on
    changes       TEXT    NOT NULL                    -- what changed, in words
);

CREATE INDEX option_changes_run ON option_changes (run_id, id);
