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
//! - a module turned back on (or repaired) after an upgrade it missed catches up: its
//!   post-upgrade SQL runs for it and it lands `UP_TO_DATE` at the upgraded version;
//! - operators and policy suspend (`SUSPENDED`), tenants turn off (`DISABLED`, data kept,
//!   triggers frozen) and on again; archiving (`ARCHIVED`) exports and removes the data and
//!   is final until the tenant requests the module anew;
//! - from `ERROR` an operator retries provisioning or the upgrade, or turns the module off.

use super::actor::Actor;
use super::{DomainError, upper_enum};
use std::collections::HashMap;

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
            Requested => &[PendingApproval, Provisioning, Error],
            PendingApproval => &[Provisioning, Disabled],
            Provisioning => &[Enabled, Error],
            Enabled => &[Upgrading, UpToDate, Suspended, Disabled],
            Upgrading => &[UpToDate, Enabled, Error],
            UpToDate => &[Upgrading, Enabled, Suspended, Disabled],
            Suspended => &[Enabled, UpToDate, Disabled, Archived],
            Disabled => &[Enabled, UpToDate, Archived, Requested],
            Archived => &[Requested],
            Error => &[Provisioning, Upgrading, Disabled, Archived, Requested],
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

    /// A catalog upgrade moves this tenant (in use and not already upgrading); the others
    /// catch up when they come back into use.
    pub fn takes_upgrades(self) -> bool {
        matches!(
            self,
            TenantModuleStatus::Enabled | TenantModuleStatus::UpToDate
        )
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

    /// The module needs the modules it depends on to stay on: it is in use, or on its way in
    /// (requested, waiting for approval, provisioning: provisioning ends ENABLED without
    /// asking again).
    pub fn holds_dependencies(self) -> bool {
        self.is_active()
            || matches!(
                self,
                TenantModuleStatus::Requested
                    | TenantModuleStatus::PendingApproval
                    | TenantModuleStatus::Provisioning
            )
    }

    /// Two statuses of a module (`None`: the tenant does not have it) that the dependency
    /// rules answer alike (ENABLED and UP_TO_DATE, DISABLED and ERROR, …): a move between
    /// them changes no decision those rules made.
    pub fn alike_for_dependencies(a: Option<Self>, b: Option<Self>) -> bool {
        let answers =
            |s: Option<Self>| s.map(|s| (s.satisfies_dependency(), s.holds_dependencies()));
        answers(a) == answers(b)
    }

    /// The module counts as enabled for another module's dependency on it.
    pub fn satisfies_dependency(self) -> bool {
        matches!(
            self,
            TenantModuleStatus::Enabled | TenantModuleStatus::UpToDate
        )
    }
}

/// May `actor` turn `module` (now `status`, turned off from `disabled_from`) back on?
///
/// - a module turned off while in use (ENABLED, UP_TO_DATE) comes back on for its tenant;
/// - SUSPENDED (payment, limits, a forced retirement), or turned off while SUSPENDED: only a
///   Master Admin lifts it;
/// - rejected or withdrawn before approval, turned off in ERROR, or never enabled: nothing
///   was (or is known to be) created for it, so it is requested again, not re-enabled;
/// - a RETIRED module never comes back on.
pub fn check_reenable(
    module: &str,
    status: TenantModuleStatus,
    disabled_from: Option<TenantModuleStatus>,
    module_retired: bool,
    actor: &Actor,
) -> Result<(), DomainError> {
    use TenantModuleStatus::*;
    let not_permitted = |reason: &str| DomainError::NotPermitted {
        what: format!("turning `{module}` back on"),
        reason: reason.to_string(),
    };
    if module_retired {
        return Err(not_permitted("the module is RETIRED"));
    }
    let lift_suspension = || {
        if actor.is_operator() {
            Ok(())
        } else {
            Err(not_permitted("only a Master Admin lifts a suspension"))
        }
    };
    match (status, disabled_from) {
        (Suspended, _) | (Disabled, Some(Suspended)) => lift_suspension(),
        (Disabled, Some(Enabled | UpToDate | Upgrading)) => Ok(()),
        (Disabled, Some(PendingApproval)) => Err(DomainError::RequestAgain {
            module: module.to_string(),
            reason: "it was rejected or withdrawn before approval, so nothing was created".into(),
        }),
        (Disabled, Some(Error)) => Err(DomainError::RequestAgain {
            module: module.to_string(),
            reason: "it was turned off in ERROR".into(),
        }),
        (Disabled, _) => Err(DomainError::RequestAgain {
            module: module.to_string(),
            reason: "it was never enabled".into(),
        }),
        (Error, _) => Err(DomainError::RequestAgain {
            module: module.to_string(),
            reason: "it is in ERROR".into(),
        }),
        // Only what was turned off or suspended is turned back on: a module on its way in
        // (PROVISIONING: its tables may not exist yet), in use or upgrading is refused.
        (other, _) => Err(DomainError::InvalidTransition {
            what: "tenant module (only a DISABLED or SUSPENDED module is turned back on)",
            from: other.as_str(),
            to: Enabled.as_str(),
        }),
    }
}

