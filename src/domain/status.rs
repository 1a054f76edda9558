//! A tenant module's status: `REQUESTED → PENDING_APPROVAL → PROVISIONING → ENABLED ↔
//! UPGRADING → UP_TO_DATE`, with `SUSPENDED`, `DISABLED`, `ARCHIVED` and `ERROR` beside.
//!
//! The moves, and who makes them:
//! - a request goes to approval (ALPHA, or wherever the rules ask) or straight to provisioning;
//! - approval moves on to provisioning; a rejection leaves the module `DISABLED`, with nothing
//!   created;
//! - provisioning ends `ENABLED`, or `ERROR` with what it created removed;
//! - an upgrade starts from `ENABLED` or `UP_TO_DATE` and ends `UP_TO_DATE`, or back where it
//!   started (rolled back), or `ERROR` if even the rollback failed;
//! - a manual rollback takes an `UP_TO_DATE` module back to `ENABLED` on its previous version;
//! - operators and policy suspend (`SUSPENDED`), tenants turn off (`DISABLED`, data kept,
//!   triggers frozen) and on again; archiving (`ARCHIVED`) exports and removes the data and
//!   is final until the tenant requests the module anew;
//! - from `ERROR` an operator retries provisioning or the upgrade, or turns the module off.

use super::{DomainError, upper_enum};

upper_enum!(
    /// Where one tenant's module is.
    TenantModuleStatus, "tenant module status" {
        Requested = "REQUESTED",
        PendingApproval = "PENDING_APPROVAL",
        Provisioning = "PROVISIONING",
        Enabled = "ENABLED",
        Upgrading = "UPGRADING",
        UpToDate = "UP_TO_DATE",
        Suspended = "SUSPENDED",
        Disabled = "DISABLED",
        Archived = "ARCHIVED",
        Error = "ERROR",
    }
);

impl TenantModuleStatus {
    /// The statuses this one may move to.
    pub fn next(self) -> &'static [TenantModuleStatus] {
        use TenantModuleStatus::*;
        match self {
            Requested => &[PendingApproval, Provisioning],
            PendingApproval => &[Provisioning, Disabled],
            Provisioning => &[Enabled, Error],
            Enabled => &[Upgrading, Suspended, Disabled],
            Upgrading => &[UpToDate, Enabled, Error],
            UpToDate => &[Upgrading, Enabled, Suspended, Disabled],
            Suspended => &[Enabled, Disabled, Archived],
            Disabled => &[Enabled, Archived],
            Archived => &[Requested],
            Error => &[Provisioning, Upgrading, Disabled, Archived],
        }
    }

    /// Check a move; the error names both ends.
    pub fn check_move(self, to: TenantModuleStatus) -> Result<(), DomainError> {
        if self.next().contains(&to) {
            Ok(())
        } else {
            Err(DomainError::InvalidTransition {
                what: "tenant module",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }

    /// The module is in use: its tables exist and its triggers fire.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TenantModuleStatus::Enabled
                | TenantModuleStatus::Upgrading
                | TenantModuleStatus::UpToDate
        )
    }

    /// The module counts as enabled for another module's dependency on it.
    pub fn satisfies_dependency(self) -> bool {
        matches!(
            self,
            TenantModuleStatus::Enabled | TenantModuleStatus::UpToDate
        )
    }
}

#[cfg(test)]
mod tests {
    use super::TenantModuleStatus::{self, *};

    /// The whole table, written out: every pair not listed here must be refused.
    const ALLOWED: &[(TenantModuleStatus, TenantModuleStatus)] = &[
        (Requested, PendingApproval),
        (Requested, Provisioning),
        (PendingApproval, Provisioning),
        (PendingApproval, Disabled),
        (Provisioning, Enabled),
        (Provisioning, Error),
        (Enabled, Upgrading),
        (Enabled, Suspended),
        (Enabled, Disabled),
        (Upgrading, UpToDate),
        (Upgrading, Enabled),
        (Upgrading, Error),
        (UpToDate, Upgrading),
        (UpToDate, Enabled),
        (UpToDate, Suspended),
        (UpToDate, Disabled),
        (Suspended, Enabled),
        (Suspended, Disabled),
        (Suspended, Archived),
        (Disabled, Enabled),
        (Disabled, Archived),
        (Archived, Requested),
        (Error, Provisioning),
        (Error, Upgrading),
        (Error, Disabled),
        (Error, Archived),
    ];

    #[test]
    fn every_move_outside_the_table_is_refused_with_both_ends_named() {
        let mut refused = 0;
        for &from in TenantModuleStatus::ALL {
            for &to in TenantModuleStatus::ALL {
                let result = from.check_move(to);
                if ALLOWED.contains(&(from, to)) {
                    assert_eq!(result, Ok(()), "{from} → {to}");
                } else {
                    refused += 1;
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
        assert_eq!(refused, 100 - ALLOWED.len());
    }

    #[test]
    fn nothing_skips_provisioning_or_approval() {
        for target in [Enabled, UpToDate, Upgrading] {
            assert!(Requested.check_move(target).is_err());
            assert!(PendingApproval.check_move(target).is_err());
        }
    }

    #[test]
    fn only_enabled_and_up_to_date_satisfy_a_dependency() {
        let satisfying: Vec<_> = TenantModuleStatus::ALL
            .iter()
            .filter(|s| s.satisfies_dependency())
            .collect();
        assert_eq!(satisfying, [&Enabled, &UpToDate]);
    }
}
