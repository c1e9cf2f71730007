-- b2b-convert work queue, schema version 6: cheap bulk ingestion (issue 15). Numbered after the
-- integration branch's 0005_redemption.sql, after which it must stay in the migration list.
-- The case-folded user key and the requested email are random keys (GUIDs, addresses): keeping
-- a B-tree over each up to date row by row dirtied a random page per row, which made ingestion
-- 40× slower than SQLite's own import and wrote 25× the database's size to the WAL. Nothing but
-- ingestion reads them, and ingestion now finds duplicate users and shared emails in one sorted,
-- set-based pass at its end (`Queue::finish_ingest`), so the two indexes are dropped.
DROP INDEX items_run_key;
DROP INDEX items_run_email;
