//! Who asks for a lifecycle operation. The name goes into the audit log; the authority is
//! what the rules look at (a tenant may turn its own module back on, only a Master Admin may
//! lift a suspension or decide an approval). An entry point sets the authority from what it
//! has verified (a token's role, the operator's shell, a workflow), never from a name.

/// The authority an actor carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The platform's operators: everything (the CLI runs with this authority, since whoever
    /// runs it holds the database's credentials anyway).
    MasterAdmin,
    /// A tenant's administrator, on its own tenant.
    TenantAdmin,
    /// The platform's services (plan sync, billing).
    Service,
    /// steward itself: a workflow step, the reconciler, a schedule.
    System,
}

/// Who asks: the name recorded in the audit log and the authority the rules check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub authority: Authority,
}

impl Authority {
    /// The role's name as tokens and workflow definitions (`started_by`) spell it.
    pub fn role(self) -> &'static str {
        match self {
            Self::MasterAdmin => "master_admin",
            Self::TenantAdmin => "tenant_admin",
            Self::Service => "service",
            Self::System => "system",
        }
    }
}

impl Actor {
    /// A Master Admin (or an operator at the CLI).
    pub fn master_admin(name: impl Into<String>) -> Self {
        Self::new(name, Authority::MasterAdmin)
    }

    /// A tenant's administrator.
    pub fn tenant_admin(name: impl Into<String>) -> Self {
        Self::new(name, Authority::TenantAdmin)
    }

    /// A platform service.
    pub fn service(name: impl Into<String>) -> Self {
        Self::new(name, Authority::Service)
    }

    /// steward itself.
    pub fn system(name: impl Into<String>) -> Self {
        Self::new(name, Authority::System)
    }

    fn new(name: impl Into<String>, authority: Authority) -> Self {
        Self {
            name: name.into(),
            authority,
        }
    }

    /// May lift what only the platform's operators decide (a suspension, an approval)?
    pub fn is_operator(&self) -> bool {
        matches!(self.authority, Authority::MasterAdmin | Authority::System)
    }

    /// The name in the audit log.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}
