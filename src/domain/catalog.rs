//! The module catalog (SPEC §4.1: `core_modules` and `core_module_versions`), one module per
//! file in `catalog/*.toml`.
//!
//! ```toml
//! slug = "inventory"                 # ^[a-z][a-z0-9_]{1,40}$
//! name = "Inventory panel"
//! description = "Stock levels per tenant"
//! pricing_tier = "standard"          # free text
//! maturity = "GA"                    # PLANNED … RETIRED
//! dependencies = []                  # slugs of other catalog modules (default none)
//! data_retention_days = 365          # optional, > 0: rows older than this are purged
//! successor = "inventory_pro"        # optional, a catalog module
//! sunset_date = "2027-06-30"         # optional, YYYY-MM-DD
//!
//! [[versions]]                       # at least one, in increasing semver order
//! version = "1.0.0"                  # MAJOR.MINOR.PATCH
//! build_hash = "3f2a9c1"
//! changelog = "First release"        # default ""
//! tables = ["tenant_inventory_items"]   # tables_created: each tenant_<slug>_<name>
//! up_sql = '''CREATE TABLE tenant_inventory_items (...);'''
//! down_sql = '''DROP TABLE tenant_inventory_items;'''
//! pre_upgrade_sql = ""               # optional (blank = none)
//! post_upgrade_sql = ""              # optional (blank = none)
//! settings_schema = '''{"type": "object"}'''   # optional: a JSON Schema, a JSON object
//! ```
//!
//! A version's `tables` are the tables its `up_sql` creates; a module's tables at a version are
//! those of every version up to it ([`ModuleDef::tables_through`]).
//!
//! Everything is validated at load: slugs and table names (so no catalog value can break out
//! of an identifier), semver, version order, JSON schemas, and across files dependencies,
//! successors, duplicate slugs, tables claimed by two modules and dependency cycles. An error
//! names the file, the line and the problem: `catalog/inventory.toml:12: invalid module table …`.

use super::ident::{ModuleTable, Slug};
use super::maturity::Maturity;
use crate::definitions::{line_of, read_toml_dir};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A catalog file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A definition is malformed, or refers to something the catalog does not have.
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A validated catalog module (`core_modules`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleDef {
    pub slug: Slug,
    pub name: String,
    pub description: String,
    pub pricing_tier: String,
    pub maturity: Maturity,
    /// Modules that must be enabled for a tenant first; all in the catalog.
    pub dependencies: Vec<Slug>,
    pub data_retention_days: Option<u32>,
    /// The module that replaces this one; in the catalog.
    pub successor: Option<Slug>,
    /// `YYYY-MM-DD`, a valid date (see [`ModuleDef::sunset`]).
    pub sunset_date: Option<String>,
    /// In increasing semver order, never empty once loaded.
    pub versions: Vec<VersionDef>,
    /// The file it was read from.
    pub source: PathBuf,
    /// The line of its `slug`.
    pub line: usize,
}

/// A validated version of a module (`core_module_versions`).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionDef {
    /// As written: `MAJOR.MINOR.PATCH`.
    pub version: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub build_hash: String,
    pub changelog: String,
    /// `tables_created`: the tables this version's `up_sql` creates.
    pub tables: Vec<ModuleTable>,
    pub up_sql: String,
    pub down_sql: String,
    /// `None` when absent or blank.
    pub pre_upgrade_sql: Option<String>,
    /// `None` when absent or blank.
    pub post_upgrade_sql: Option<String>,
    /// A JSON object (a JSON Schema for the tenant's settings); `None` when absent or blank.
    pub settings_schema: Option<serde_json::Value>,
}

impl VersionDef {
    /// Whether going from `other` to this version crosses a major version (a tables backup
    /// comes first). Only the MAJOR number counts, also below 1.0.0.
    pub fn is_major_bump_from(&self, other: &VersionDef) -> bool {
        self.major > other.major
    }

    /// `(major, minor, patch)`, for ordering.
    pub fn triple(&self) -> (u32, u32, u32) {
        (self.major, self.minor, self.patch)
    }
}

