-- Schedules and the firing ledger (SPEC §7, §11).

-- The schedule that fired a job, and the nominal fire time.
ALTER TABLE jobs ADD COLUMN schedule TEXT;
ALTER TABLE jobs ADD COLUMN nominal_at INTEGER;
-- A schedule's live firings (the overlap policy's question).
CREATE INDEX jobs_schedule_live ON jobs (schedule)
    WHERE schedule IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');

CREATE TABLE schedules (
    name             TEXT    PRIMARY KEY,
    spec             TEXT    NOT NULL, -- ScheduleSpec as JSON
    status           TEXT    NOT NULL, -- active | paused
    paused_reason    TEXT,
    next_fire_at     INTEGER,
    anchor           INTEGER,
    last_nominal     INTEGER,
    generic_streak   INTEGER NOT NULL DEFAULT 0,
    budget_streak    INTEGER NOT NULL DEFAULT 0,
    max_turns_set_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
-- Due schedules, by their next fire time.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE status = 'active';

-- One row per nominal fire time of a schedule (or one skipped range).
CREATE TABLE firings (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule      TEXT    NOT NULL,
    nominal_at    INTEGER NOT NULL,
    nominal_until INTEGER,
    outcome       TEXT    NOT NULL,
    job_id        INTEGER,
    at            INTEGER NOT NULL,
    detail        TEXT,
    UNIQUE (schedule, nominal_at)
);
