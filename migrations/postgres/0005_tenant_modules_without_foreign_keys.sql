-- tenant_modules is written in bulk (a plan-module sync gives 100,000 tenants a module in one
-- statement): its foreign-key checks, one trigger call per row and per key, cost more than the
-- whole insert. Every writer takes tenants, modules and versions from the rows themselves
-- (src/store/*_domain.rs), so the keys are kept by construction instead.
ALTER TABLE tenant_module_settings DROP CONSTRAINT IF EXISTS tenant_module_settings_tenant_id_module_fkey;
ALTER TABLE tenant_modules DROP CONSTRAINT IF EXISTS tenant_modules_tenant_id_fkey;
ALTER TABLE tenant_modules DROP CONSTRAINT IF EXISTS tenant_modules_module_fkey;
ALTER TABLE tenant_modules DROP CONSTRAINT IF EXISTS tenant_modules_version_id_fkey;
ALTER TABLE tenant_modules DROP CONSTRAINT IF EXISTS tenant_modules_previous_version_id_fkey;
