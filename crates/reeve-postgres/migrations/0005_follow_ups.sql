-- Follow-up jobs (SPEC §10): the job to enqueue when this one succeeds, as
-- TEXT holding JSON ({"queue"?, "kind", "payload"?, "priority"?,
-- "max_attempts"?}, like the other JSON columns), or NULL for none.
ALTER TABLE jobs ADD COLUMN on_success TEXT;
