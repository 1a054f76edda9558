//! SQL written once. The lifecycle, run and data stores are one implementation
//! ([`domain`], [`runs`], [`data`]) over a small connection interface, [`Conn`], that each
//! backend implements: PostgreSQL in `store/postgres/conn.rs`, SQLite in `store/sqlite/conn.rs`.
//!
//! Statements are written in the portable subset both databases speak (`$1` placeholders,
//! `RETURNING`, `ON CONFLICT`, `CAST(x AS TEXT)`, `->>`), plus two tokens each dialect renders:
//! `{now}` (the database's clock: `now()`, or unix milliseconds on SQLite; a span of time
//! bound as [`Arg::Duration`] is added to it or taken from it as it is), `{for_update}`
//! and `{skip_locked}` (a row lock, or rows another transaction holds passed over; SQLite has
//! one writer, held by the store's write transaction instead) and
//! `{date}` and `{decimal}` (a calendar date and an exact amount: `date` and `numeric`, or
//! text on SQLite), `{json_each}(x) d` (the texts of a JSON array, as `d.value`); a list
//! is bound as [`Arg::Ints`] and tested with `x = ANY($n)` (SQLite reads it with `json_each`). Values
//! cross as [`Arg`]s and are read through [`Row`], so a timestamp is a `timestamptz` on
//! PostgreSQL and unix milliseconds on SQLite without the caller knowing. What cannot be said
//! portably (set-based plan sync, table creation with row-level security, streaming dumps) is a
//! method of [`Conn`] or [`SqlStore`] that each backend writes in its own dialect; the hot
//! queue path (`store/*/mod.rs`) stays hand-written per backend, where the benchmarks say so.

pub mod control;
pub mod data;
pub mod domain;
pub mod jobs;
pub mod limits;
pub mod modules;
pub mod plan_sync;
pub mod runs;

use crate::domain::ident::{ModuleTable, Slug};
use crate::store::domain::TenantId;
use crate::store::runs::{CompletionOutcome, StepCompletion};
use crate::store::{StoreError, StoreResult};
use crate::types::{Enqueued, Lease, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::borrow::Cow;

/// Which SQL a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// The statement with this dialect's tokens rendered.
    pub fn render(self, text: &str) -> Cow<'_, str> {
        let sqlite_list = self == Dialect::Sqlite && text.contains("= ANY($");
        if !text.contains('{') && !sqlite_list {
            return Cow::Borrowed(text);
        }
        // `id {in_keys}(SELECT id … LIMIT n){end_keys}`: the keys a limited subquery picks.
        // PostgreSQL reads them as an array, computed once, then probes the primary key: a
        // plain `IN (subquery)` may be planned as a nested loop that re-runs the subquery for
        // every row when the statistics say the table is empty (after a VACUUM of a drained
        // table), which made a 25,000-row prune take minutes.
        let tokens: [(&str, &str); 8] = match self {
            Dialect::Postgres => [
                ("{now}", "now()"),
                ("{for_update}", "FOR UPDATE"),
                ("{skip_locked}", "FOR UPDATE SKIP LOCKED"),
                ("{date}", "date"),
                ("{decimal}", "numeric"),
                ("{in_keys}", "= ANY(ARRAY"),
                ("{end_keys}", ")"),
                ("{json_each}", "jsonb_array_elements_text"),
            ],
            Dialect::Sqlite => [
                ("{now}", "CAST(unixepoch('subsec') * 1000 AS INTEGER)"),
                ("{for_update}", ""),
                ("{skip_locked}", ""),
                ("{date}", "TEXT"),
                ("{decimal}", "TEXT"),
                ("{in_keys}", "IN "),
                ("{end_keys}", ""),
                ("{json_each}", "json_each"),
            ],
        };
        let mut text = text.to_string();
        for (token, sql) in tokens {
            if text.contains(token) {
                text = text.replace(token, sql);
            }
        }
        if sqlite_list {
            while let Some(at) = text.find("= ANY($") {
                let digits = text[at + 7..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .count();
                let n = text[at + 7..at + 7 + digits].to_string();
                let end = at + 7 + digits + 1; // past ")"
                text.replace_range(at..end, &format!("IN (SELECT value FROM json_each(${n}))"));
            }
        }
        Cow::Owned(text)
    }

    /// One of two statements, where the dialects truly differ.
    pub fn pick(self, postgres: &'static str, sqlite: &'static str) -> &'static str {
        match self {
            Dialect::Postgres => postgres,
            Dialect::Sqlite => sqlite,
        }
    }

    /// One of two values, where the dialects truly differ.
    pub fn pick2<T>(self, postgres: T, sqlite: T) -> T {
        match self {
            Dialect::Postgres => postgres,
            Dialect::Sqlite => sqlite,
        }
    }
}

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Int32(Option<i32>),
    Bool(Option<bool>),
    /// `timestamptz` on PostgreSQL, unix milliseconds on SQLite.
    Time(Option<DateTime<Utc>>),
    /// `jsonb` on PostgreSQL, JSON text on SQLite.
    Json(Option<Value>),
    /// A list for `= ANY($n)`: an `int8[]` on PostgreSQL, a JSON array on SQLite.
    Ints(Vec<i64>),
    /// A list of text: a `text[]` on PostgreSQL, a JSON array on SQLite.
    Texts(Vec<String>),
    /// A span of time, added to or subtracted from a time (`{now} - $1`): an `interval` on
    /// PostgreSQL, milliseconds on SQLite.
    Duration(std::time::Duration),
    /// A time compared with a module table's `created_at`: a UTC `timestamp` on PostgreSQL
    /// (right against `timestamp` and `timestamptz` columns alike), `CURRENT_TIMESTAMP` text
    /// on SQLite.
    RowTime(Option<DateTime<Utc>>),
}

