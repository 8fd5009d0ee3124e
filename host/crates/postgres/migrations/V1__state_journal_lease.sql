-- flockd's state in PostgreSQL. One database may hold several clusters:
-- every table is keyed by the cluster's name.

-- The host state, one row per record (see flockd_core::store::RecordKind).
CREATE TABLE flockd_record (
    cluster TEXT NOT NULL,
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (cluster, kind, key)
);

-- The journal: one row per tick, newest by seq.
CREATE TABLE flockd_journal (
    cluster TEXT   NOT NULL,
    seq     BIGINT GENERATED ALWAYS AS IDENTITY,
    tick    BIGINT NOT NULL,
    bytes   BIGINT NOT NULL,
    record  TEXT   NOT NULL,
    PRIMARY KEY (cluster, seq)
);

-- Which ticks acted on an instance, so `flockd why INSTANCE` reads only those.
CREATE TABLE flockd_journal_instance (
    cluster  TEXT   NOT NULL,
    instance TEXT   NOT NULL,
    seq      BIGINT NOT NULL,
    PRIMARY KEY (cluster, instance, seq),
    FOREIGN KEY (cluster, seq) REFERENCES flockd_journal (cluster, seq) ON DELETE CASCADE
);
CREATE INDEX flockd_journal_instance_seq ON flockd_journal_instance (cluster, seq);

-- The leader lease: the holder, an epoch that grows with every new grant,
-- and an expiry on the database's clock.
CREATE TABLE flockd_lease (
    cluster    TEXT        PRIMARY KEY,
    holder     TEXT        NOT NULL,
    epoch      BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
