-- Runs of schedules (SPEC §7, §8, §11): what happened to each firing after
-- it fired, pressure deferrals, probes, pressure signals and the audit log.

-- The ledger row follows its job: first claim, then its end.
ALTER TABLE firings ADD COLUMN claimed_at INTEGER;
ALTER TABLE firings ADD COLUMN slot_wait_ms INTEGER;
ALTER TABLE firings ADD COLUMN running_at_claim INTEGER;
ALTER TABLE firings ADD COLUMN finished_at INTEGER;
ALTER TABLE firings ADD COLUMN state TEXT;
ALTER TABLE firings ADD COLUMN failure_reason TEXT;
ALTER TABLE firings ADD COLUMN duration_ms INTEGER;
ALTER TABLE firings ADD COLUMN turns INTEGER;
ALTER TABLE firings ADD COLUMN max_turns INTEGER;
ALTER TABLE firings ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0;
-- A job's firing row (claim and settle look it up).
CREATE INDEX firings_job ON firings (job_id) WHERE job_id IS NOT NULL;
-- Forced firings not yet claimed: claimed first, past the caps.
CREATE INDEX firings_forced ON firings (job_id)
    WHERE outcome = 'forced' AND claimed_at IS NULL AND finished_at IS NULL;
-- Retention pruning, oldest first.
CREATE INDEX firings_at ON firings (at);

ALTER TABLE schedules ADD COLUMN defer_until INTEGER;
ALTER TABLE schedules ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN probe_job INTEGER;

CREATE TABLE pressure (
    source     TEXT    PRIMARY KEY,
    raised_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL -- JSON
);
