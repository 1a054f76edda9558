-- A run records the definition it started with (its steps, and their content hash as the
-- version), and finishes on it even when the workflow's file changes (src/workflow/engine.rs).
-- Runs started before this migration have none: they follow the current file.
ALTER TABLE steward_runs ADD COLUMN version TEXT;
ALTER TABLE steward_runs ADD COLUMN definition JSONB;