macro_rules! arg_from {
    ($variant:ident: $($t:ty => $conv:expr),* $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(value: $t) -> Self {
                let conv: fn($t) -> _ = $conv;
                Arg::$variant(conv(value))
            }
        }
    )*};
}

arg_from!(Text:
    &str => |v| Some(v.to_string()),
    String => Some,
    &String => |v| Some(v.clone()),
    Option<&str> => |v| v.map(str::to_string),
    Option<String> => |v| v,
    &Option<String> => |v| v.clone(),
);
arg_from!(Int: i64 => Some, Option<i64> => |v| v);
arg_from!(Int32: i32 => Some, Option<i32> => |v| v);
arg_from!(Bool: bool => Some);
arg_from!(Ints: Vec<i64> => |v| v, &[i64] => <[i64]>::to_vec, &Vec<i64> => Clone::clone);
arg_from!(Texts: Vec<String> => |v| v);
arg_from!(Time: DateTime<Utc> => Some, Option<DateTime<Utc>> => |v| v);
arg_from!(Duration: std::time::Duration => |v| v);
arg_from!(Json:
    Value => Some,
    &Value => |v| Some(v.clone()),
    Option<Value> => |v| v,
    Option<&Value> => |v| v.cloned(),
    &Option<Value> => |v| v.clone(),
);

/// A statement and its arguments.
#[derive(Debug, Clone)]
pub struct Sql {
    pub text: Cow<'static, str>,
    pub args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// Bind the next `$n`.
    pub fn arg(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }
}

/// `sql!("… $1 … $2", a, b)`: a statement with its arguments in placeholder order.
macro_rules! sql {
    ($text:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::sql::Sql::new($text)$(.arg($arg))*
    };
}
pub(crate) use sql;

/// A row of either backend, read by column name into steward's types.
pub trait Row: Send + Sync {
    fn text(&self, column: &str) -> StoreResult<String>;
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>>;
    fn int(&self, column: &str) -> StoreResult<i64>;
    fn opt_int(&self, column: &str) -> StoreResult<Option<i64>>;
    fn int32(&self, column: &str) -> StoreResult<i32>;
    fn opt_int32(&self, column: &str) -> StoreResult<Option<i32>>;
    fn flag(&self, column: &str) -> StoreResult<bool>;
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>>;
    fn opt_json(&self, column: &str) -> StoreResult<Option<Value>>;

    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        self.opt_time(column)?
            .ok_or_else(|| corrupt(format!("{column} is null")))
    }

    fn json(&self, column: &str) -> StoreResult<Value> {
        Ok(self.opt_json(column)?.unwrap_or(Value::Null))
    }
}

