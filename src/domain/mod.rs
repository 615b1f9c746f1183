//! The canonical profile and the one engine that changes it.
//!
//! Every vendor dialect is translated (in `crate::dialects`) into a [`ChangeSet`]; applying a
//! change set to a [`Profile`] is a pure function that validates the result and reports every
//! canonical field that changed. The store loads, applies and saves in one transaction.

mod change;
mod custom_field;
mod profile;
pub mod rules;

pub use change::{ChangeSet, FieldChange, Op, TagWrite};
pub use custom_field::{CustomFieldDefinition, CustomFieldType, DEFAULT_TEXT_MAX_LENGTH, NewCustomField};
pub use profile::{Field, MemberType, Profile, ProfileKey, ProfileStatus, STANDARD_NAMES, Scalar};
