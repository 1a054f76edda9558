-- Where a DISABLED tenant module was turned off from: a module disabled while in use
-- (ENABLED, UP_TO_DATE) may be turned back on by its tenant; one rejected before approval
-- (PENDING_APPROVAL) or turned off in ERROR is requested again; one turned off while
-- SUSPENDED is lifted only by a Master Admin. Rows disabled before this column existed are
-- read from `enabled_at` (set once the module was first enabled).
ALTER TABLE tenant_modules ADD COLUMN disabled_from TEXT;
UPDATE tenant_modules SET disabled_from = CASE WHEN enabled_at IS NULL THEN 'PENDING_APPROVAL' ELSE 'ENABLED' END
WHERE status = 'DISABLED';

-- Who cancelled a run: a cancelled run first runs its compensations (state `compensating`),
-- then ends `cancelled` instead of `failed`.
ALTER TABLE steward_runs ADD COLUMN cancelled_by TEXT;
