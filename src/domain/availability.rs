//! Who may request which module (SPEC §4.1, the seed's availability table):
//!
//! | maturity | request |
//! |---|---|
//! | PLANNED, IN_DEVELOPMENT, RETIRED | never |
//! | ALPHA | internal-tester tenants only, and only with a Master Admin's approval |
//! | BETA | tenants that opted in to betas |
//! | RC, GA | yes |
//! | MAINTENANCE | yes, with a warning |
//! | DEPRECATED | not for new tenants |
//!
//! And whatever the maturity, every module it depends on must be enabled for the tenant first.

use super::DomainError;
use super::maturity::Maturity;
use super::status::TenantModuleStatus;
use std::collections::HashMap;

/// What the rules need to know about the module asked for.
#[derive(Debug, Clone)]
pub struct ModuleFacts<'a> {
    pub slug: &'a str,
    pub maturity: Maturity,
    /// Slugs of the modules it needs.
    pub dependencies: &'a [String],
}

/// What the rules need to know about the tenant asking.
#[derive(Debug, Clone)]
pub struct TenantFacts<'a> {
    pub internal_tester: bool,
    pub beta_opt_in: bool,
    /// The tenant's modules and their statuses.
    pub modules: &'a HashMap<String, TenantModuleStatus>,
}

/// The answer to a request that is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Provision at once.
    Provision { warning: Option<String> },
    /// Wait in PENDING_APPROVAL for a Master Admin.
    NeedsApproval { reason: String },
}

/// Decide a tenant's request for a module: provision, wait for approval, or refuse (and why).
pub fn admit(module: &ModuleFacts<'_>, tenant: &TenantFacts<'_>) -> Result<Admission, DomainError> {
    let refuse = |reason: &str| DomainError::NotAvailable {
        module: module.slug.to_string(),
        reason: reason.to_string(),
    };
    let admission = match module.maturity {
        Maturity::Planned | Maturity::InDevelopment => {
            return Err(refuse(
                "it is not released (only the development team sees it)",
            ));
        }
        Maturity::Retired => return Err(refuse("it is retired")),
        Maturity::Deprecated => {
            return Err(refuse("it is deprecated and closed to new tenants"));
        }
        Maturity::Alpha if !tenant.internal_tester => {
            return Err(refuse(
                "it is in ALPHA, open to internal-tester tenants only",
            ));
        }
        Maturity::Alpha => Admission::NeedsApproval {
            reason: "ALPHA modules need a Master Admin's approval (no SLA)".into(),
        },
        Maturity::Beta if !tenant.beta_opt_in => {
            return Err(refuse(
                "it is in BETA and the tenant has not opted in to betas",
            ));
        }
        Maturity::Beta => Admission::Provision {
            warning: Some("BETA: breaking changes are possible".into()),
        },
        Maturity::Rc | Maturity::Ga => Admission::Provision { warning: None },
        Maturity::Maintenance => Admission::Provision {
            warning: Some("in MAINTENANCE: patches only, not recommended for new projects".into()),
        },
    };
    super::status::check_dependencies(module.slug, module.dependencies, tenant.modules)?;
    Ok(admission)
}

/// The maturities at which plan sync grants a module, derived from [`admit`]: those a
/// tenant's own request is provisioned at without approval. Returns `(granted, to_all)`:
/// `granted` to a tenant that opted in to betas, `to_all` to every subscriber.
pub fn granted_by_plans() -> (Vec<Maturity>, Vec<Maturity>) {
    let none = HashMap::new();
    let provisioned = |maturity: Maturity, beta_opt_in: bool| {
        let module = ModuleFacts {
            slug: "",
            maturity,
            dependencies: &[],
        };
        let tenant = TenantFacts {
            internal_tester: false,
            beta_opt_in,
            modules: &none,
        };
        matches!(admit(&module, &tenant), Ok(Admission::Provision { .. }))
    };
    let granted = |beta_opt_in| {
        Maturity::ALL
            .iter()
            .copied()
            .filter(|&m| provisioned(m, beta_opt_in))
            .collect()
    };
    (granted(true), granted(false))
}

/// How a module shows in a tenant's catalog (the marketplace), or `None` when it does not
/// show at all (SPEC §4.1, the seed's availability table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Listing {
    /// RC, GA.
    Stable,
    /// ALPHA, shown to internal testers only, no SLA.
    Alpha,
    /// BETA, with its badge.
    Beta,
    /// MAINTENANCE, with the *Legacy* badge.
    Legacy,
    /// DEPRECATED, only when the tenant asks to show legacy modules, with a warning.
    Deprecated,
}

