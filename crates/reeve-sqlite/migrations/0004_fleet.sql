-- The fleet (SPEC §6, §10): worker registrations, checkpoints and mail.

-- One row per registration: a fresh id each time a worker process starts.
CREATE TABLE workers (
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    host            TEXT,
    kinds           TEXT    NOT NULL, -- JSON array
    queues          TEXT    NOT NULL, -- JSON array
    labels          TEXT    NOT NULL, -- JSON array
    slots           INTEGER NOT NULL,
    heartbeats      INTEGER NOT NULL,
    version         TEXT,
    registered_at   INTEGER NOT NULL,
    last_seen_at    INTEGER NOT NULL,
    deregistered_at INTEGER
);
-- The fleet view, latest seen first.
CREATE INDEX workers_last_seen ON workers (last_seen_at);

-- The latest checkpoint of a job; deleted with the job when it is pruned.
CREATE TABLE checkpoints (
    job_id   INTEGER PRIMARY KEY,
    epoch    INTEGER NOT NULL,
    data     BLOB    NOT NULL,
    size     INTEGER NOT NULL,
    saved_at INTEGER NOT NULL
);

-- Messages to a job's runs (keyed by job, so they survive retries);
-- deleted with the job when it is pruned.
CREATE TABLE mail (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    sender  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    read_at INTEGER
);
-- A job's mail, oldest first.
CREATE INDEX mail_job ON mail (job_id, id);
