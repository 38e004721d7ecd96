-- Supervision and webhooks (SPEC §10).

-- When the current (or last) run last made progress (its claim, a turn
-- count that went up, a new progress note, a checkpoint), when the
-- supervisor found it stalled, and when it escalated the stall.
ALTER TABLE jobs ADD COLUMN progress_at INTEGER;
ALTER TABLE jobs ADD COLUMN stalled_at INTEGER;
ALTER TABLE jobs ADD COLUMN escalated_at INTEGER;
-- Runs going when this migration applies count from their claim.
UPDATE jobs SET progress_at = claimed_at WHERE state = 'running';
-- The supervisor reads running jobs through jobs_lease (live leases only),
-- so no index of its own is added: the claim and finish paths keep the
-- index maintenance they had.

-- The webhook outbox: one row per event per webhook, written in the
-- transaction of the change it reports.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    target       TEXT    NOT NULL, -- the webhook's name
    event        TEXT    NOT NULL, -- escalation | schedule_auto_paused | job_failed
    delivery     TEXT    NOT NULL UNIQUE, -- X-Reeve-Delivery, the same on every retry
    body         TEXT    NOT NULL, -- JSON, sent as is
    created_at   INTEGER NOT NULL,
    due_at       INTEGER NOT NULL, -- next attempt; a claim moves it past its lease
    attempts     INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER,
    gave_up_at   INTEGER,
    last_error   TEXT
);
-- Pending rows by due time (the claim and the delivery task's sleep).
CREATE INDEX outbox_due ON outbox (due_at, id)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
-- Finished rows, oldest first (retention pruning).
CREATE INDEX outbox_done ON outbox (created_at)
    WHERE delivered_at IS NOT NULL OR gave_up_at IS NOT NULL;