/// A row of either backend.
pub type AnyRow = Box<dyn Row>;

/// The [`Row`] getters that are a plain `try_get` on every backend (inside an `impl Row`).
macro_rules! plain_getters {
    () => {
        fn text(&self, column: &str) -> StoreResult<String> {
            Ok(self.try_get(column)?)
        }
        fn opt_text(&self, column: &str) -> StoreResult<Option<String>> {
            Ok(self.try_get(column)?)
        }
        fn int(&self, column: &str) -> StoreResult<i64> {
            Ok(self.try_get(column)?)
        }
        fn opt_int(&self, column: &str) -> StoreResult<Option<i64>> {
            Ok(self.try_get(column)?)
        }
        fn int32(&self, column: &str) -> StoreResult<i32> {
            Ok(self.try_get(column)?)
        }
        fn opt_int32(&self, column: &str) -> StoreResult<Option<i32>> {
            Ok(self.try_get(column)?)
        }
        fn flag(&self, column: &str) -> StoreResult<bool> {
            Ok(self.try_get(column)?)
        }
    };
}
pub(crate) use plain_getters;

/// A column parsed into a type, for boxed rows.
pub fn parse<T: std::str::FromStr>(row: &dyn Row, column: &str) -> StoreResult<T>
where
    T::Err: std::fmt::Display,
{
    row.text(column)?.parse().map_err(corrupt)
}

/// A stored value that does not decode.
pub fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A connection, or a transaction, of either backend.
///
/// The first four methods run portable statements; the rest are the primitives whose SQL
/// differs per dialect, each written once per backend.
#[async_trait]
pub trait Conn: Send {
    fn dialect(&self) -> Dialect;

    /// Run a statement; how many rows it changed.
    async fn execute(&mut self, sql: Sql) -> StoreResult<u64>;

    async fn fetch_all(&mut self, sql: Sql) -> StoreResult<Vec<AnyRow>>;

    async fn fetch_optional(&mut self, sql: Sql) -> StoreResult<Option<AnyRow>>;

