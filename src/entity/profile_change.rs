use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "profile_changes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub profile_id: Uuid,
    pub version: i32,
    pub operation: String,
    /// A JSON array of `{field, before, after}`.
    #[sea_orm(column_type = "JsonBinary")]
    pub changes: Json,
    pub api_key_id: Option<Uuid>,
    /// The issuer and subject of the end-user token that made the change.
    pub actor_issuer: Option<String>,
    pub actor_subject: Option<String>,
    pub request_id: Option<String>,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
