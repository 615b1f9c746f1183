//! History names the person who made a change with an end-user token: the token's issuer and
//! subject, beside the API key id that names a service.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per statement.
        for column in [
            text_null(ProfileChanges::ActorIssuer),
            text_null(ProfileChanges::ActorSubject),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ProfileChanges::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [ProfileChanges::ActorIssuer, ProfileChanges::ActorSubject] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ProfileChanges::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum ProfileChanges {
    Table,
    ActorIssuer,
    ActorSubject,
}