    async fn fetch_one(&mut self, sql: Sql) -> StoreResult<AnyRow> {
        self.fetch_optional(sql)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Insert jobs with the queue's own insert statement; this process's producers of the
    /// queues that got available jobs are woken once the transaction commits. Other nodes are
    /// notified at commit too, except in a step transaction without `notify_nodes` (PostgreSQL
    /// serialises the commits of notifying transactions: the next step's job is picked up by
    /// this node's producers, which it wakes itself).
    async fn jobs_insert(
        &mut self,
        jobs: &[NewJob],
        notify_nodes: bool,
    ) -> StoreResult<Vec<Enqueued>>;

    /// Mark (`on`) or unmark this transaction as steward's own `kind` of change for the module
    /// tables' guard and audit triggers: `purge` (deleting rows already in a verified export:
    /// the export is their record), `migration` and `post_upgrade` (audited as the upgrade).
    /// SQLite marks purges only: its triggers are dropped while a version's SQL runs, and
    /// [`Conn::post_upgrade`] scopes itself.
    async fn privilege(&mut self, kind: &'static str, on: bool) -> StoreResult<()>;

    /// Acknowledge a running job (moved to the completed table), fenced on its lease;
    /// `false` when the lease was lost.
    async fn job_acknowledge(&mut self, lease: Lease, worker: &str) -> StoreResult<bool>;

    /// Run a script of statements without arguments (a module version's SQL).
    async fn script(&mut self, sql: &str) -> StoreResult<()>;

    /// Serialise module migrations (PostgreSQL: a transaction-scoped advisory lock; SQLite's
    /// write transaction already is one). `shared`: for a tenant coming into use, which waits
    /// for a migration but not for another tenant doing the same.
    async fn migration_lock(&mut self, _shared: bool) -> StoreResult<()> {
        Ok(())
    }

    /// Make the database roles a module's SQL may grant to (PostgreSQL's `tenant_app_role`;
    /// SQLite has no roles), before that SQL runs.
    async fn roles_ensure(&mut self) -> StoreResult<()> {
        Ok(())
    }

    /// Give a module table a version's SQL just created (checked and indexed by
    /// `sql/modules.rs`) the access rules of the backend: PostgreSQL's row-level security and
    /// grants to `tenant_app_role` (SQLite has no roles).
    async fn table_adopt(&mut self, _module: &Slug, _table: &ModuleTable) -> StoreResult<()> {
        Ok(())
    }

    /// (Re)make a module table's freeze, post-upgrade scope and audit triggers as this version
    /// writes them (`columns`: the table's, in order; SQLite's triggers name each).
    async fn table_triggers(
        &mut self,
        module: &Slug,
        table: &ModuleTable,
        columns: &[String],
    ) -> StoreResult<()>;

    /// Drop a module table's triggers that name its columns, before SQL that may change them
    /// (PostgreSQL's read the whole row: nothing to drop).
    async fn table_triggers_drop(&mut self, _table: &ModuleTable) -> StoreResult<()> {
        Ok(())
    }

    /// Run post-upgrade SQL for `tenants` only: every other tenant's rows are left as they are.
    async fn post_upgrade(&mut self, tenants: &[TenantId], posts: &[String]) -> StoreResult<()>;

    /// Recompute one month's costs (see [`crate::store::DataStore::cost_aggregate`]).
    async fn costs_aggregate(
        &mut self,
        month: chrono::NaiveDate,
    ) -> StoreResult<crate::store::data::CostAggregated>;
}

/// A write transaction: dropped without [`Tx::commit`], it rolls back.
#[async_trait]
pub trait Tx: Conn {
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// A backend as the shared stores see it: where connections and transactions come from, and
/// the few whole operations a backend does its own way.
#[async_trait]
pub trait SqlStore: Send + Sync + Clone + 'static {
    /// Which SQL this store's connections speak.
    fn sql_dialect(&self) -> Dialect;

    /// A transaction that may write (SQLite: holding the store's write lock until it ends).
    async fn write(&self) -> StoreResult<Box<dyn Tx>>;

    /// A step transaction (see [`Conn::jobs_insert`]).
    async fn write_step(&self) -> StoreResult<Box<dyn Tx>> {
        self.write().await
    }

    /// A short bookkeeping transaction that must not wait behind handlers' work (leader
    /// election, the worker registry): PostgreSQL takes it from the bookkeeping pool.
    async fn write_service(&self) -> StoreResult<Box<dyn Tx>> {
        self.write().await
    }

    /// A connection for reads.
    async fn read(&self) -> StoreResult<Box<dyn Conn>>;

    /// Stream a module table's rows (of these `columns`) as JSON lines (see
    /// [`crate::store::DomainStore::module_table_dump`]).
    async fn table_dump(
        &self,
        table: &ModuleTable,
        columns: &[String],
        tenant: Option<TenantId>,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> StoreResult<u64>;

    /// Stream a module table's rows out as text (see
    /// [`crate::store::DataStore::module_rows_export`]).
    async fn rows_export(
        &self,
        table: &ModuleTable,
        columns: &[String],
        tenant: TenantId,
        before: Option<DateTime<Utc>>,
        out: tokio::sync::mpsc::Sender<crate::store::data::RowBatch>,
    ) -> StoreResult<u64>;

    /// Wake the producers of these queues (they got available jobs), on every node.
    async fn queues_woken(&self, queues: Vec<String>) -> StoreResult<()>;

    /// Reclaim the space of the row versions steward's tables left behind (see
    /// [`crate::store::JobAdmin::tables_vacuum`]).
    async fn tables_vacuum(&self, min_dead: u64) -> StoreResult<u64>;

    /// Record a running step's progress where readers see it at once.
    async fn progress_set(&self, run_id: i64, idx: i32, progress: &Value) -> StoreResult<()>;

    /// The latest progress of a step kept outside the database (SQLite), if any.
    fn progress_overlay(&self, _run_id: i64, _idx: i32) -> Option<Value> {
        None
    }

    /// Record step completions in as few transactions as the backend can; `None` to take them
    /// one step transaction each.
    async fn steps_complete_batched(
        &self,
        _items: &[StepCompletion],
    ) -> StoreResult<Option<Vec<CompletionOutcome>>> {
        Ok(None)
    }
}
