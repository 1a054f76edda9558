-- A compensated step keeps its forward job and timing; its compensation has its own job and
-- timing, so a run's page shows how long the step ran and, separately, how long its undo took.
ALTER TABLE steward_run_steps ADD COLUMN compensation_job_id BIGINT;
ALTER TABLE steward_run_steps ADD COLUMN compensation_started_at TIMESTAMPTZ;
ALTER TABLE steward_run_steps ADD COLUMN compensation_finished_at TIMESTAMPTZ;
-- The run sweeper finds a dead compensation job's step through it (as 0003 does for forward jobs).
CREATE INDEX steward_run_steps_compensation_job ON steward_run_steps (compensation_job_id)
    WHERE state = 'compensating';
-- Steps compensating or compensated before this migration hold their compensation's job in
-- `job_id` (the forward job is not known any more): move it where the engine now looks.
UPDATE steward_run_steps SET compensation_job_id = job_id,
    compensation_finished_at = CASE WHEN state = 'compensated' THEN finished_at END
    WHERE state IN ('compensating', 'compensated');
