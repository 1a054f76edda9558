//! The lifecycle primitives PostgreSQL does in its own dialect: module migrations with
//! triggers, row-level security and grants; post-upgrade catch-up per tenant; seeding;
//! streaming dumps. The rules around them live in `store/sql/` and `lifecycle/`.

use crate::domain::ident::{ModuleTable, Slug, quote_ident};
use crate::store::StoreResult;
use crate::store::domain::{TenantId, write_lines};
use crate::store::sql::data::purge_lock;
use crate::store::sql::modules::{active_statuses, as_migration_error};
use sqlx::postgres::PgConnection;

/// One module migration at a time in this database (`shared`: many at once, none while a
/// migration holds it).
pub(super) async fn migration_lock(conn: &mut PgConnection, shared: bool) -> StoreResult<()> {
    let sql = match shared {
        true => "SELECT pg_advisory_xact_lock_shared(hashtext('steward.module_migration'))",
        false => "SELECT pg_advisory_xact_lock(hashtext('steward.module_migration'))",
    };
    sqlx::query(sql).execute(&mut *conn).await?;
    Ok(())
}

/// See [`crate::store::sql::Conn::roles_ensure`].
pub(super) async fn roles_ensure(conn: &mut PgConnection) -> StoreResult<()> {
    sqlx::Executor::execute(&mut *conn, APP_ROLE).await?;
    Ok(())
}

/// See [`crate::store::DomainStore::module_table_dump`].
pub(super) async fn table_dump(
    pool: &sqlx::PgPool,
    table: &ModuleTable,
    tenant: Option<TenantId>,
    out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
) -> StoreResult<u64> {
    let sql = format!(
        "SELECT to_jsonb(t)::text FROM {} t WHERE $1::int8 IS NULL OR tenant_id = $1 \
         ORDER BY tenant_id, created_at",
        table.quoted()
    );
    let rows = sqlx::query_scalar::<_, String>(&sql)
        .bind(tenant)
        .fetch(pool);
    write_lines(rows, out).await
}

/// The audit trigger every module table gets (created or replaced under the migration lock):
/// who wrote which row (its key) and which columns, never the values, so that a row purged
/// or archived does not live on here. steward's own bulk changes (migrations and post-upgrade
/// steps are audited as the upgrade; purges have their verified export) are not audited row
/// by row: they are marked in `steward_privileged`, which only steward's role writes.
const AUDIT_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION steward_module_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
BEGIN
    IF steward_privileged('migration') OR steward_privileged('post_upgrade') THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' AND steward_privileged('purge') THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit_logs (actor, action, tenant_id, module, entity, before, after)
    -- Who: the database role the change came from (the role set by SET ROLE, else the login),
    -- then the application's own user as it claims it in `app.actor` (any session may set
    -- that, so it never stands alone: `tenant_app_role for user:42`).
    VALUES (CASE WHEN current_setting('role') <> 'none' THEN current_setting('role')
                 ELSE session_user::text END
            || coalesce(' for ' || nullif(current_setting('app.actor', true), ''), ''),
            'row.' || lower(TG_OP),
            CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END,
            TG_ARGV[0], TG_TABLE_NAME,
            CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE jsonb_build_object('id', to_jsonb(OLD) -> 'id') END,
            CASE WHEN TG_OP = 'DELETE' THEN NULL
                 ELSE jsonb_build_object('id', to_jsonb(NEW) -> 'id', 'changed',
                      (SELECT coalesce(jsonb_agg(n.key ORDER BY n.key), '[]'::jsonb)
                         FROM jsonb_each(to_jsonb(NEW)) n
                        WHERE TG_OP = 'INSERT' OR n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key)) END);
    RETURN NULL;
END
$fn$"#;

/// Freezes a tenant's rows while its module is not in use (`{active}`: the statuses of
/// [`active_statuses`]; not DISABLED, SUSPENDED, …): no row is
/// written, changed or deleted for it. steward's own changes pass: a schema migration (every
/// tenant's rows), a post-upgrade step (only the tenant it runs for: other tenants' rows are
/// skipped, and a frozen tenant gets the step when its module is enabled again), a purge or
/// an archive (deletions after a verified export). While a purge holds a tenant module (its
/// `purge_before`), the rows it exports (created before that cutoff) are frozen too.
const GUARD_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION steward_module_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    row_tenant BIGINT;
    in_use BOOLEAN;
    held BOOLEAN;
BEGIN
    IF TG_OP = 'DELETE' THEN row_tenant := OLD.tenant_id; ELSE row_tenant := NEW.tenant_id; END IF;
    IF steward_privileged('migration') THEN
        NULL;
    ELSIF steward_privileged('post_upgrade') THEN
        IF row_tenant IS DISTINCT FROM
           nullif(current_setting('app.current_tenant_id', true), '')::bigint THEN
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'DELETE' AND steward_privileged('purge') THEN
        NULL;
    ELSE
        -- Held by this transaction to its end, before the read below: a purge hold is placed
        -- only while no writer holds it (see migration 0024).
        PERFORM pg_advisory_xact_lock_shared({purge_lock});
        SELECT status IN ({active}),
               (TG_OP <> 'INSERT' AND OLD.created_at < purge_before)
                 OR (TG_OP <> 'DELETE' AND NEW.created_at < purge_before)
          FROM tenant_modules WHERE tenant_id = row_tenant AND module = TG_ARGV[0]
          INTO in_use, held;
        IF NOT coalesce(in_use, false) THEN
            RAISE EXCEPTION 'module % is not in use by tenant %: its data is frozen', TG_ARGV[0], row_tenant
                USING ERRCODE = 'check_violation';
        END IF;
        IF coalesce(held, false) THEN
            RAISE EXCEPTION 'rows of tenant % in % created before its purge''s cutoff are being exported and deleted: they cannot be written until the purge ends',
                row_tenant, TG_TABLE_NAME USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$fn$"#;