impl ModuleDef {
    /// A version by its text (`"1.0.0"`).
    pub fn version(&self, version: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&VersionDef> {
        self.versions.last()
    }

    /// The tables that exist at `version`: those created by it and every earlier version, in
    /// order, without repeats. Empty if the version is unknown.
    pub fn tables_through(&self, version: &str) -> Vec<&ModuleTable> {
        let Some(end) = self.versions.iter().position(|v| v.version == version) else {
            return Vec::new();
        };
        let mut tables: Vec<&ModuleTable> = Vec::new();
        for table in self.versions[..=end].iter().flat_map(|v| &v.tables) {
            if !tables.contains(&table) {
                tables.push(table);
            }
        }
        tables
    }

    /// Every table any version creates.
    pub fn all_tables(&self) -> Vec<&ModuleTable> {
        match self.latest() {
            Some(latest) => self.tables_through(&latest.version),
            None => Vec::new(),
        }
    }

    /// The sunset date as a date.
    pub fn sunset(&self) -> Option<chrono::NaiveDate> {
        self.sunset_date
            .as_deref()
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleFile {
    slug: Spanned<String>,
    name: Spanned<String>,
    description: String,
    pricing_tier: String,
    maturity: Spanned<String>,
    #[serde(default)]
    dependencies: Vec<Spanned<String>>,
    data_retention_days: Option<Spanned<i64>>,
    successor: Option<Spanned<String>>,
    sunset_date: Option<Spanned<String>>,
    versions: Spanned<Vec<Spanned<VersionFile>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFile {
    version: Spanned<String>,
    build_hash: Spanned<String>,
    #[serde(default)]
    changelog: String,
    #[serde(default)]
    tables: Vec<Spanned<String>>,
    up_sql: Spanned<String>,
    down_sql: Spanned<String>,
    pre_upgrade_sql: Option<String>,
    post_upgrade_sql: Option<String>,
    settings_schema: Option<Spanned<String>>,
}

/// A parsed module with the lines the cross-file checks report.
struct Located {
    def: ModuleDef,
    /// One per dependency, in order.
    dependency_lines: Vec<usize>,
    successor_line: Option<usize>,
    /// Every declared table with its line.
    table_lines: Vec<(ModuleTable, usize)>,
}

/// Every catalog module, by slug.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    modules: BTreeMap<String, ModuleDef>,
}

/// `MAJOR.MINOR.PATCH`, each a number without leading zeros that fits a u32.
fn parse_semver(text: &str) -> Result<(u32, u32, u32), &'static str> {
    fn number(part: &str) -> Result<u32, &'static str> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must be MAJOR.MINOR.PATCH (three numbers, e.g. 1.0.0)");
        }
        if part.len() > 1 && part.starts_with('0') {
            return Err("has a number with a leading zero");
        }
        part.parse::<u32>()
            .map_err(|_| "has a number that is too large")
    }
    let parts: Vec<&str> = text.split('.').collect();
    let [major, minor, patch] = parts.as_slice() else {
        return Err("must be MAJOR.MINOR.PATCH (three numbers, e.g. 1.0.0)");
    };
    Ok((number(major)?, number(minor)?, number(patch)?))
}

/// `YYYY-MM-DD`, and a real date.
fn valid_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
}

/// `None` for an absent or blank text.
fn non_blank(text: Option<&str>) -> Option<String> {
    text.filter(|t| !t.trim().is_empty()).map(str::to_string)
}

