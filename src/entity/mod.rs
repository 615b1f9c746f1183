//! SeaORM entities: the database's rows, exactly as the migrations define them.
//!
//! Nothing outside `store` touches these; the GraphQL layer speaks in domain types.

pub mod api_key;
pub mod custom_field_definition;
pub mod custom_field_value;
pub mod idempotency_key;
pub mod profile;
pub mod profile_change;
pub mod profile_group;
pub mod profile_tag;
pub mod tenant;