/// See [`crate::store::sql::Conn::table_triggers`]: the freeze and audit triggers, which call
/// the functions above and read the whole row (`to_jsonb`): columns added by later versions
/// are audited without touching them. The functions are made as this version writes them
/// once per transaction (`make_functions`), and whenever they are missing (a savepoint
/// rolled them back).
pub(super) async fn table_triggers(
    conn: &mut PgConnection,
    slug: &Slug,
    table: &ModuleTable,
    make_functions: bool,
) -> StoreResult<()> {
    let missing: bool = sqlx::query_scalar(
        "SELECT count(*) < 2 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = current_schema() \
           AND p.proname IN ('steward_module_audit', 'steward_module_guard')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if make_functions || missing {
        let guard = GUARD_FUNCTION
            .replace("{active}", &active_statuses())
            .replace("{purge_lock}", &purge_lock("TG_ARGV[0]", "row_tenant"));
        for functions in [AUDIT_FUNCTION, &guard] {
            sqlx::Executor::execute(&mut *conn, functions).await?;
        }
    }
    let name = table.quoted();
    let module = slug.as_str(); // validated: [a-z0-9_] only
    // `pg_trigger.tgtype`: row-level (1), BEFORE (2), on INSERT (4), DELETE (8), UPDATE (16).
    for (trigger, when, function, tgtype) in [
        ("frozen", "BEFORE", "steward_module_guard", 31_i16),
        ("audit", "AFTER", "steward_module_audit", 29_i16),
    ] {
        let trigger = format!("{table}_{trigger}");
        // A trigger already as written here (its events, enabled, calling its function) is
        // left alone: dropping it would lock the table against its readers until the
        // migration commits.
        let current: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE t.tgrelid = to_regclass($1) AND t.tgname = $2 AND t.tgtype = $3 \
               AND t.tgenabled = 'O' AND p.proname = $4)",
        )
        .bind(&name)
        .bind(&trigger)
        .bind(tgtype)
        .bind(function)
        .fetch_one(&mut *conn)
        .await?;
        if current {
            continue;
        }
        let trigger = quote_ident(&trigger);
        sqlx::Executor::execute(
            &mut *conn,
            format!(
                "DROP TRIGGER IF EXISTS {trigger} ON {name}; \
                 CREATE TRIGGER {trigger} {when} INSERT OR UPDATE OR DELETE ON {name} \
                 FOR EACH ROW EXECUTE FUNCTION {function}('{module}')"
            )
            .as_str(),
        )
        .await?;
    }
    Ok(())
}

/// Mark (or unmark) this transaction as steward's own `kind` of change for the module tables'
/// triggers (see [`GUARD_FUNCTION`]).
pub(super) async fn privilege(
    conn: &mut PgConnection,
    kind: &'static str,
    on: bool,
) -> StoreResult<()> {
    let sql = if on {
        "INSERT INTO steward_privileged (txid, kind) VALUES (txid_current(), $1) \
         ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM steward_privileged WHERE txid = txid_current() AND kind = $1"
    };
    sqlx::query(sql).bind(kind).execute(&mut *conn).await?;
    Ok(())
}

/// `tenant_app_role` (cluster-wide, created once) and its use of this schema.
const APP_ROLE: &str = r#"
DO $do$
BEGIN
    BEGIN
        CREATE ROLE tenant_app_role NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO tenant_app_role', current_schema());
END
$do$"#;

/// See [`crate::store::sql::Conn::table_adopt`].
pub(super) async fn table_adopt(conn: &mut PgConnection, table: &ModuleTable) -> StoreResult<()> {
    let name = table.quoted();
    let statements = [
        format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"),
        format!(
            "CREATE POLICY tenant_isolation ON {name} \
             USING (tenant_id = nullif(current_setting('app.current_tenant_id', true), '')::bigint) \
             WITH CHECK (tenant_id = nullif(current_setting('app.current_tenant_id', true), '')::bigint)"
        ),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO tenant_app_role"),
    ];
    for statement in statements {
        sqlx::Executor::execute(&mut *conn, statement.as_str()).await?;
    }
    Ok(())
}

/// See [`crate::store::sql::Conn::post_upgrade`]: steward's `post_upgrade` change, with
/// `app.current_tenant_id` set to each tenant in turn (the guard skips other tenants' rows).
pub(super) async fn post_upgrade(
    conn: &mut PgConnection,
    tenants: &[TenantId],
    posts: &[String],
) -> StoreResult<()> {
    privilege(conn, "post_upgrade", true).await?;
    for tenant in tenants {
        sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *conn)
            .await?;
        for post in posts {
            sqlx::Executor::execute(&mut *conn, post.as_str())
                .await
                .map_err(|e| as_migration_error(e.into()))?;
        }
    }
    sqlx::query("SELECT set_config('app.current_tenant_id', '', true)")
        .execute(&mut *conn)
        .await?;
    privilege(conn, "post_upgrade", false).await
}
