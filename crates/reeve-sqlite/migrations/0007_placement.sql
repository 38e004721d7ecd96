-- Placement (SPEC §6): the labels a job's claimer must have, as a JSON array
-- of `key=value` strings in canonical order (sorted, no duplicates), or NULL
-- when the job has no requirements, which is the common case.
ALTER TABLE jobs ADD COLUMN requires TEXT;

-- The claim index splits in two. Unpinned jobs keep an index of their own,
-- so the common claim (`requires IS NULL`) still walks only the head of a
-- covering index; pinned jobs, few, are matched against the claimer's
-- labels through theirs. Neither holds back the other.
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (queue, priority, available_at, id)
    WHERE state = 'available' AND requires IS NULL;
CREATE INDEX jobs_claim_pinned ON jobs (queue, priority, available_at, id)
    WHERE state = 'available' AND requires IS NOT NULL;
