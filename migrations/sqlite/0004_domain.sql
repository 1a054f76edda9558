-- The SaaS module lifecycle (SPEC §4.1), SQLite dialect: timestamps in unix milliseconds, JSON
-- as text, money as exact decimal text (never REAL). Statuses are upper-case names checked here and by the
-- types in src/domain.

CREATE TABLE tenants (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    slug            TEXT        NOT NULL UNIQUE,
    name            TEXT        NOT NULL,
    internal_tester INTEGER NOT NULL DEFAULT 0,
    beta_opt_in     INTEGER NOT NULL DEFAULT 0,
    webhook_url     TEXT,
    webhook_secret  TEXT,
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

CREATE TABLE core_modules (
    slug                TEXT        PRIMARY KEY ,
    name                TEXT        NOT NULL,
    description         TEXT        NOT NULL DEFAULT '',
    pricing_tier        TEXT        NOT NULL DEFAULT '',
    dependencies        TEXT       NOT NULL DEFAULT '[]',
    maturity            TEXT        NOT NULL CHECK (maturity IN ('PLANNED', 'IN_DEVELOPMENT', 'ALPHA', 'BETA', 'RC', 'GA', 'MAINTENANCE', 'DEPRECATED', 'RETIRED')),
    data_retention_days INTEGER     CHECK (data_retention_days > 0),
    successor           TEXT,
    sunset_date         TEXT,
    created_at          INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at          INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

CREATE TABLE core_module_versions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    module           TEXT        NOT NULL REFERENCES core_modules (slug),
    version          TEXT        NOT NULL,
    major            INTEGER     NOT NULL,
    minor            INTEGER     NOT NULL,
    patch            INTEGER     NOT NULL,
    build_hash       TEXT        NOT NULL DEFAULT '',
    changelog        TEXT        NOT NULL DEFAULT '',
    up_sql           TEXT        NOT NULL,
    down_sql         TEXT        NOT NULL DEFAULT '',
    pre_upgrade_sql  TEXT,
    post_upgrade_sql TEXT,
    settings_schema  TEXT,
    tables_created   TEXT       NOT NULL DEFAULT '[]',
    -- When this version's tables were created in this database (a version's migration runs
    -- once per database; later tenants are only activated).
    migrated_at      INTEGER,
    created_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    UNIQUE (module, version)
);

CREATE TABLE tenant_modules (
    tenant_id        BIGINT      NOT NULL REFERENCES tenants (id),
    module           TEXT        NOT NULL REFERENCES core_modules (slug),
    status           TEXT        NOT NULL CHECK (status IN ('REQUESTED', 'PENDING_APPROVAL', 'PROVISIONING', 'ENABLED', 'UPGRADING', 'UP_TO_DATE', 'SUSPENDED', 'DISABLED', 'ARCHIVED', 'ERROR')),
    version_id       BIGINT      REFERENCES core_module_versions (id),
    previous_version_id BIGINT   REFERENCES core_module_versions (id),
    status_reason    TEXT,
    -- What provisioning did for this tenant (tables, triggers, grants, row-level security).
    provisioning     TEXT,
    requested_at     INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    enabled_at       INTEGER,
    upgraded_at      INTEGER,
    updated_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (tenant_id, module)
);
CREATE INDEX tenant_modules_by_module ON tenant_modules (module, status);

CREATE TABLE tenant_module_settings (
    tenant_id  BIGINT      NOT NULL,
    module     TEXT        NOT NULL,
    settings   TEXT       NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (tenant_id, module),
    FOREIGN KEY (tenant_id, module) REFERENCES tenant_modules (tenant_id, module)
);

CREATE TABLE module_usage_logs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      BIGINT        NOT NULL,
    module         TEXT          NOT NULL,
    route          TEXT          NOT NULL DEFAULT '',
    tokens         BIGINT        NOT NULL DEFAULT 0,
    row_count      BIGINT        NOT NULL DEFAULT 0,
    estimated_cost TEXT NOT NULL DEFAULT 0,
    latency_ms     INTEGER       NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE INDEX module_usage_logs_by_time ON module_usage_logs (created_at, tenant_id, module);

CREATE TABLE tenant_module_monthly_cost (
    tenant_id   BIGINT         NOT NULL,
    module      TEXT           NOT NULL,
    month       TEXT           NOT NULL,
    calls       BIGINT         NOT NULL,
    tokens      BIGINT         NOT NULL,
    row_count   BIGINT         NOT NULL,
    cost        TEXT NOT NULL,
    computed_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (tenant_id, module, month)
);

CREATE TABLE audit_logs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    actor     TEXT        NOT NULL,
    action    TEXT        NOT NULL,
    tenant_id BIGINT,
    module    TEXT,
    entity    TEXT        NOT NULL,
    before    TEXT,
    after     TEXT
);
CREATE INDEX audit_logs_by_tenant ON audit_logs (tenant_id, at);

CREATE TABLE plans (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL
);

CREATE TABLE plan_modules (
    plan_id  BIGINT      NOT NULL REFERENCES plans (id),
    module   TEXT        NOT NULL REFERENCES core_modules (slug),
    added_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (plan_id, module)
);

CREATE TABLE subscriptions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  BIGINT      NOT NULL REFERENCES tenants (id),
    plan_id    BIGINT      NOT NULL REFERENCES plans (id),
    status     TEXT        NOT NULL CHECK (status IN ('active', 'inactive', 'cancelled', 'expired')),
    started_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    expires_at INTEGER
);
CREATE INDEX subscriptions_active ON subscriptions (plan_id, tenant_id) WHERE status = 'active';
