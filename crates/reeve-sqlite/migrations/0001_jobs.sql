-- reeve schema, SQLite. Instants are INTEGER milliseconds since the Unix
-- epoch; durations are INTEGER milliseconds.
CREATE TABLE jobs (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    queue                TEXT    NOT NULL,
    kind                 TEXT    NOT NULL,
    state                TEXT    NOT NULL,
    payload              TEXT    NOT NULL,
    priority             INTEGER NOT NULL DEFAULT 0,
    attempt              INTEGER NOT NULL DEFAULT 0,
    max_attempts         INTEGER NOT NULL,
    epoch                INTEGER NOT NULL DEFAULT 0,
    claimed_by           TEXT,
    claimed_at           INTEGER,
    heartbeat_at         INTEGER,
    lease_expires_at     INTEGER,
    heartbeats           INTEGER NOT NULL DEFAULT 1,
    heartbeat_count      INTEGER NOT NULL DEFAULT 0,
    available_at         INTEGER NOT NULL,
    max_run_duration_ms  INTEGER NOT NULL,
    heartbeat_timeout_ms INTEGER NOT NULL,
    failure_reason       TEXT,
    last_error           TEXT,
    retry_on             TEXT,
    idempotency_key      TEXT,
    unique_key           TEXT,
    command              TEXT,
    max_turns            INTEGER,
    turns                INTEGER NOT NULL DEFAULT 0,
    progress             TEXT,
    result               TEXT,
    cancel_requested_at  INTEGER,
    created_at           INTEGER NOT NULL,
    finished_at          INTEGER
);

-- Claim order within a queue, available jobs only.
CREATE INDEX jobs_claim ON jobs (queue, priority, available_at, id) WHERE state = 'available';
-- The reaper's one query: running jobs by lease expiry.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- Running counts per queue, for the caps.
CREATE INDEX jobs_running ON jobs (queue) WHERE state = 'running';
-- Scheduled and retryable jobs by the instant they become available.
CREATE INDEX jobs_due ON jobs (available_at) WHERE state IN ('scheduled', 'retryable');
-- At most one live job per unique key.
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'cancelled');
-- Listing by state, newest first (keyset paging).
CREATE INDEX jobs_state ON jobs (state, id);
-- Pruning finished jobs.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    event    TEXT    NOT NULL,
    epoch    INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,
    worker   TEXT,
    reason   TEXT,
    actor    TEXT    NOT NULL,
    detail   TEXT
);
CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE run_output (
    job_id  INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    output  BLOB    NOT NULL,
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE queues (
    name        TEXT PRIMARY KEY,
    concurrency INTEGER,
    paused      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