/// May `actor` archive `module` (now `status`, turned off from `disabled_from`)? A
/// suspended module (or one turned off while suspended) is archived by a Master Admin only:
/// an archived module is requested again, which would lift the suspension.
pub fn check_archive(
    module: &str,
    status: TenantModuleStatus,
    disabled_from: Option<TenantModuleStatus>,
    actor: &Actor,
) -> Result<(), DomainError> {
    use TenantModuleStatus::*;
    let suspended = matches!(
        (status, disabled_from),
        (Suspended, _) | (Disabled, Some(Suspended))
    );
    if suspended && !actor.is_operator() {
        return Err(DomainError::NotPermitted {
            what: format!("archiving `{module}`"),
            reason: "it is suspended: only a Master Admin archives it (or lifts the suspension)"
                .into(),
        });
    }
    status.check_move(Archived)
}

/// May a tenant request a module again, given its record (`None`: it never had it)? A new
/// request replaces an ARCHIVED, ERROR, or rejected/never-enabled DISABLED module; anything
/// else is a module the tenant has.
pub fn check_request_again(
    status: Option<TenantModuleStatus>,
    disabled_from: Option<TenantModuleStatus>,
) -> Result<(), DomainError> {
    use TenantModuleStatus::*;
    match (status, disabled_from) {
        (None, _) | (Some(Archived | Error), _) => Ok(()),
        (Some(Disabled), Some(PendingApproval | Error) | None) => Ok(()),
        (Some(status), _) => Err(DomainError::InvalidTransition {
            what: if status == Disabled {
                "tenant module (turned off with its data kept: turn it back on instead)"
            } else {
                "tenant module (the tenant already has it)"
            },
            from: status.as_str(),
            to: Requested.as_str(),
        }),
    }
}

/// May `module` (now `status`) be turned off, given the tenant's modules that depend on it
/// and need it on (`dependants`, see [`TenantModuleStatus::holds_dependencies`])?
pub fn check_disable(
    module: &str,
    status: TenantModuleStatus,
    dependants: &[String],
) -> Result<(), DomainError> {
    check_no_dependants(module, dependants)?;
    status.check_move(TenantModuleStatus::Disabled)
}

/// A module is turned on (requested, approved, turned back on) only with every module it
/// depends on enabled for the tenant (`modules`: the tenant's, with their statuses); refused
/// naming the missing ones.
pub fn check_dependencies(
    module: &str,
    dependencies: &[String],
    modules: &HashMap<String, TenantModuleStatus>,
) -> Result<(), DomainError> {
    let missing: Vec<&str> = dependencies
        .iter()
        .filter(|dep| {
            !modules
                .get(dep.as_str())
                .is_some_and(|s| s.satisfies_dependency())
        })
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DomainError::MissingDependencies {
        module: module.to_string(),
        missing: missing.join(", "),
    })
}

/// Turning `module` off or archiving it is refused, naming them, while `dependants` (the
/// tenant's modules that depend on it and need it on) are there.
pub fn check_no_dependants(module: &str, dependants: &[String]) -> Result<(), DomainError> {
    if dependants.is_empty() {
        return Ok(());
    }
    Err(DomainError::HasDependants {
        module: module.to_string(),
        dependants: dependants.join(", "),
    })
}

