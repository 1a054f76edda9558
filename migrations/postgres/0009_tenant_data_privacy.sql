-- steward's own bulk changes of module tables (schema migrations, post-upgrade steps, purges
-- and archives) are marked by a row for their transaction here. Only steward's role writes
-- this table, and the module tables' triggers (SECURITY DEFINER) read it through
-- steward_privileged(): unlike a session setting, a member of tenant_app_role cannot switch
-- the freeze or the audit off.
CREATE TABLE steward_privileged (
    txid BIGINT NOT NULL,
    kind TEXT   NOT NULL,
    PRIMARY KEY (txid, kind)
);

CREATE FUNCTION steward_privileged(what TEXT) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS
$fn$ SELECT EXISTS (SELECT 1 FROM steward_privileged WHERE txid = txid_current() AND kind = what) $fn$;

-- The audit of module tables now records a row's key and the names of the columns written,
-- never their values (a purged or archived row must not live on in audit_logs): the rows
-- audited before are reduced to the same.
UPDATE audit_logs
   SET before = CASE WHEN before IS NULL THEN NULL ELSE jsonb_build_object('id', before -> 'id') END,
       after = CASE WHEN after IS NULL THEN NULL
                    ELSE jsonb_build_object('id', after -> 'id',
                                            'changed', (SELECT coalesce(jsonb_agg(k ORDER BY k), '[]'::jsonb)
                                                          FROM jsonb_object_keys(after) AS k)) END
 WHERE action LIKE 'row.%';
