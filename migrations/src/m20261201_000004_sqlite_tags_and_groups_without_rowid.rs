//! On SQLite, a profile's tags and groups are stored in their primary key's order
//! (`WITHOUT ROWID`), so that each lives in one B-tree rather than two.
//!
//! A SQLite table with a primary key other than one integer keeps its rows in a B-tree by a
//! hidden row id and its primary key in an index beside it. Replacing a profile's tags then
//! wrote the rows' pages and the key's pages; reading them went through the key to the rows.
//! Without a row id, the rows are the key's B-tree: one page for a profile's tags, next to each
//! other. The rows are small (a key of at most 50 characters, a value of at most 200; a group
//! name of at most 255), as such tables should be. PostgreSQL's tables have no row id B-tree,
//! so this changes nothing there.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// In one transaction on SQLite too (sea-orm-migration's default there is none), so that a
    /// rebuild that fails leaves the tables as they were.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild_both(manager, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild_both(manager, false).await
    }
}

/// On SQLite, rebuilds `profile_tags` and `profile_groups` without row ids or with them;
/// elsewhere does nothing.
async fn rebuild_both(manager: &SchemaManager<'_>, without_rowid: bool) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    rebuild(manager, ProfileTags::Table, tags(), &tags_index(), without_rowid).await?;
    rebuild(manager, ProfileGroups::Table, groups(), &groups_index(), without_rowid).await
}

/// Replaces the table `name` with the one `table` creates under that name (without a row id
/// when `without_rowid`), rows and all, and creates its `index` again.
async fn rebuild(
    manager: &SchemaManager<'_>,
    name: impl Iden,
    mut table: TableCreateStatement,
    index: &IndexCreateStatement,
    without_rowid: bool,
) -> Result<(), DbErr> {
    let name = name.to_string();
    let staged = format!("{name}_rebuilt");
    table.table(Alias::new(&staged));
    if without_rowid {
        table.extra("WITHOUT ROWID");
    }
    manager.create_table(table).await?;
    // The columns are the same, in the same order.
    let db = manager.get_connection();
    db.execute_unprepared(&format!(r#"INSERT INTO "{staged}" SELECT * FROM "{name}""#))
        .await?;
    db.execute_unprepared(&format!(r#"DROP TABLE "{name}""#)).await?;
    db.execute_unprepared(&format!(r#"ALTER TABLE "{staged}" RENAME TO "{name}""#))
        .await?;
    manager.create_index(index.to_owned()).await
}

/// `profile_tags` as the first migration creates it.
fn tags() -> TableCreateStatement {
    Table::create()
        .table(ProfileTags::Table)
        .col(uuid(ProfileTags::ProfileId))
        .col(string_len(ProfileTags::Key, 50))
        .col(string_len_null(ProfileTags::Value, 200))
        .primary_key(Index::create().col(ProfileTags::ProfileId).col(ProfileTags::Key))
        .foreign_key(
            ForeignKey::create()
                .from(ProfileTags::Table, ProfileTags::ProfileId)
                .to(Profiles::Table, Profiles::Id)
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

/// Serves the `profiles(filter: {tag})` lookup.
fn tags_index() -> IndexCreateStatement {
    Index::create()
        .name("ix_profile_tags_key")
        .table(ProfileTags::Table)
        .col(ProfileTags::Key)
        .col(ProfileTags::ProfileId)
        .to_owned()
}

/// `profile_groups` as the first migration creates it.
fn groups() -> TableCreateStatement {
    Table::create()
        .table(ProfileGroups::Table)
        .col(uuid(ProfileGroups::ProfileId))
        .col(string_len(ProfileGroups::Name, 255))
        .primary_key(Index::create().col(ProfileGroups::ProfileId).col(ProfileGroups::Name))
        .foreign_key(
            ForeignKey::create()
                .from(ProfileGroups::Table, ProfileGroups::ProfileId)
                .to(Profiles::Table, Profiles::Id)
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

/// Serves the `profiles(filter: {group})` lookup.
fn groups_index() -> IndexCreateStatement {
    Index::create()
        .name("ix_profile_groups_name")
        .table(ProfileGroups::Table)
        .col(ProfileGroups::Name)
        .col(ProfileGroups::ProfileId)
        .to_owned()
}

#[derive(DeriveIden, Clone, Copy)]
enum Profiles {
    Table,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum ProfileTags {
    Table,
    ProfileId,
    Key,
    Value,
}

#[derive(DeriveIden, Clone, Copy)]
enum ProfileGroups {
    Table,
    ProfileId,
    Name,
}
