-- Tenant facts (issue 15 item 2): who holds which address, per tenant, kept across runs and
-- refreshed with Graph's delta query, so a pass reads only what changed since the last one.
CREATE TABLE tenant_sync (
    tenant      TEXT PRIMARY KEY,      -- Graph root and tenant (see workers::facts::tenant_key)
    -- Where the next round starts (the last complete round's @odata.deltaLink); NULL: none yet.
    delta_link  TEXT,
    -- The @odata.nextLink of a round under way: an interrupted round goes on from here.
    round_link  TEXT,
    -- 1 while a full round is under way: its index is incomplete until delta_link is set.
    full_round  INTEGER NOT NULL DEFAULT 0,
    -- A full round done by listing every user (999 a page, 5× fewer pages than a delta round):
    -- the delta link taken just before the listing (`$deltatoken=latest`), adopted when the
    -- listing ends; round_link is then a listing page link.
    listing_delta TEXT,
    synced_at   TEXT
);

-- One row per (user, property, address): mail = 0, otherMails = 1, proxyAddresses (SMTP) = 2.
-- A delta entry may carry only the properties that changed, so each property is replaced alone.
CREATE TABLE tenant_addresses (
    tenant   TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    source   INTEGER NOT NULL CHECK (source IN (0, 1, 2)),
    address  TEXT    NOT NULL,          -- trimmed, lowercase
    PRIMARY KEY (tenant, user_id, source, address)
) WITHOUT ROWID;

CREATE INDEX tenant_addresses_by_address ON tenant_addresses (tenant, address);
