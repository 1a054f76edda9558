//! The SaaS module lifecycle (SPEC §4.1), independent of storage and of the workflow engine:
//!
//! - [`maturity`]: a catalog module's maturity (PLANNED … RETIRED) and its allowed moves;
//! - [`status`]: a tenant module's status (REQUESTED … ARCHIVED, ERROR) and its allowed moves;
//! - [`availability`]: who may request which module, when approval is needed, dependencies;
//! - [`ident`]: module slugs and table names validated, SQL identifiers quoted;
//! - [`catalog`]: the module catalog (`catalog/*.toml`: modules and versions), validated at load;
//! - [`actor`]: who asks for an operation, and with what authority;
//! - [`settings`]: a tenant module's settings against its version's JSON Schema.
//!
//! Every rule here is a pure function, so the storage and the workflows (provisioning,
//! upgrade, archive) ask the same questions and get the same answers.

pub mod actor;
pub mod availability;
pub mod catalog;
pub mod ident;
pub mod maturity;
pub mod settings;
pub mod status;

/// Why the lifecycle refused something. Each variant has a stable code (see [`DomainError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("a {what} cannot go from {from} to {to}")]
    InvalidTransition {
        what: &'static str,
        from: &'static str,
        to: &'static str,
    },
    #[error("unknown {what} `{value}`")]
    Unknown { what: &'static str, value: String },
    #[error("module `{module}` cannot be requested: {reason}")]
    NotAvailable { module: String, reason: String },
    #[error("module `{module}` needs its dependencies enabled first: {missing}")]
    MissingDependencies { module: String, missing: String },
    #[error(
        "module `{module}` was upgraded more than {hours} h ago: the rollback window is closed"
    )]
    RollbackWindowClosed { module: String, hours: u64 },
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidIdentifier {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{what} is not permitted: {reason}")]
    NotPermitted { what: String, reason: String },
    #[error("module `{module}` cannot be turned back on: {reason}; request it again")]
    RequestAgain { module: String, reason: String },
    #[error("module `{module}` is needed by {dependants}: turn those off first")]
    HasDependants { module: String, dependants: String },
    #[error("the settings of `{module}` do not follow its schema: {problems}")]
    InvalidSettings { module: String, problems: String },
    #[error("the settings schema of `{module}` is unusable: {reason}")]
    UnusableSchema { module: String, reason: String },
}

impl DomainError {
    /// A stable, machine-readable code (the API's error codes reuse it).
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::InvalidTransition { .. } => "invalid_transition",
            DomainError::Unknown { .. } => "unknown_value",
            DomainError::NotAvailable { .. } => "module_not_available",
            DomainError::MissingDependencies { .. } => "missing_dependencies",
            DomainError::InvalidIdentifier { .. } => "invalid_identifier",
            DomainError::RollbackWindowClosed { .. } => "rollback_window_closed",
            DomainError::NotPermitted { .. } => "not_permitted",
            DomainError::RequestAgain { .. } => "request_again",
            DomainError::HasDependants { .. } => "has_dependants",
            DomainError::InvalidSettings { .. } => "invalid_settings",
            DomainError::UnusableSchema { .. } => "invalid_schema",
        }
    }
}

/// Declares a status enum stored as its upper-case name, with parsing and display.
macro_rules! upper_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),* }

        // Written by hand: the derive does not read a `rename` that a macro passes in.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),*]))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}

        impl $name {
            /// Every value, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err($crate::domain::DomainError::Unknown {
                        what: $what,
                        value: other.to_string(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}
pub(crate) use upper_enum;
