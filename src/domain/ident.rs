//! Identifiers built from catalog data (module slugs, module table names, setting keys):
//! validated before any SQL is built, and quoted wherever they appear in SQL. A value that
//! could break out of an identifier is refused here, with the rule it broke.

use super::DomainError;
use std::fmt;

/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

fn invalid(what: &'static str, value: &str, reason: &'static str) -> DomainError {
    DomainError::InvalidIdentifier {
        what,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// `[a-z][a-z0-9_]*`, `min..=max` long.
fn check_word(what: &'static str, value: &str, min: usize, max: usize) -> Result<(), DomainError> {
    let mut chars = value.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err(invalid(
            what,
            value,
            "must start with a lower-case letter a-z",
        ));
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(invalid(what, value, "may hold only a-z, 0-9 and _"));
    }
    if value.len() < min || value.len() > max {
        return Err(invalid(what, value, "has the wrong length"));
    }
    Ok(())
}

/// A module slug: `^[a-z][a-z0-9_]{1,40}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(String);

impl Slug {
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        check_word("module slug", value, 2, 41)?;
        Ok(Slug(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of this module's tables: `tenant_<slug>_`.
    pub fn table_prefix(&self) -> String {
        format!("tenant_{}_", self.0)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A module table's name: `tenant_<slug>_<name>`, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleTable(String);

impl ModuleTable {
    /// Validate a table name a version declares for module `slug`.
    pub fn parse(slug: &Slug, value: &str) -> Result<Self, DomainError> {
        check_word("module table", value, 1, MAX_IDENTIFIER)?;
        let Some(rest) = value.strip_prefix(&slug.table_prefix()) else {
            return Err(invalid(
                "module table",
                value,
                "must be named tenant_<module slug>_<name>",
            ));
        };
        if rest.is_empty() {
            return Err(invalid(
                "module table",
                value,
                "needs a name after the prefix",
            ));
        }
        Ok(ModuleTable(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL.
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }
}

impl fmt::Display for ModuleTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key of a tenant module's settings: `[a-z][a-z0-9_]{0,62}`.
pub fn check_setting_key(key: &str) -> Result<(), DomainError> {
    check_word("setting key", key, 1, MAX_IDENTIFIER)
}

/// Quote an identifier for PostgreSQL and SQLite (double quotes, inner quotes doubled). Used
/// on validated names too, so that a reserved word is never read as a keyword.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A schema or table name steward splices into SQL that it did not write itself (the
/// configured PostgreSQL schema, table names read from the catalog): `[a-z_][a-z0-9_]{0,47}`.
pub fn validate_identifier(name: &str) -> Result<&str, DomainError> {
    let what = "schema or table name";
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        return Err(invalid(what, name, "must start with a-z or _"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(invalid(what, name, "may hold only a-z, 0-9 and _"));
    }
    if name.len() > 48 {
        return Err(invalid(what, name, "is longer than 48"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BREAKOUTS: &[&str] = &[
        "x\"; DROP TABLE tenants; --",
        "inventory; DELETE FROM audit_logs",
        "a b",
        "Inventory",
        "1inventory",
        "_inventory",
        "inventory-panel",
        "invent\u{f3}rio",
        "inv\0entory",
        "",
        "i",
        "a234567890123456789012345678901234567890123",
    ];

    #[test]
    fn slugs_follow_the_pattern_and_breakouts_are_refused() {
        for good in ["inventory", "alert_engine", "ab", "chatbot2"] {
            assert_eq!(Slug::parse(good).unwrap().as_str(), good);
        }
        for bad in BREAKOUTS {
            let err = Slug::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_identifier", "{bad:?}");
        }
    }

    #[test]
    fn module_tables_carry_their_modules_prefix() {
        let slug = Slug::parse("inventory").unwrap();
        assert_eq!(
            ModuleTable::parse(&slug, "tenant_inventory_items")
                .unwrap()
                .quoted(),
            "\"tenant_inventory_items\""
        );
        for bad in [
            "tenant_chatbot_items",
            "tenant_inventory_",
            "items",
            "tenant_inventory_items\"; DROP TABLE x; --",
            "TENANT_INVENTORY_ITEMS",
        ] {
            assert!(ModuleTable::parse(&slug, bad).is_err(), "{bad:?}");
        }
        let long = format!("tenant_inventory_{}", "x".repeat(60));
        assert!(ModuleTable::parse(&slug, &long).is_err());
        for bad in BREAKOUTS {
            assert!(ModuleTable::parse(&slug, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn setting_keys_are_words() {
        assert!(check_setting_key("max_alerts").is_ok());
        // The last two breakouts are only too short or too long for a slug.
        let too_long = "k".repeat(64);
        for bad in BREAKOUTS[..BREAKOUTS.len() - 2]
            .iter()
            .copied()
            .chain([too_long.as_str()])
        {
            assert!(check_setting_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quoting_doubles_inner_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("order"), "\"order\"");
    }

    #[test]
    fn schema_and_table_names_are_validated() {
        assert!(validate_identifier("steward_bench_1").is_ok());
        assert!(validate_identifier("_private").is_ok());
        for bad in [
            "x\"; drop table y; --",
            "Upper",
            "a b",
            "1a",
            "invent\u{f3}rio",
            "",
        ] {
            assert!(validate_identifier(bad).is_err(), "{bad:?} passed");
        }
        assert!(validate_identifier(&"a".repeat(49)).is_err());
    }
}