/// Where `maturity` lists for a tenant (`internal_tester`; `show_legacy`: the tenant asked to
/// see legacy modules). PLANNED, IN_DEVELOPMENT and RETIRED never list.
pub fn listing(maturity: Maturity, internal_tester: bool, show_legacy: bool) -> Option<Listing> {
    match maturity {
        Maturity::Planned | Maturity::InDevelopment | Maturity::Retired => None,
        Maturity::Alpha => internal_tester.then_some(Listing::Alpha),
        Maturity::Beta => Some(Listing::Beta),
        Maturity::Rc | Maturity::Ga => Some(Listing::Stable),
        Maturity::Maintenance => Some(Listing::Legacy),
        Maturity::Deprecated => show_legacy.then_some(Listing::Deprecated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_lists_what_the_availability_table_shows() {
        use Maturity::*;
        for m in [Planned, InDevelopment, Retired] {
            assert_eq!(listing(m, true, true), None, "{m}");
        }
        assert_eq!(listing(Alpha, false, true), None);
        assert_eq!(listing(Alpha, true, false), Some(Listing::Alpha));
        assert_eq!(listing(Beta, false, false), Some(Listing::Beta));
        assert_eq!(listing(Ga, false, false), Some(Listing::Stable));
        assert_eq!(listing(Maintenance, false, false), Some(Listing::Legacy));
        assert_eq!(listing(Deprecated, false, false), None);
        assert_eq!(listing(Deprecated, false, true), Some(Listing::Deprecated));
    }

    fn tenant(
        internal: bool,
        beta: bool,
        modules: &HashMap<String, TenantModuleStatus>,
    ) -> TenantFacts<'_> {
        TenantFacts {
            internal_tester: internal,
            beta_opt_in: beta,
            modules,
        }
    }

    fn module(maturity: Maturity, deps: &[String]) -> ModuleFacts<'_> {
        ModuleFacts {
            slug: "inventory",
            maturity,
            dependencies: deps,
        }
    }

    fn refused(result: Result<Admission, DomainError>) -> String {
        let err = result.expect_err("must be refused");
        assert_eq!(err.code(), "module_not_available");
        err.to_string()
    }

    #[test]
    fn unreleased_retired_and_deprecated_modules_are_never_requested() {
        let none = HashMap::new();
        for maturity in [
            Maturity::Planned,
            Maturity::InDevelopment,
            Maturity::Retired,
            Maturity::Deprecated,
        ] {
            for (internal, beta) in [(false, false), (true, true)] {
                let text = refused(admit(
                    &module(maturity, &[]),
                    &tenant(internal, beta, &none),
                ));
                assert!(text.contains("inventory"), "{text}");
            }
        }
    }

    #[test]
    fn alpha_is_for_internal_testers_and_needs_approval() {
        let none = HashMap::new();
        let text = refused(admit(
            &module(Maturity::Alpha, &[]),
            &tenant(false, true, &none),
        ));
        assert!(text.contains("internal-tester"), "{text}");
        assert!(matches!(
            admit(&module(Maturity::Alpha, &[]), &tenant(true, false, &none)),
            Ok(Admission::NeedsApproval { .. })
        ));
    }

    #[test]
    fn beta_needs_the_tenants_opt_in() {
        let none = HashMap::new();
        let text = refused(admit(
            &module(Maturity::Beta, &[]),
            &tenant(true, false, &none),
        ));
        assert!(text.contains("opted in"), "{text}");
        assert!(matches!(
            admit(&module(Maturity::Beta, &[]), &tenant(false, true, &none)),
            Ok(Admission::Provision { warning: Some(_) })
        ));
    }

    #[test]
    fn rc_and_ga_are_open_and_maintenance_warns() {
        let none = HashMap::new();
        for maturity in [Maturity::Rc, Maturity::Ga] {
            assert_eq!(
                admit(&module(maturity, &[]), &tenant(false, false, &none)),
                Ok(Admission::Provision { warning: None })
            );
        }
        assert!(matches!(
            admit(&module(Maturity::Maintenance, &[]), &tenant(false, false, &none)),
            Ok(Admission::Provision { warning: Some(w) }) if w.contains("MAINTENANCE")
        ));
    }

    #[test]
    fn dependencies_must_be_enabled_first() {
        let deps = vec!["alerts".to_string(), "billing".to_string()];
        let mut modules = HashMap::new();
        modules.insert("alerts".to_string(), TenantModuleStatus::UpToDate);
        modules.insert("billing".to_string(), TenantModuleStatus::Provisioning);
        let err = admit(
            &module(Maturity::Ga, &deps),
            &tenant(false, false, &modules),
        )
        .unwrap_err();
        assert_eq!(err.code(), "missing_dependencies");
        assert!(err.to_string().contains("billing") && !err.to_string().contains("alerts"));
        for not_enough in [
            TenantModuleStatus::Disabled,
            TenantModuleStatus::Suspended,
            TenantModuleStatus::Error,
        ] {
            modules.insert("billing".to_string(), not_enough);
            assert!(
                admit(
                    &module(Maturity::Ga, &deps),
                    &tenant(false, false, &modules)
                )
                .is_err()
            );
        }
        modules.insert("billing".to_string(), TenantModuleStatus::Enabled);
        assert!(
            admit(
                &module(Maturity::Ga, &deps),
                &tenant(false, false, &modules)
            )
            .is_ok()
        );
    }

    #[test]
    fn maturity_is_judged_before_dependencies() {
        let deps = vec!["alerts".to_string()];
        let none = HashMap::new();
        let err = admit(
            &module(Maturity::Retired, &deps),
            &tenant(false, false, &none),
        )
        .unwrap_err();
        assert_eq!(err.code(), "module_not_available");
    }
}
