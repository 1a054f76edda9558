//! Errors of the storage layer, classified so callers know what to retry.

/// Something the database or the input refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The caller passed something the store refuses before touching the database.
    #[error("{0}")]
    InvalidInput(String),
    /// The change would break a uniqueness rule.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The write no longer applies: what it was about moved on (a workflow step whose run
    /// was failed, cancelled or advanced meanwhile).
    #[error("stale: {0}")]
    Stale(String),
    /// A stored value could not be decoded.
    /// The module lifecycle's rules refused the change (nothing was written).
    #[error(transparent)]
    Domain(#[from] crate::domain::DomainError),

    /// A module version's migration failed; everything it did was rolled back.
    #[error("migration failed: {0}")]
    Migration(String),

    /// A batched write this request was part of failed (the whole batch rolled back); the
    /// cause's class is kept, so a transient cause is retried and a permanent one is not.
    #[error("batched write failed: {message}")]
    Batch { message: String, class: ErrorClass },

    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Whether an error goes away by itself, never will, or cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Permanent,
    Unknown,
}

impl StoreError {
    /// The class of this error (see [`StoreError::is_transient`], [`StoreError::is_permanent`]).
    pub fn class(&self) -> ErrorClass {
        if self.is_transient() {
            ErrorClass::Transient
        } else if self.is_permanent() {
            ErrorClass::Permanent
        } else {
            ErrorClass::Unknown
        }
    }

    /// A batched write's failure, shared by every request of the batch, with `cause`'s class.
    pub fn batch(message: impl Into<String>, class: ErrorClass) -> Self {
        StoreError::Batch {
            message: message.into(),
            class,
        }
    }
}

/// Result alias of the storage layer.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// True for errors that go away by themselves: a lost connection, a restarting server,
    /// a busy SQLite file, a serialization conflict. Background loops retry these.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(err) => match err {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    // 08: connection exception, 57P0x: shutdown, 40001/40P01: retry the transaction;
                    // SQLite 5/6 (and extended codes): busy/locked.
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || code == "40001"
                        || code == "40P01"
                        || code == "5"
                        || code == "6"
                        || code == "517"
                        || code == "261"
                        || code == "262"
                }
                _ => false,
            },
            StoreError::Batch { class, .. } => *class == ErrorClass::Transient,
            _ => false,
        }
    }

    /// True for input the database refused as a value: a NUL byte or an invalid escape in a
    /// text or JSON value, a malformed number or date (SQLSTATE class 22), or a value out of a
    /// column's range. The caller's input is at fault: a 400, never a retry.
    pub fn is_bad_value(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                db.code().is_some_and(|code| code.starts_with("22"))
            }
            _ => false,
        }
    }

    /// True when trying again cannot help: the input, the rules or the stored data are at
    /// fault (a job fails for good; the API answers 4xx or a generic 500).
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::InvalidInput(_)
            | StoreError::Domain(_)
            | StoreError::Corrupt(_)
            | StoreError::Migration(_)
            | StoreError::Migrate(_) => true,
            StoreError::Database(_) => self.is_bad_value(),
            StoreError::Batch { class, .. } => *class == ErrorClass::Permanent,
            StoreError::Conflict(_) | StoreError::Stale(_) => false,
        }
    }

    /// True when the database refused the change because of a unique index.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                db.kind() == sqlx::error::ErrorKind::UniqueViolation
            }
            _ => false,
        }
    }
}
