-- Attempts are counted per step (issue 21): a user whose invitation took three tries still gets
-- every attempt at its userType step. `items.attempts` keeps counting over the item's life.
ALTER TABLE item_steps ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
