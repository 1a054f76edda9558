//! The lifecycle primitives SQLite does in its own dialect: module migrations with triggers
//! that name each column (SQLite has no `to_json(row)`), seeding, undoing versions and
//! streaming dumps. The rules around them live in `store/sql/` and `lifecycle/`.

use crate::domain::DomainError;
use crate::domain::ident::{ModuleTable, Slug, check_setting_key, quote_ident};
use crate::store::domain::{TenantId, write_lines};
use crate::store::sql::modules::{active_statuses, as_migration_error};
use crate::store::{StoreError, StoreResult};
use sqlx::sqlite::SqliteConnection;

/// See [`crate::store::DomainStore::module_table_dump`].
pub(super) async fn table_dump(
    pool: &sqlx::SqlitePool,
    table: &ModuleTable,
    columns: &[String],
    tenant: Option<TenantId>,
    out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
) -> StoreResult<u64> {
    let pairs: Vec<String> = columns
        .iter()
        .map(|c| {
            check_setting_key(c)?;
            Ok(format!("'{c}', t.{}", quote_ident(c)))
        })
        .collect::<Result<_, DomainError>>()?;
    let sql = format!(
        "SELECT json_object({}) FROM {} t WHERE ?1 IS NULL OR tenant_id = ?1 \
         ORDER BY tenant_id, created_at",
        pairs.join(", "),
        table.quoted()
    );
    let rows = sqlx::query_scalar::<_, String>(&sql)
        .bind(tenant)
        .fetch(pool);
    write_lines(rows, out).await
}

/// The triggers steward gives each module table, three kinds for each of three operations:
/// `scope` (during a post-upgrade step, rows of tenants it does not run for are skipped),
/// `frozen` (a tenant's rows do not change while its module is not in use), `held` (nor do
/// the rows a purge exports, until it has deleted them: the tenant module's `purge_before`) and
/// `audit`.
const TRIGGER_KINDS: [&str; 4] = ["scope", "frozen", "held", "audit"];
const TRIGGER_OPS: [(&str, &str); 3] = [("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")];

fn trigger_name(table: &ModuleTable, kind: &str, op: &str) -> String {
    quote_ident(&format!("{table}_{kind}_{}", op.to_lowercase()))
}