/// Only a Master Admin (or steward's own policy) suspends a tenant's module.
pub fn check_suspend(
    module: &str,
    status: TenantModuleStatus,
    actor: &Actor,
) -> Result<(), DomainError> {
    if !actor.is_operator() {
        return Err(DomainError::NotPermitted {
            what: format!("suspending `{module}`"),
            reason: "only a Master Admin suspends a module".into(),
        });
    }
    status.check_move(TenantModuleStatus::Suspended)
}

/// May an upgrade that landed at `upgraded_at` still be rolled back by hand at `now`, within
/// `window`? (An upgrade with no recorded time is out of the window.)
pub fn check_rollback_window(
    module: &str,
    upgraded_at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    window: std::time::Duration,
) -> Result<(), DomainError> {
    let window_closed = || DomainError::RollbackWindowClosed {
        module: module.to_string(),
        hours: window.as_secs() / 3600,
    };
    let window = chrono::Duration::from_std(window).map_err(|_| window_closed())?;
    match upgraded_at {
        Some(at) if now - at <= window => Ok(()),
        _ => Err(window_closed()),
    }
}

#[cfg(test)]
mod tests {
    use super::TenantModuleStatus::{self, *};

    /// The whole table, written out: every pair not listed here must be refused.
    const ALLOWED: &[(TenantModuleStatus, TenantModuleStatus)] = &[
        (Requested, PendingApproval),
        (Requested, Provisioning),
        (Requested, Error),
        (PendingApproval, Provisioning),
        (PendingApproval, Disabled),
        (Provisioning, Enabled),
        (Provisioning, Error),
        (Enabled, Upgrading),
        (Enabled, UpToDate),
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
        (Suspended, UpToDate),
        (Suspended, Disabled),
        (Suspended, Archived),
        (Disabled, Enabled),
        (Disabled, UpToDate),
        (Disabled, Archived),
        (Disabled, Requested),
        (Archived, Requested),
        (Error, Provisioning),
        (Error, Upgrading),
        (Error, Disabled),
        (Error, Archived),
        (Error, Requested),
    ];

    use super::{check_reenable, check_request_again};

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
    fn a_tenant_cannot_reenable_what_it_did_not_turn_off_from_use() {
        use crate::domain::actor::Actor;
        let tenant = Actor::tenant_admin("t");
        let admin = Actor::master_admin("ops");
        let code = |r: Result<(), crate::domain::DomainError>| r.map_err(|e| e.code());
        assert_eq!(
            code(check_reenable("m", Disabled, Some(Enabled), false, &tenant)),
            Ok(())
        );
        assert_eq!(
            code(check_reenable(
                "m",
                Disabled,
                Some(UpToDate),
                false,
                &tenant
            )),
            Ok(())
        );
        for from in [Some(PendingApproval), Some(Error), None] {
            assert_eq!(
                code(check_reenable("m", Disabled, from, false, &admin)),
                Err("request_again"),
                "{from:?}"
            );
        }
        assert_eq!(
            code(check_reenable("m", Error, None, false, &admin)),
            Err("request_again")
        );
        for (status, from) in [(Suspended, None), (Disabled, Some(Suspended))] {
            assert_eq!(
                code(check_reenable("m", status, from, false, &tenant)),
                Err("not_permitted")
            );
            assert_eq!(
                code(check_reenable("m", status, from, false, &admin)),
                Ok(())
            );
        }
        assert_eq!(
            code(check_reenable("m", Disabled, Some(Enabled), true, &admin)),
            Err("not_permitted")
        );
        // Nothing that is not off is turned "back" on, whoever asks.
        for status in [
            Requested,
            PendingApproval,
            Provisioning,
            Enabled,
            UpToDate,
            Upgrading,
            Archived,
        ] {
            assert_eq!(
                code(check_reenable("m", status, None, false, &admin)),
                Err("invalid_transition"),
                "{status}"
            );
        }
    }

    #[test]
    fn only_rejected_failed_or_archived_modules_are_requested_again() {
        assert!(check_request_again(None, None).is_ok());
        assert!(check_request_again(Some(Archived), None).is_ok());
        assert!(check_request_again(Some(Error), None).is_ok());
        assert!(check_request_again(Some(Disabled), Some(PendingApproval)).is_ok());
        assert!(check_request_again(Some(Disabled), Some(Enabled)).is_err());
        assert!(check_request_again(Some(Enabled), None).is_err());
        assert!(check_request_again(Some(PendingApproval), None).is_err());
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
