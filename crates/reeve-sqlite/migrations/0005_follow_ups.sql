-- Follow-up jobs (SPEC §10): the job to enqueue when this one succeeds, as
-- JSON ({"queue"?, "kind", "payload"?, "priority"?, "max_attempts"?}), or
-- NULL for none.
ALTER TABLE jobs ADD COLUMN on_success TEXT;
