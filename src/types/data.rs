//! The vocabulary of tenant data work: retention targets, usage and monthly costs, webhook
//! endpoints (the store's trait is [`crate::store::DataStore`]), and the months costs are
//! counted in.

use super::modules::TenantId;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// A tenant module whose catalog entry limits how long its data is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionTarget {
    pub tenant_id: TenantId,
    pub module: String,
    pub retention_days: i32,
    /// The tenant's module version (its tables are those of this version and earlier ones).
    pub version_id: i64,
}

/// One usage log entry (`module_usage_logs`).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEntry {
    pub tenant_id: TenantId,
    pub module: String,
    pub route: String,
    pub tokens: i64,
    pub row_count: i64,
    /// Exact, at most 6 decimal places.
    pub estimated_cost: Decimal,
    pub latency_ms: i32,
    pub at: DateTime<Utc>,
}

/// One row of `tenant_module_monthly_cost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MonthlyCost {
    pub tenant_id: TenantId,
    pub module: String,
    /// The first day of the month.
    pub month: NaiveDate,
    pub calls: i64,
    pub tokens: i64,
    pub row_count: i64,
    #[schema(value_type = String)]
    pub cost: Decimal,
}

/// Which monthly cost rows to read (an empty field: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostFilter {
    /// The first day of the month.
    pub month: Option<NaiveDate>,
    pub tenant: Option<TenantId>,
    pub module: Option<String>,
}

impl CostFilter {
    /// Every row of one month (or of all months).
    pub fn month(month: Option<NaiveDate>) -> Self {
        Self {
            month,
            ..Self::default()
        }
    }
}

/// What an aggregation of one month wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CostAggregated {
    /// Usage log rows read.
    pub usage_rows: i64,
    /// (tenant, module) rows written for the month.
    pub cost_rows: i64,
}

/// Where a tenant receives webhooks, and the secret that signs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// The first day of the month after `month`.
pub fn next_month(month: NaiveDate) -> NaiveDate {
    month
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(NaiveDate::MAX)
}

/// Parse `YYYY-MM` into the first day of that month.
pub fn parse_month(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let shape = b.len() == 7
        && b[4] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_and_roll_over() {
        let oct = parse_month("2026-10").expect("a month");
        assert_eq!(oct, NaiveDate::from_ymd_opt(2026, 10, 1).expect("date"));
        assert_eq!(
            next_month(parse_month("2026-12").expect("a month")),
            NaiveDate::from_ymd_opt(2027, 1, 1).expect("date")
        );
        for bad in ["2026-13", "2026", "26-10", "2026-10-05", "octobre"] {
            assert_eq!(parse_month(bad), None, "{bad}");
        }
    }
}
