-- The SaaS module lifecycle (SPEC §4.1). Statuses are upper-case names checked here and by the
-- types in src/domain; money is exact NUMERIC, never floating point.

CREATE TABLE tenants (
    id              BIGSERIAL PRIMARY KEY,
    slug            TEXT        NOT NULL UNIQUE,
    name            TEXT        NOT NULL,
    internal_tester BOOLEAN     NOT NULL DEFAULT false,
    beta_opt_in     BOOLEAN     NOT NULL DEFAULT false,
    webhook_url     TEXT,
    webhook_secret  TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE core_modules (
    slug                TEXT        PRIMARY KEY CHECK (slug ~ '^[a-z][a-z0-9_]{1,40}$'),
    name                TEXT        NOT NULL,
    description         TEXT        NOT NULL DEFAULT '',
    pricing_tier        TEXT        NOT NULL DEFAULT '',
    dependencies        JSONB       NOT NULL DEFAULT '[]',
    maturity            TEXT        NOT NULL CHECK (maturity IN ('PLANNED', 'IN_DEVELOPMENT', 'ALPHA', 'BETA', 'RC', 'GA', 'MAINTENANCE', 'DEPRECATED', 'RETIRED')),
    data_retention_days INTEGER     CHECK (data_retention_days > 0),
    successor           TEXT,
    sunset_date         DATE,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE core_module_versions (
    id               BIGSERIAL PRIMARY KEY,
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
    settings_schema  JSONB,
    tables_created   JSONB       NOT NULL DEFAULT '[]',
    -- When this version's tables were created in this database (a version's migration runs
    -- once per database; later tenants are only activated).
    migrated_at      TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
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
    provisioning     JSONB,
    requested_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    enabled_at       TIMESTAMPTZ,
    upgraded_at      TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, module)
);
CREATE INDEX tenant_modules_by_module ON tenant_modules (module, status);

CREATE TABLE tenant_module_settings (
    tenant_id  BIGINT      NOT NULL,
    module     TEXT        NOT NULL,
    settings   JSONB       NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, module),
    FOREIGN KEY (tenant_id, module) REFERENCES tenant_modules (tenant_id, module)
);

CREATE TABLE module_usage_logs (
    id             BIGSERIAL PRIMARY KEY,
    tenant_id      BIGINT        NOT NULL,
    module         TEXT          NOT NULL,
    route          TEXT          NOT NULL DEFAULT '',
    tokens         BIGINT        NOT NULL DEFAULT 0,
    row_count      BIGINT        NOT NULL DEFAULT 0,
    estimated_cost NUMERIC(18, 6) NOT NULL DEFAULT 0,
    latency_ms     INTEGER       NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ   NOT NULL DEFAULT now()
);
CREATE INDEX module_usage_logs_by_time ON module_usage_logs (created_at, tenant_id, module);

CREATE TABLE tenant_module_monthly_cost (
    tenant_id   BIGINT         NOT NULL,
    module      TEXT           NOT NULL,
    month       DATE           NOT NULL,
    calls       BIGINT         NOT NULL,
    tokens      BIGINT         NOT NULL,
    row_count   BIGINT         NOT NULL,
    cost        NUMERIC(18, 6) NOT NULL,
    computed_at TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, module, month)
);

CREATE TABLE audit_logs (
    id        BIGSERIAL PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor     TEXT        NOT NULL,
    action    TEXT        NOT NULL,
    tenant_id BIGINT,
    module    TEXT,
    entity    TEXT        NOT NULL,
    before    JSONB,
    after     JSONB
);
CREATE INDEX audit_logs_by_tenant ON audit_logs (tenant_id, at);

CREATE TABLE plans (
    id   BIGSERIAL PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL
);

CREATE TABLE plan_modules (
    plan_id  BIGINT      NOT NULL REFERENCES plans (id),
    module   TEXT        NOT NULL REFERENCES core_modules (slug),
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, module)
);

CREATE TABLE subscriptions (
    id         BIGSERIAL PRIMARY KEY,
    tenant_id  BIGINT      NOT NULL REFERENCES tenants (id),
    plan_id    BIGINT      NOT NULL REFERENCES plans (id),
    status     TEXT        NOT NULL CHECK (status IN ('active', 'inactive', 'cancelled', 'expired')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ
);
CREATE INDEX subscriptions_active ON subscriptions (plan_id, tenant_id) WHERE status = 'active';
