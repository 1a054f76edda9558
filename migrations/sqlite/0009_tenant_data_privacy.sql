-- The audit of module tables now records a row's key and the names of the columns written,
-- never their values (a purged or archived row must not live on in audit_logs): the rows
-- audited before are reduced to the same.
UPDATE audit_logs
   SET before = CASE WHEN before IS NULL THEN NULL ELSE json_object('id', json_extract(before, '$.id')) END,
       after = CASE WHEN after IS NULL THEN NULL
                    ELSE json_object('id', json_extract(after, '$.id'),
                                     'changed', json((SELECT json_group_array(key) FROM json_each(audit_logs.after)))) END
 WHERE action LIKE 'row.%';

-- While a post-upgrade step runs, it holds the tenants it runs for here: the module tables'
-- triggers skip every other tenant's rows (a frozen tenant gets the step when its module is
-- enabled again) and audit the step as the upgrade, not row by row.
CREATE TABLE steward_post_upgrade (tenant_id BIGINT NOT NULL);