/// See [`crate::store::sql::Conn::table_triggers`]. SQLite has no `to_json(row)`, so a
/// trigger names each column: after a version adds or drops columns they are made again.
pub(super) async fn table_triggers(
    conn: &mut SqliteConnection,
    slug: &Slug,
    table: &ModuleTable,
    columns: &[String],
) -> StoreResult<()> {
    table_triggers_drop(conn, table).await?;
    // The names come from the catalog's SQL: each is checked before it goes in a trigger.
    if let Some(column) = columns.iter().find(|c| check_setting_key(c).is_err()) {
        return Err(StoreError::Migration(format!(
            "module table {table} has a column named {column:?}: use a-z, 0-9 and _"
        )));
    }
    let name = table.quoted();
    let module = slug.as_str(); // validated: [a-z0-9_] only
    let entity = table.as_str(); // validated likewise
    let active = active_statuses();
    // Who wrote which row (its key) and which columns, never the values: a row purged or
    // archived must not live on in audit_logs.
    let has_id = columns.iter().any(|c| c == "id");
    let key = |row: &str| match has_id {
        true => format!("json_object('id', {row}.\"id\")"),
        false => "json_object('id', NULL)".to_string(),
    };
    let names = columns.iter().map(|c| format!("'{c}'"));
    let all_columns = format!("json_array({})", names.collect::<Vec<_>>().join(", "));
    let changed = columns.iter().map(|c| {
        let q = quote_ident(c);
        format!("CASE WHEN OLD.{q} IS NOT NEW.{q} THEN '{c}' END")
    });
    let changed_columns = format!(
        "(SELECT json_group_array(value) FROM json_each(json_array({})) WHERE value IS NOT NULL)",
        changed.collect::<Vec<_>>().join(", ")
    );
    // During a post-upgrade step (`steward_post_upgrade` holds its tenants) the freeze
    // gives way to the step's scope and rows are not audited one by one (the upgrade is);
    // a purge (`steward_purging`) deletes rows already in a verified export.
    let stepping = "EXISTS (SELECT 1 FROM steward_post_upgrade)";
    let purging = "EXISTS (SELECT 1 FROM steward_purging)";
    for (op, row) in TRIGGER_OPS {
        let (before, after) = match op {
            "INSERT" => (
                "NULL".to_string(),
                format!("json_set({}, '$.changed', json({all_columns}))", key("NEW")),
            ),
            "UPDATE" => (
                key("OLD"),
                format!(
                    "json_set({}, '$.changed', json({changed_columns}))",
                    key("NEW")
                ),
            ),
            _ => (key("OLD"), "NULL".to_string()),
        };
        let not_purging = match op {
            "DELETE" => format!(" AND NOT {purging}"),
            _ => String::new(),
        };
        let held_rows: &[&str] = match op {
            "INSERT" => &["NEW"],
            "UPDATE" => &["OLD", "NEW"],
            _ => &["OLD"],
        };
        let held = held_rows
            .iter()
            .map(|r| format!("(h.tenant_id = {r}.tenant_id AND {r}.created_at < h.purge_before)"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let statements = [
            format!(
                "BEFORE {op} ON {name} FOR EACH ROW WHEN {stepping} AND {row}.tenant_id \
                 NOT IN (SELECT tenant_id FROM steward_post_upgrade) \
                 BEGIN SELECT RAISE(IGNORE); END"
            ),
            format!(
                "BEFORE {op} ON {name} FOR EACH ROW WHEN NOT {stepping}{not_purging} \
                 AND NOT EXISTS (SELECT 1 FROM tenant_modules WHERE tenant_id = {row}.tenant_id \
                   AND module = '{module}' AND status IN ({active})) \
                 BEGIN SELECT RAISE(ABORT, 'module {module} is not in use by this tenant: its data is frozen'); END"
            ),
            format!(
                "BEFORE {op} ON {name} FOR EACH ROW WHEN NOT {stepping}{not_purging} \
                 AND EXISTS (SELECT 1 FROM tenant_modules h WHERE h.module = '{module}' \
                   AND h.purge_before IS NOT NULL AND ({held})) \
                 BEGIN SELECT RAISE(ABORT, 'rows of this tenant in {entity} created before its purge cutoff \
                 are being exported and deleted: they cannot be written until the purge ends'); END"
            ),
            format!(
                "AFTER {op} ON {name} FOR EACH ROW WHEN NOT {stepping}{not_purging} \
                 BEGIN INSERT INTO audit_logs (actor, action, tenant_id, module, entity, before, after) \
                 VALUES ('database', 'row.{}', {row}.tenant_id, '{module}', '{entity}', {before}, {after}); END",
                op.to_lowercase()
            ),
        ];
        for (kind, body) in TRIGGER_KINDS.into_iter().zip(statements) {
            let trigger = trigger_name(table, kind, op);
            sqlx::query(&format!("CREATE TRIGGER {trigger} {body}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// See [`crate::store::sql::Conn::table_triggers_drop`].
pub(super) async fn table_triggers_drop(
    conn: &mut SqliteConnection,
    table: &ModuleTable,
) -> StoreResult<()> {
    for kind in TRIGGER_KINDS {
        for (op, _) in TRIGGER_OPS {
            let trigger = trigger_name(table, kind, op);
            sqlx::query(&format!("DROP TRIGGER IF EXISTS {trigger}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Run post-upgrade SQL for `tenants` only: the module tables' scope triggers skip every other
/// tenant's rows while `steward_post_upgrade` holds them (see [`table_triggers`]).
pub(super) async fn post_upgrade(
    conn: &mut SqliteConnection,
    tenants: &[TenantId],
    posts: &[String],
) -> StoreResult<()> {
    if tenants.is_empty() || posts.iter().all(|p| p.trim().is_empty()) {
        return Ok(());
    }
    for tenant in tenants {
        sqlx::query("INSERT INTO steward_post_upgrade (tenant_id) VALUES (?1)")
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
    }
    let mut outcome = Ok(());
    for post in posts.iter().filter(|s| !s.trim().is_empty()) {
        outcome = sqlx::Executor::execute(&mut *conn, post.as_str())
            .await
            .map(drop)
            .map_err(|e| as_migration_error(e.into()));
        if outcome.is_err() {
            break;
        }
    }
    sqlx::query("DELETE FROM steward_post_upgrade")
        .execute(&mut *conn)
        .await?;
    outcome
}
