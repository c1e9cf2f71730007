-- Items per run and state, kept by triggers in the same transaction as every insert, state
-- change and delete of an item (issue 22): the progress bar, `status` and the run summary read
-- these few rows instead of counting a million items once a second. Triggers keep the counts
-- right by construction, whichever statement changes an item; an existing database is counted
-- once here.
CREATE TABLE run_counts (
    run_id INTEGER NOT NULL,
    state  TEXT    NOT NULL,
    n      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, state)
) WITHOUT ROWID;

INSERT INTO run_counts (run_id, state, n)
SELECT run_id, state, count(*) FROM items GROUP BY run_id, state;

CREATE TRIGGER items_count_insert AFTER INSERT ON items
BEGIN
    INSERT INTO run_counts (run_id, state, n) VALUES (NEW.run_id, NEW.state, 1)
    ON CONFLICT (run_id, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER items_count_delete AFTER DELETE ON items
BEGIN
    UPDATE run_counts SET n = n - 1 WHERE run_id = OLD.run_id AND state = OLD.state;
END;

CREATE TRIGGER items_count_update AFTER UPDATE OF run_id, state ON items
WHEN OLD.state IS NOT NEW.state OR OLD.run_id IS NOT NEW.run_id
BEGIN
    UPDATE run_counts SET n = n - 1 WHERE run_id = OLD.run_id AND state = OLD.state;
    INSERT INTO run_counts (run_id, state, n) VALUES (NEW.run_id, NEW.state, 1)
    ON CONFLICT (run_id, state) DO UPDATE SET n = n + 1;
END;
