//! The one error type of the service, and its single mapping to GraphQL errors.
//!
//! An [`Error`] is either a [`Fault`] of the caller — a stable `extensions.code`, a sentence a
//! frontend developer understands, and where one input is at fault its path in
//! `extensions.field` — or an internal failure, which is logged in full and reaches the client
//! only as `INTERNAL` with no detail.

use std::fmt;

use async_graphql::ErrorExtensions;
use sea_orm::{DbErr, SqlErr};
use serde_json::Value;

/// The `extensions.code` of every refusal (DIALECTS.md, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NotFound,
    ValidationFailed,
    TagAlreadyExists,
    TagNotFound,
    UnknownField,
    InvalidFieldValue,
    ImmutableField,
    DuplicateExternalId,
    VersionConflict,
    ProfileClosed,
    InvalidStatusTransition,
    Unauthenticated,
    Forbidden,
    Unavailable,
    ResponseTooLarge,
    SubscriberTooSlow,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NotFound => "NOT_FOUND",
            Code::ValidationFailed => "VALIDATION_FAILED",
            Code::TagAlreadyExists => "TAG_ALREADY_EXISTS",
            Code::TagNotFound => "TAG_NOT_FOUND",
            Code::UnknownField => "UNKNOWN_FIELD",
            Code::InvalidFieldValue => "INVALID_FIELD_VALUE",
            Code::ImmutableField => "IMMUTABLE_FIELD",
            Code::DuplicateExternalId => "DUPLICATE_EXTERNAL_ID",
            Code::VersionConflict => "VERSION_CONFLICT",
            Code::ProfileClosed => "PROFILE_CLOSED",
            Code::InvalidStatusTransition => "INVALID_STATUS_TRANSITION",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::Unavailable => "UNAVAILABLE",
            Code::ResponseTooLarge => "RESPONSE_TOO_LARGE",
            Code::SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW",
            Code::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal caused by the caller's input or by the state of the profile it addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub code: Code,
    pub message: String,
    /// Path of the one input at fault, relative to the argument or variant it came in
    /// (`tags.create[0].key`, `values[2]`, `memberRefId`).
    pub field: Option<String>,
    /// Further machine-readable facts (`currentVersion`, `vendorCode`, `unknownFields`).
    pub details: Vec<(&'static str, Value)>,
}

impl Fault {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Fault {
            code,
            message: message.into(),
            field: None,
            details: Vec::new(),
        }
    }

    /// VALIDATION_FAILED at `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Fault::new(Code::ValidationFailed, message).at(field)
    }

    pub fn not_found(what: &str) -> Self {
        Fault::new(Code::NotFound, format!("No {what} matches that reference."))
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.details.push((key, value.into()));
        self
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's fault: sent to the client as is.
    #[error("{0}")]
    User(Fault),
    /// The database cannot be reached right now: sent as UNAVAILABLE, so that clients retry.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// Ours: logged with its cause, sent as INTERNAL with no detail.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Whether `err` says the database cannot be reached (down, restarting, network gone), as
/// opposed to a fault in what we asked of it.
pub fn is_unavailable(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    use sea_orm::{ConnAcquireErr, RuntimeErr};
    match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout | ConnAcquireErr::ConnectionClosed) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)) => match err.as_ref() {
            Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed | Sqlx::Tls(_) => true,
            // PostgreSQL shutting down or restarting: admin_shutdown, crash_shutdown, cannot_connect_now.
            Sqlx::Database(db) => matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03")),
            _ => false,
        },
        _ => false,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Fault> for Error {
    fn from(fault: Fault) -> Self {
        Error::User(fault)
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            Error::Unavailable(err)
        } else {
            Error::Internal(Box::new(err))
        }
    }
}

/// Maps a database error of a write that sets an externalId: the unique index on
/// `(tenant_id, external_id)` is what guarantees uniqueness, also against a concurrent writer,
/// so its violation is the caller's fault, reported at `field`. Anything else is internal.
pub fn external_id_conflict(err: DbErr, external_id: Option<&str>, field: &str) -> Error {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(detail)) if detail.contains("external_id") => {
            duplicate_external_id(external_id, field)
        }
        _ => err.into(),
    }
}

/// DUPLICATE_EXTERNAL_ID at `field`: another profile of the tenant has `external_id`.
pub fn duplicate_external_id(external_id: Option<&str>, field: &str) -> Error {
    let message = match external_id {
        Some(id) => format!("Another profile of this tenant already has the externalId \"{id}\"."),
        None => "Another profile of this tenant already has that externalId.".to_owned(),
    };
    Fault::new(Code::DuplicateExternalId, message).at(field).into()
}

impl ErrorExtensions for Fault {
    fn extend(&self) -> async_graphql::Error {
        Error::User(self.clone()).extend()
    }
}

impl ErrorExtensions for Error {
    fn extend(&self) -> async_graphql::Error {
        match self {
            Error::User(fault) => async_graphql::Error::new(fault.message.clone()).extend_with(|_, ext| {
                ext.set("code", fault.code.as_str());
                if let Some(field) = &fault.field {
                    ext.set("field", field.as_str());
                }
                for (key, value) in &fault.details {
                    match async_graphql::Value::from_json(value.clone()) {
                        Ok(value) => ext.set(*key, value),
                        Err(err) => tracing::warn!(%err, key, "error detail is not representable"),
                    }
                }
            }),
            Error::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                async_graphql::Error::new("The database is unavailable right now; please retry shortly.")
                    .extend_with(|_, ext| ext.set("code", Code::Unavailable.as_str()))
            }
            Error::Internal(source) => {
                tracing::error!(error = %source, debug = ?source, "internal error");
                async_graphql::Error::new("Something went wrong on our side. Please try again later.")
                    .extend_with(|_, ext| ext.set("code", Code::Internal.as_str()))
            }
        }
    }
}
