-- The run sweeper's lookups start from the few rows they are about, not from every active run:
-- a dead or cancelled step job leads to its step through `job_id` (only current steps are
-- indexed), and fanned-out steps are found among the waiting ones.
CREATE INDEX steward_run_steps_job ON steward_run_steps (job_id) WHERE state IN ('queued', 'compensating');
CREATE INDEX steward_run_steps_waiting ON steward_run_steps (run_id, idx) WHERE state = 'waiting';
