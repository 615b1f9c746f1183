//! Schema migrations for profile-gateway, as ordinary sea-orm-migration files.
//!
//! The server applies them on start, `profile-gateway migrate` applies them and exits, and
//! the integration tests run them against every fresh test database.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_core_tables;
mod m20261124_000002_create_api_keys;
mod m20261124_000003_create_history_and_idempotency;
mod m20261201_000004_sqlite_tags_and_groups_without_rowid;
mod m20261207_000005_repair_unreadable_values;
mod m20261207_000006_tenant_settings;
mod m20261208_000007_history_names_persons;

/// Every migration of the service, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_core_tables::Migration),
            Box::new(m20261124_000002_create_api_keys::Migration),
            Box::new(m20261124_000003_create_history_and_idempotency::Migration),
            Box::new(m20261201_000004_sqlite_tags_and_groups_without_rowid::Migration),
            Box::new(m20261207_000005_repair_unreadable_values::Migration),
            Box::new(m20261207_000006_tenant_settings::Migration),
            Box::new(m20261208_000007_history_names_persons::Migration),
        ]
    }
}
