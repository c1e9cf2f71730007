-- Follow-up steps of an item (issue 9): mail set → invited → userType set, each checkpointed.
-- A row exists only for items that need a step besides the invitation (--set-mail, --set-guest).
CREATE TABLE item_steps (
    item_id      INTEGER PRIMARY KEY REFERENCES items (id),
    needs_mail   INTEGER NOT NULL DEFAULT 0,
    mail_from    TEXT,                               -- mail before the change (NULL: none)
    mail_to      TEXT,                               -- the address --set-mail writes
    needs_guest  INTEGER NOT NULL DEFAULT 0,
    -- The step whose request may be on the wire while the item is in_flight.
    in_flight    TEXT CHECK (in_flight IN ('set_mail', 'invite', 'set_guest')),
    mail_set_at  TEXT,
    invited_at   TEXT,
    guest_set_at TEXT
);
