//! A catalog module's maturity: `PLANNED → IN_DEVELOPMENT → ALPHA → BETA → RC → GA →
//! MAINTENANCE → DEPRECATED → RETIRED`.
//!
//! A module moves forward one phase at a time, with two shortcuts the seed names: a GA module
//! may be deprecated without a maintenance phase, and a GA, MAINTENANCE or DEPRECATED module
//! may be retired. Nothing moves backwards (a broken release is fixed by a new version, not by
//! demoting the module) and RETIRED is final.

use super::{DomainError, upper_enum};

upper_enum!(
    /// Where a module is in the catalog.
    Maturity, "maturity" {
        Planned = "PLANNED",
        InDevelopment = "IN_DEVELOPMENT",
        Alpha = "ALPHA",
        Beta = "BETA",
        Rc = "RC",
        Ga = "GA",
        Maintenance = "MAINTENANCE",
        Deprecated = "DEPRECATED",
        Retired = "RETIRED",
    }
);

impl Maturity {
    /// The phases this one may move to.
    pub fn next(self) -> &'static [Maturity] {
        use Maturity::*;
        match self {
            Planned => &[InDevelopment],
            InDevelopment => &[Alpha],
            Alpha => &[Beta],
            Beta => &[Rc],
            Rc => &[Ga],
            Ga => &[Maintenance, Deprecated, Retired],
            Maintenance => &[Deprecated, Retired],
            Deprecated => &[Retired],
            Retired => &[],
        }
    }

    /// Check a move; the error names both ends.
    pub fn check_move(self, to: Maturity) -> Result<(), DomainError> {
        if self.next().contains(&to) {
            Ok(())
        } else {
            Err(DomainError::InvalidTransition {
                what: "module's maturity",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }

    /// Moving here notifies the module's tenants (deprecation webhooks).
    pub fn notifies_tenants(self) -> bool {
        matches!(self, Maturity::Deprecated | Maturity::Retired)
    }
}

#[cfg(test)]
mod tests {
    use super::Maturity::{self, *};

    /// The whole table, written out: every pair not listed here must be refused.
    const ALLOWED: &[(Maturity, Maturity)] = &[
        (Planned, InDevelopment),
        (InDevelopment, Alpha),
        (Alpha, Beta),
        (Beta, Rc),
        (Rc, Ga),
        (Ga, Maintenance),
        (Ga, Deprecated),
        (Ga, Retired),
        (Maintenance, Deprecated),
        (Maintenance, Retired),
        (Deprecated, Retired),
    ];

    #[test]
    fn every_move_outside_the_table_is_refused_with_both_ends_named() {
        for &from in Maturity::ALL {
            for &to in Maturity::ALL {
                let result = from.check_move(to);
                if ALLOWED.contains(&(from, to)) {
                    assert_eq!(result, Ok(()), "{from} → {to}");
                } else {
                    let err = result.expect_err(&format!("{from} → {to} must be refused"));
                    assert_eq!(err.code(), "invalid_transition");
                    let text = err.to_string();
                    assert!(
                        text.contains(from.as_str()) && text.contains(to.as_str()),
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for &m in Maturity::ALL {
            assert_eq!(m.as_str().parse::<Maturity>(), Ok(m));
        }
        let err = "ga".parse::<Maturity>().unwrap_err();
        assert_eq!(err.code(), "unknown_value");
    }

    #[test]
    fn only_deprecation_and_retirement_notify_tenants() {
        let notifying: Vec<_> = Maturity::ALL
            .iter()
            .filter(|m| m.notifies_tenants())
            .collect();
        assert_eq!(notifying, [&Deprecated, &Retired]);
    }
}
