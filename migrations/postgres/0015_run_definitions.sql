-- A run records the version of its workflow's definition it started with (a hash of its
-- steps), and finishes on those steps even when the workflow's file changes
-- (src/workflow/engine.rs). Each version's steps are kept once, in steward_workflow_versions.
-- Runs started before this migration have none: they follow the current file.
ALTER TABLE steward_runs ADD COLUMN version TEXT;

CREATE TABLE steward_workflow_versions (
    workflow   TEXT        NOT NULL,
    version    TEXT        NOT NULL,
    steps      JSONB       NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, version)
);