/// Whether `target` is among the dependencies of `from`, directly or not.
fn depends_on(modules: &BTreeMap<String, Located>, from: &str, target: &str) -> bool {
    let mut stack = vec![from.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(slug) = stack.pop() {
        if slug == target {
            return true;
        }
        if !seen.insert(slug.clone()) {
            continue;
        }
        if let Some(module) = modules.get(&slug) {
            stack.extend(
                module
                    .def
                    .dependencies
                    .iter()
                    .map(|d| d.as_str().to_string()),
            );
        }
    }
    false
}

impl Catalog {
    /// Load every `*.toml` of a directory (in path order) and check the references between
    /// modules.
    pub fn load_dir(dir: &Path) -> Result<Catalog, CatalogError> {
        let files =
            read_toml_dir(dir).map_err(|(path, source)| CatalogError::Io { path, source })?;
        let mut modules: BTreeMap<String, Located> = BTreeMap::new();
        // Table name → (module slug, file, line) of the module that declared it first.
        let mut owners: BTreeMap<String, (String, PathBuf, usize)> = BTreeMap::new();
        for (path, text) in files {
            let module = parse_located(&path, &text)?;
            let def = &module.def;
            let slug = def.slug.as_str().to_string();
            if let Some(existing) = modules.get(&slug) {
                return Err(CatalogError::Invalid {
                    path: def.source.clone(),
                    line: def.line,
                    message: format!(
                        "module `{slug}` is already defined in {}:{}",
                        existing.def.source.display(),
                        existing.def.line
                    ),
                });
            }
            for (table, line) in &module.table_lines {
                match owners.get(table.as_str()) {
                    Some((owner, owner_path, owner_line)) if *owner != slug => {
                        return Err(CatalogError::Invalid {
                            path: def.source.clone(),
                            line: *line,
                            message: format!(
                                "table `{table}` is already declared by module `{owner}` ({}:{owner_line})",
                                owner_path.display()
                            ),
                        });
                    }
                    Some(_) => {}
                    None => {
                        owners.insert(
                            table.as_str().to_string(),
                            (slug.clone(), def.source.clone(), *line),
                        );
                    }
                }
            }
            modules.insert(slug, module);
        }
        check_links(&modules)?;
        Ok(Catalog {
            modules: modules
                .into_iter()
                .map(|(slug, located)| (slug, located.def))
                .collect(),
        })
    }

    /// Parse and validate one module file (references to other modules are checked by
    /// [`Catalog::load_dir`]).
    pub fn parse(path: &Path, text: &str) -> Result<ModuleDef, CatalogError> {
        parse_located(path, text).map(|located| located.def)
    }

    /// The catalog as it was at each module's first release: every module with its first
    /// version only (the demo provisions from it, then publishes the rest and upgrades).
    pub fn first_releases(&self) -> Catalog {
        let mut first = self.clone();
        for module in first.modules.values_mut() {
            module.versions.truncate(1);
        }
        first
    }

    /// A module by slug.
    pub fn get(&self, slug: &str) -> Option<&ModuleDef> {
        self.modules.get(slug)
    }

    /// Every module, by slug.
    pub fn iter(&self) -> impl Iterator<Item = &ModuleDef> {
        self.modules.values()
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// Dependencies and successors name catalog modules, and dependencies have no cycle.
fn check_links(modules: &BTreeMap<String, Located>) -> Result<(), CatalogError> {
    let invalid = |module: &Located, line: usize, message: String| CatalogError::Invalid {
        path: module.def.source.clone(),
        line,
        message,
    };
    for module in modules.values() {
        let slug = module.def.slug.as_str();
        for (dependency, line) in module.def.dependencies.iter().zip(&module.dependency_lines) {
            if !modules.contains_key(dependency.as_str()) {
                return Err(invalid(
                    module,
                    *line,
                    format!(
                        "module `{slug}` depends on `{dependency}`, which is not in the catalog"
                    ),
                ));
            }
        }
        if let (Some(successor), Some(line)) = (&module.def.successor, module.successor_line)
            && !modules.contains_key(successor.as_str())
        {
            return Err(invalid(
                module,
                line,
                format!("successor `{successor}` of module `{slug}` is not in the catalog"),
            ));
        }
    }
    for module in modules.values() {
        let slug = module.def.slug.as_str();
        for (dependency, line) in module.def.dependencies.iter().zip(&module.dependency_lines) {
            if depends_on(modules, dependency.as_str(), slug) {
                return Err(invalid(
                    module,
                    *line,
                    format!(
                        "dependency cycle: module `{slug}` depends on `{dependency}`, which depends on `{slug}`"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn parse_located(path: &Path, text: &str) -> Result<Located, CatalogError> {
    let invalid = |line: usize, message: String| CatalogError::Invalid {
        path: path.to_path_buf(),
        line,
        message,
    };
    let file: ModuleFile = toml::from_str(text).map_err(|err| {
        let line = err.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        invalid(line, err.message().trim_end().to_string())
    })?;
    let at = |span: Range<usize>| line_of(text, span.start);

    let line = at(file.slug.span());
    let slug = Slug::parse(file.slug.get_ref()).map_err(|e| invalid(line, e.to_string()))?;

    let name = file.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(invalid(
            at(file.name.span()),
            format!("module `{slug}` needs a name"),
        ));
    }

    let maturity = file.maturity.get_ref().parse::<Maturity>().map_err(|e| {
        let known: Vec<&str> = Maturity::ALL.iter().map(|m| m.as_str()).collect();
        invalid(
            at(file.maturity.span()),
            format!("{e} (one of {})", known.join(", ")),
        )
    })?;

    let mut dependencies: Vec<Slug> = Vec::new();
    let mut dependency_lines = Vec::new();
    for dependency in &file.dependencies {
        let dep_line = at(dependency.span());
        let dep = Slug::parse(dependency.get_ref())
            .map_err(|e| invalid(dep_line, format!("dependency: {e}")))?;
        if dep == slug {
            return Err(invalid(
                dep_line,
                format!("module `{slug}` cannot depend on itself"),
            ));
        }
        if dependencies.contains(&dep) {
            return Err(invalid(
                dep_line,
                format!("dependency `{dep}` is listed twice"),
            ));
        }
        dependencies.push(dep);
        dependency_lines.push(dep_line);
    }

    let data_retention_days = match &file.data_retention_days {
        Some(days) => {
            let value = *days.get_ref();
            match u32::try_from(value) {
                Ok(days) if days > 0 => Some(days),
                _ => {
                    return Err(invalid(
                        at(days.span()),
                        format!(
                            "data_retention_days must be a number of days above 0, not {value}"
                        ),
                    ));
                }
            }
        }
        None => None,
    };

    let (successor, successor_line) = match &file.successor {
        Some(successor) => {
            let successor_line = at(successor.span());
            let parsed = Slug::parse(successor.get_ref())
                .map_err(|e| invalid(successor_line, format!("successor: {e}")))?;
            if parsed == slug {
                return Err(invalid(
                    successor_line,
                    format!("module `{slug}` cannot be its own successor"),
                ));
            }
            (Some(parsed), Some(successor_line))
        }
        None => (None, None),
    };

    let sunset_date = match &file.sunset_date {
        Some(date) => {
            if !valid_date(date.get_ref()) {
                return Err(invalid(
                    at(date.span()),
                    format!(
                        "sunset_date `{}` must be a date written YYYY-MM-DD",
                        date.get_ref()
                    ),
                ));
            }
            Some(date.get_ref().clone())
        }
        None => None,
    };

    if file.versions.get_ref().is_empty() {
        return Err(invalid(
            at(file.versions.span()),
            format!("module `{slug}` needs at least one version"),
        ));
    }
    let mut versions: Vec<VersionDef> = Vec::new();
    // (major, minor, patch) → line, for duplicates.
    let mut seen: BTreeMap<(u32, u32, u32), usize> = BTreeMap::new();
    let mut table_lines: Vec<(ModuleTable, usize)> = Vec::new();
    for entry in file.versions.get_ref() {
        let v = entry.get_ref();
        let version = v.version.get_ref().clone();
        let version_line = at(v.version.span());
        let (major, minor, patch) = parse_semver(&version)
            .map_err(|reason| invalid(version_line, format!("version `{version}` {reason}")))?;
        if let Some(first) = seen.get(&(major, minor, patch)) {
            return Err(invalid(
                version_line,
                format!("version {version} is listed twice (first at line {first})"),
            ));
        }
        if let Some(previous) = versions.last()
            && previous.triple() > (major, minor, patch)
        {
            return Err(invalid(
                version_line,
                format!(
                    "version {version} comes after {}: versions must be listed in increasing order",
                    previous.version
                ),
            ));
        }
        seen.insert((major, minor, patch), version_line);

        if v.build_hash.get_ref().trim().is_empty() {
            return Err(invalid(
                at(v.build_hash.span()),
                format!("version {version} needs a build_hash"),
            ));
        }
        if v.up_sql.get_ref().trim().is_empty() {
            return Err(invalid(
                at(v.up_sql.span()),
                format!("version {version} needs an up_sql"),
            ));
        }
        if v.down_sql.get_ref().trim().is_empty() {
            return Err(invalid(
                at(v.down_sql.span()),
                format!("version {version} needs a down_sql (what undoes its up_sql)"),
            ));
        }

        let mut tables: Vec<ModuleTable> = Vec::new();
        for table in &v.tables {
            let table_line = at(table.span());
            let parsed = ModuleTable::parse(&slug, table.get_ref())
                .map_err(|e| invalid(table_line, e.to_string()))?;
            if tables.contains(&parsed) {
                return Err(invalid(
                    table_line,
                    format!("table `{parsed}` is listed twice in version {version}"),
                ));
            }
            if !v.up_sql.get_ref().contains(parsed.as_str()) {
                return Err(invalid(
                    table_line,
                    format!(
                        "table `{parsed}` is declared by version {version}, but its up_sql does not mention it"
                    ),
                ));
            }
            table_lines.push((parsed.clone(), table_line));
            tables.push(parsed);
        }

        let settings_schema = match &v.settings_schema {
            Some(schema) if !schema.get_ref().trim().is_empty() => {
                let schema_line = at(schema.span());
                let value: serde_json::Value =
                    serde_json::from_str(schema.get_ref()).map_err(|e| {
                        invalid(
                            schema_line,
                            format!("settings_schema of version {version} is not valid JSON: {e}"),
                        )
                    })?;
                if !value.is_object() {
                    return Err(invalid(
                        schema_line,
                        format!(
                            "settings_schema of version {version} must be a JSON object (a JSON Schema)"
                        ),
                    ));
                }
                Some(value)
            }
            _ => None,
        };

        versions.push(VersionDef {
            version,
            major,
            minor,
            patch,
            build_hash: v.build_hash.get_ref().clone(),
            changelog: v.changelog.clone(),
            tables,
            up_sql: v.up_sql.get_ref().clone(),
            down_sql: v.down_sql.get_ref().clone(),
            pre_upgrade_sql: non_blank(v.pre_upgrade_sql.as_deref()),
            post_upgrade_sql: non_blank(v.post_upgrade_sql.as_deref()),
            settings_schema,
        });
    }

    Ok(Located {
        def: ModuleDef {
            slug,
            name,
            description: file.description.clone(),
            pricing_tier: file.pricing_tier.clone(),
            maturity,
            dependencies,
            data_retention_days,
            successor,
            sunset_date,
            versions,
            source: path.to_path_buf(),
            line,
        },
        dependency_lines,
        successor_line,
        table_lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "catalog/inventory.toml";

    /// A valid module; the tests below break one line of it at a time.
    const GOOD: &str = r#"slug = "inventory"
name = "Inventory panel"
description = "Stock levels"
pricing_tier = "standard"
maturity = "GA"
dependencies = []
data_retention_days = 90

[[versions]]
version = "1.0.0"
build_hash = "abc"
changelog = "First"
tables = ["tenant_inventory_items"]
up_sql = "CREATE TABLE tenant_inventory_items (tenant_id BIGINT NOT NULL);"
down_sql = "DROP TABLE tenant_inventory_items;"
settings_schema = '{"type": "object"}'

[[versions]]
version = "2.0.0"
build_hash = "def"
changelog = "Movements"
tables = ["tenant_inventory_movements"]
up_sql = "CREATE TABLE tenant_inventory_movements (tenant_id BIGINT NOT NULL);"
down_sql = "DROP TABLE tenant_inventory_movements;"
post_upgrade_sql = "UPDATE tenant_inventory_items SET tenant_id = tenant_id;"
pre_upgrade_sql = "  "
"#;

    fn parse(text: &str) -> Result<ModuleDef, CatalogError> {
        Catalog::parse(Path::new(FILE), text)
    }

    /// The text must be refused at `line`, with a message containing `needle`.
    #[track_caller]
    fn assert_refused(text: &str, line: usize, needle: &str) {
        let err = parse(text).expect_err("must be refused").to_string();
        assert!(
            err.starts_with(&format!("{FILE}:{line}: ")) && err.contains(needle),
            "expected {FILE}:{line}: …{needle}…, got: {err}"
        );
    }

    /// A minimal valid module; `extra` lands on line 6.
    fn module(slug: &str, table: &str, extra: &str) -> String {
        format!(
            r#"slug = "{slug}"
name = "{slug}"
description = ""
pricing_tier = "free"
maturity = "BETA"
{extra}

[[versions]]
version = "0.1.0"
build_hash = "h"
tables = ["{table}"]
up_sql = "CREATE TABLE {table} (tenant_id BIGINT NOT NULL);"
down_sql = "DROP TABLE {table};"
"#
        )
    }

    fn load(files: &[(&str, String)]) -> Result<Catalog, CatalogError> {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        Catalog::load_dir(dir.path())
    }

    #[track_caller]
    fn assert_load_refused(files: &[(&str, String)], at: &str, needle: &str) {
        let err = load(files).expect_err("must be refused").to_string();
        assert!(
            err.contains(&format!("/{at}: ")) && err.contains(needle),
            "expected {at}: …{needle}…, got: {err}"
        );
    }

    #[test]
    fn the_repository_catalog_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        let catalog = Catalog::load_dir(&dir).expect("the demo catalog loads");
        assert_eq!(catalog.len(), 3);
        assert!(!catalog.is_empty());
        let slugs: Vec<&str> = catalog.iter().map(|m| m.slug.as_str()).collect();
        assert_eq!(slugs, ["alert_engine", "chatbot", "inventory"]);

        let inventory = catalog.get("inventory").expect("inventory");
        assert_eq!(inventory.name, "Inventory panel");
        assert_eq!(inventory.maturity, Maturity::Ga);
        assert_eq!(inventory.data_retention_days, Some(365));
        assert!(inventory.dependencies.is_empty());
        let [v1, v2] = inventory.versions.as_slice() else {
            panic!("inventory has two versions: {:?}", inventory.versions);
        };
        assert_eq!(
            (v1.version.as_str(), v2.version.as_str()),
            ("1.0.0", "2.0.0")
        );
        assert!(v2.is_major_bump_from(v1));
        assert!(!v1.is_major_bump_from(v2));
        assert!(v2.post_upgrade_sql.is_some());
        let names = |tables: Vec<&ModuleTable>| -> Vec<String> {
            tables.iter().map(|t| t.as_str().to_string()).collect()
        };
        assert_eq!(
            names(v1.tables.iter().collect()),
            ["tenant_inventory_items"]
        );
        assert_eq!(
            names(v2.tables.iter().collect()),
            ["tenant_inventory_movements"]
        );
        assert_eq!(
            names(inventory.tables_through("2.0.0")),
            ["tenant_inventory_items", "tenant_inventory_movements"]
        );
        assert_eq!(
            names(inventory.tables_through("1.0.0")),
            ["tenant_inventory_items"]
        );
        let schema = v2.settings_schema.as_ref().expect("settings schema");
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["properties"]["low_stock_threshold"]["type"],
            "integer"
        );
        assert_eq!(schema["properties"]["low_stock_threshold"]["minimum"], 0);

        let alerts = catalog.get("alert_engine").expect("alert_engine");
        assert_eq!(alerts.maturity, Maturity::Ga);
        assert_eq!(alerts.data_retention_days, Some(30));
        let deps: Vec<&str> = alerts.dependencies.iter().map(|d| d.as_str()).collect();
        assert_eq!(deps, ["inventory"]);
        let [a1, a2] = alerts.versions.as_slice() else {
            panic!("alert_engine has two versions");
        };
        assert_eq!(
            (a1.version.as_str(), a2.version.as_str()),
            ("1.0.0", "1.1.0")
        );
        assert!(!a2.is_major_bump_from(a1));
        assert!(a2.up_sql.contains("no_such_column"));

        let chatbot = catalog.get("chatbot").expect("chatbot");
        assert_eq!(chatbot.maturity, Maturity::Alpha);
        let [c1, c2] = chatbot.versions.as_slice() else {
            panic!("chatbot has two versions");
        };
        assert_eq!(
            (c1.version.as_str(), c2.version.as_str()),
            ("0.1.0", "0.2.0")
        );
        assert!(!c2.is_major_bump_from(c1));
        assert_eq!(names(chatbot.all_tables()).len(), 2);

        // The SQL sticks to what both PostgreSQL and SQLite run, and leaves indexes on
        // (tenant_id, created_at), triggers, grants and RLS to steward.
        for module in catalog.iter() {
            for version in &module.versions {
                let texts = [
                    Some(&version.up_sql),
                    Some(&version.down_sql),
                    version.pre_upgrade_sql.as_ref(),
                    version.post_upgrade_sql.as_ref(),
                ];
                for sql in texts.into_iter().flatten() {
                    let upper = sql.to_uppercase();
                    for banned in [
                        "SERIAL",
                        "IDENTITY",
                        "AUTOINCREMENT",
                        "TIMESTAMPTZ",
                        "TRIGGER",
                        "GRANT",
                        "POLICY",
                        "ROW LEVEL SECURITY",
                    ] {
                        assert!(
                            !upper.contains(banned),
                            "{} {}: {banned}",
                            module.slug,
                            version.version
                        );
                    }
                }
                for table in &version.tables {
                    let create = format!("CREATE TABLE {table} (");
                    let start = version.up_sql.find(&create).unwrap_or_else(|| {
                        panic!("{} {}: no `{create}`", module.slug, version.version)
                    });
                    let body = &version.up_sql[start..];
                    let body = &body[..body.find(';').unwrap_or(body.len())];
                    for column in [
                        "tenant_id BIGINT NOT NULL",
                        "id BIGINT NOT NULL",
                        "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP",
                        "PRIMARY KEY (tenant_id, id)",
                    ] {
                        assert!(body.contains(column), "{table}: {column}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_valid_module_parses() {
        let module = parse(GOOD).expect("valid");
        assert_eq!(module.slug.as_str(), "inventory");
        assert_eq!(module.line, 1);
        assert_eq!(module.data_retention_days, Some(90));
        assert_eq!(module.versions.len(), 2);
        assert_eq!(module.versions[1].triple(), (2, 0, 0));
        assert_eq!(module.versions[1].pre_upgrade_sql, None, "blank is none");
        assert!(module.versions[1].post_upgrade_sql.is_some());
        assert_eq!(module.versions[1].settings_schema, None);
        assert_eq!(module.latest().map(|v| v.version.as_str()), Some("2.0.0"));
        assert!(module.version("1.0.0").is_some());
        assert!(module.version("3.0.0").is_none());

        let with_sunset = GOOD.replace(
            "data_retention_days = 90",
            "data_retention_days = 90\nsunset_date = \"2027-06-30\"",
        );
        let module = parse(&with_sunset).expect("valid");
        assert_eq!(module.sunset_date.as_deref(), Some("2027-06-30"));
        assert_eq!(
            module.sunset(),
            chrono::NaiveDate::from_ymd_opt(2027, 6, 30)
        );
    }

    #[test]
    fn a_bad_slug_is_refused_on_its_line() {
        assert_refused(
            &GOOD.replace("slug = \"inventory\"", "slug = \"Inventory\""),
            1,
            "invalid module slug `Inventory`",
        );
        assert_refused(
            &GOOD.replace(
                "slug = \"inventory\"",
                r#"slug = "inventory\"; DROP TABLE tenants; --""#,
            ),
            1,
            "invalid module slug",
        );
    }

    #[test]
    fn tables_outside_the_module_prefix_are_refused_on_their_line() {
        assert_refused(
            &GOOD.replace(
                r#"tables = ["tenant_inventory_items"]"#,
                r#"tables = ["tenant_other_x"]"#,
            ),
            13,
            "invalid module table `tenant_other_x`",
        );
        assert_refused(
            &GOOD.replace(
                r#"tables = ["tenant_inventory_items"]"#,
                r#"tables = ["tenant_inventory_x\"; DROP TABLE tenants; --"]"#,
            ),
            13,
            "invalid module table",
        );
        assert_refused(
            &GOOD.replace(
                r#"tables = ["tenant_inventory_items"]"#,
                "tables = [\n  \"tenant_inventory_items\",\n  \"tenant_inventory_\",\n]",
            ),
            15,
            "invalid module table `tenant_inventory_`",
        );
        assert_refused(
            &GOOD.replace(
                r#"tables = ["tenant_inventory_items"]"#,
                r#"tables = ["tenant_inventory_items", "tenant_inventory_items"]"#,
            ),
            13,
            "listed twice",
        );
        assert_refused(
            &GOOD.replace(
                r#"tables = ["tenant_inventory_items"]"#,
                r#"tables = ["tenant_inventory_stock"]"#,
            ),
            13,
            "up_sql does not mention it",
        );
    }

    #[test]
    fn bad_semver_is_refused_on_its_line() {
        for bad in [
            "1.0",
            "1.0.0.0",
            "v1.0.0",
            "1.0.0-beta",
            "01.0.0",
            "1..0",
            "1.0.99999999999",
        ] {
            assert_refused(
                &GOOD.replace("version = \"1.0.0\"", &format!("version = \"{bad}\"")),
                10,
                &format!("version `{bad}`"),
            );
        }
    }

    #[test]
    fn duplicate_and_decreasing_versions_are_refused() {
        assert_refused(
            &GOOD.replace("version = \"2.0.0\"", "version = \"1.0.0\""),
            19,
            "version 1.0.0 is listed twice (first at line 10)",
        );
        assert_refused(
            &GOOD.replace("version = \"2.0.0\"", "version = \"0.9.0\""),
            19,
            "versions must be listed in increasing order",
        );
        let no_versions =
            GOOD.split("[[versions]]").next().expect("head").to_string() + "versions = []\n";
        assert_refused(&no_versions, 9, "needs at least one version");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_on_their_line() {
        assert_refused(
            &GOOD.replace("description =", "colour = \"red\"\ndescription ="),
            3,
            "colour",
        );
        assert_refused(
            &GOOD.replace("changelog = \"First\"", "changelog = \"First\"\nsql = \"\""),
            13,
            "sql",
        );
        assert_refused(
            &GOOD.replace("\"GA\"", "\"ga\""),
            5,
            "unknown maturity `ga`",
        );
        assert_refused(
            &GOOD.replace("data_retention_days = 90", "data_retention_days = 0"),
            7,
            "data_retention_days",
        );
        assert_refused(
            &GOOD.replace("data_retention_days = 90", "data_retention_days = -5"),
            7,
            "data_retention_days",
        );
        for bad in ["2027-02-30", "2027-6-30", "30/06/2027", "tomorrow"] {
            assert_refused(
                &GOOD.replace(
                    "data_retention_days = 90",
                    &format!("data_retention_days = 90\nsunset_date = \"{bad}\""),
                ),
                8,
                "sunset_date",
            );
        }
        assert_refused(
            &GOOD.replace("dependencies = []", "dependencies = [\"inventory\"]"),
            6,
            "cannot depend on itself",
        );
        assert_refused(
            &GOOD.replace("dependencies = []", "dependencies = [\"Bad-Slug\"]"),
            6,
            "dependency: invalid module slug",
        );
        assert_refused(
            &GOOD.replace(
                "dependencies = []",
                "dependencies = [\"chatbot\", \"chatbot\"]",
            ),
            6,
            "listed twice",
        );
        assert_refused(
            &GOOD.replace("dependencies = []", "successor = \"inventory\""),
            6,
            "its own successor",
        );
        assert_refused(
            &GOOD.replace(
                "down_sql = \"DROP TABLE tenant_inventory_items;\"",
                "down_sql = \"\"",
            ),
            15,
            "needs a down_sql",
        );
        assert_refused("slug = \"inventory\"\n[[versions]\n", 2, "");
    }

    #[test]
    fn settings_schemas_must_be_json_objects() {
        assert_refused(
            &GOOD.replace(r#"'{"type": "object"}'"#, r#"'{"type": '"#),
            16,
            "settings_schema of version 1.0.0 is not valid JSON",
        );
        assert_refused(
            &GOOD.replace(r#"'{"type": "object"}'"#, "'[1, 2]'"),
            16,
            "must be a JSON object",
        );
        assert_refused(
            &GOOD.replace(r#"'{"type": "object"}'"#, "'{type: object}'"),
            16,
            "not valid JSON",
        );
    }

    #[test]
    fn references_between_files_are_checked() {
        let catalog = load(&[
            (
                "a.toml",
                module("alpha", "tenant_alpha_x", "dependencies = [\"beta\"]"),
            ),
            (
                "b.toml",
                module("beta", "tenant_beta_x", "successor = \"alpha\""),
            ),
        ])
        .expect("valid");
        assert_eq!(catalog.len(), 2);
        assert_eq!(catalog.get("alpha").map(|m| m.dependencies.len()), Some(1));
        assert!(catalog.get("gamma").is_none());

        assert_load_refused(
            &[(
                "a.toml",
                module("alpha", "tenant_alpha_x", "dependencies = [\"ghost\"]"),
            )],
            "a.toml:6",
            "depends on `ghost`, which is not in the catalog",
        );
        assert_load_refused(
            &[(
                "a.toml",
                module("alpha", "tenant_alpha_x", "successor = \"ghost\""),
            )],
            "a.toml:6",
            "successor `ghost` of module `alpha` is not in the catalog",
        );
        assert_load_refused(
            &[
                ("a.toml", module("alpha", "tenant_alpha_x", "")),
                ("b.toml", module("alpha", "tenant_alpha_y", "")),
            ],
            "b.toml:1",
            "module `alpha` is already defined in",
        );
        assert_load_refused(
            &[
                (
                    "a.toml",
                    module("alpha", "tenant_alpha_x", "dependencies = [\"beta\"]"),
                ),
                (
                    "b.toml",
                    module("beta", "tenant_beta_x", "dependencies = [\"gamma\"]"),
                ),
                (
                    "c.toml",
                    module("gamma", "tenant_gamma_x", "dependencies = [\"alpha\"]"),
                ),
            ],
            "a.toml:6",
            "dependency cycle",
        );
        // `tenant_inventory_items_log` fits both `inventory` and `inventory_items`.
        assert_load_refused(
            &[
                (
                    "a.toml",
                    module("inventory", "tenant_inventory_items_log", ""),
                ),
                (
                    "b.toml",
                    module("inventory_items", "tenant_inventory_items_log", ""),
                ),
            ],
            "b.toml:11",
            "already declared by module `inventory`",
        );
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Catalog::load_dir(&dir.path().join("nope")).expect_err("missing");
        assert!(matches!(err, CatalogError::Io { .. }), "{err}");
        let empty = Catalog::load_dir(dir.path()).expect("an empty catalog");
        assert!(empty.is_empty());
    }
}
