//! Makes the values that no read could parse readable again, and logs each repair.
//!
//! Before the limits of issue #37, three kinds of value could be stored that made every later
//! read (and update) of their profile fail:
//!
//! - an attribute value nested past the 128 levels a read parses, sent as an inline literal;
//!   now a value nests at most 32 levels. Each value nested deeper than that, in a profile's
//!   attributes and in its history's changes, is replaced by a string of its JSON text.
//! - a number past a 64-bit float's range (PostgreSQL keeps `1e400` exactly; no read can
//!   hold it). Each is replaced by a string of its digits.
//! - a tag key not in Unicode NFC, so that "Café" composed and decomposed were two tags. Each
//!   key is stored in NFC; where that makes two tags of one key, the one already in NFC stays.
//!
//! Versions and history are left as they are: nothing a client changed changes. Rows are read
//! a page at a time, so a large database is repaired in bounded memory.

use std::borrow::Cow;

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value as SqlValue};
use sea_orm_migration::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

/// The deepest an attribute value nests (`rules::MAX_ATTRIBUTE_DEPTH` in the service).
const MAX_DEPTH: usize = 32;
/// Rows read at a time.
const PAGE: u64 = 500;
/// The stack a document nested past what serde_json parses by default is repaired on: a
/// stored document is at most a few dozen KiB, so it nests a few thousand levels at most.
const DEEP_STACK_BYTES: usize = 256 * 1024 * 1024;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        repair_documents(db, "profiles", "attributes", "id", Document::Attributes).await?;
        repair_documents(db, "profile_changes", "changes", "id", Document::Changes).await?;
        repair_tag_keys(db).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // What was unreadable stays readable.
        Ok(())
    }
}

/// What a stored JSON document holds.
#[derive(Clone, Copy, Debug)]
enum Document {
    /// A profile's attributes: an object of attribute values.
    Attributes,
    /// A history record's changes: a list of `{field, before, after}`.
    Changes,
}

async fn repair_documents(
    db: &SchemaManagerConnection<'_>,
    table: &str,
    column: &str,
    key: &str,
    document: Document,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let mut after: Option<Uuid> = None;
    loop {
        let (filter, values) = match &after {
            Some(last) => (format!("WHERE {key} > $1"), vec![SqlValue::from(*last)]),
            None => (String::new(), vec![]),
        };
        let select = format!(
            "SELECT {key} AS k, CAST({column} AS TEXT) AS doc FROM {table} {filter} ORDER BY {key} LIMIT {PAGE}"
        );
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(backend, select, values))
            .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = Some(last.try_get("", "k")?);
        for row in &rows {
            let text: String = row.try_get("", "doc")?;
            let Some(fixed) = repaired(&text, document).map_err(DbErr::Custom)? else {
                continue;
            };
            let id: Uuid = row.try_get("", "k")?;
            let cast = if backend == DbBackend::Postgres {
                "CAST($1 AS jsonb)"
            } else {
                "$1"
            };
            let update = format!("UPDATE {table} SET {column} = {cast} WHERE {key} = $2");
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                update,
                [fixed.into(), id.into()],
            ))
            .await?;
            tracing::warn!(table, row = %id, "repaired a stored value no read could parse");
        }
    }
}

/// Stores every tag key in NFC; of two tags that become one, keeps the one in NFC already.
async fn repair_tag_keys(db: &SchemaManagerConnection<'_>) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    // Only a key with a character past ASCII can be other than NFC.
    let non_ascii = match backend {
        DbBackend::Postgres => "key ~ '[^\\x01-\\x7F]'",
        _ => "key GLOB '*[^\x01-\x7F]*'",
    };
    let select = format!("SELECT profile_id, key FROM profile_tags WHERE {non_ascii}");
    let rows = db.query_all_raw(Statement::from_string(backend, select)).await?;
    for row in rows {
        let profile: Uuid = row.try_get("", "profile_id")?;
        let key: String = row.try_get("", "key")?;
        let nfc: String = key.nfc().collect();
        if nfc == key {
            continue;
        }
        let taken = db
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                "SELECT 1 AS one FROM profile_tags WHERE profile_id = $1 AND key = $2",
                [profile.into(), nfc.clone().into()],
            ))
            .await?
            .is_some();
        let (sql, values): (&str, Vec<SqlValue>) = if taken {
            (
                "DELETE FROM profile_tags WHERE profile_id = $1 AND key = $2",
                vec![profile.into(), key.into()],
            )
        } else {
            (
                "UPDATE profile_tags SET key = $3 WHERE profile_id = $1 AND key = $2",
                vec![profile.into(), key.into(), nfc.into()],
            )
        };
        db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        tracing::warn!(%profile, merged = taken, "stored a tag key in Unicode NFC");
    }
    Ok(())
}

/// The JSON text `text` should be stored as instead, or `None` when it reads as it is.
fn repaired(text: &str, document: Document) -> Result<Option<String>, String> {
    let quoted = quote_overflowing_numbers(text);
    if let Ok(mut value) = serde_json::from_str::<Value>(&quoted) {
        let flattened = flatten(&mut value, document);
        return Ok((flattened || matches!(quoted, Cow::Owned(_))).then(|| value.to_string()));
    }
    // Nested past serde_json's limit: parsed, repaired and dropped (which recurses too) on a
    // stack of its own.
    let quoted = quoted.into_owned();
    std::thread::Builder::new()
        .stack_size(DEEP_STACK_BYTES)
        .spawn(move || {
            let mut deserializer = serde_json::Deserializer::from_str(&quoted);
            deserializer.disable_recursion_limit();
            let mut value: Value = serde_json::Value::deserialize(&mut deserializer)
                .map_err(|err| format!("a stored value is not JSON: {err}"))?;
            flatten(&mut value, document);
            Ok(Some(value.to_string()))
        })
        .map_err(|err| err.to_string())?
        .join()
        .map_err(|_| "repairing a stored value failed".to_owned())?
}

/// Replaces each value of `document` nested deeper than [`MAX_DEPTH`] by a string of its JSON
/// text; whether any was.
fn flatten(document: &mut Value, kind: Document) -> bool {
    let values: Vec<&mut Value> = match (kind, document) {
        (Document::Attributes, Value::Object(attributes)) => attributes.values_mut().collect(),
        (Document::Changes, Value::Array(changes)) => changes
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|change| {
                change
                    .iter_mut()
                    .filter(|(name, _)| *name != "field")
                    .map(|(_, value)| value)
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut flattened = false;
    for value in values {
        if depth(value) > MAX_DEPTH {
            *value = Value::String(value.to_string());
            flattened = true;
        }
    }
    flattened
}

/// How many levels of lists and objects `value` nests: 0 for a scalar, 1 for `[1]`.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `text` with every number past a 64-bit float's range written as a string of its digits.
fn quote_overflowing_numbers(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'"' => {
                i += 1;
                while let Some(&b) = bytes.get(i) {
                    i += if b == b'\\' { 2 } else { 1 };
                    if b == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    i += 1;
                }
                let number = &text[start..i];
                if number.parse::<f64>().is_ok_and(f64::is_infinite) {
                    let out = out.get_or_insert_with(|| String::with_capacity(text.len() + 2));
                    out.push_str(&text[copied..start]);
                    out.push('"');
                    out.push_str(number);
                    out.push('"');
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    match out {
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn a_readable_document_is_left_as_it_is() {
        let text = format!(r#"{{"a": {}, "b": 1e300, "c": "1e400 [[["}}"#, nested(32));
        assert_eq!(repaired(&text, Document::Attributes), Ok(None));
    }

    #[test]
    fn a_value_nested_too_deeply_becomes_its_json_text() {
        for levels in [33, 200, 5_000] {
            let text = format!(r#"{{"deep": {}, "kept": [1]}}"#, nested(levels));
            let fixed = repaired(&text, Document::Attributes).unwrap().expect("a repair");
            let value: Value = serde_json::from_str(&fixed).unwrap();
            assert_eq!(value["kept"], json!([1]));
            assert_eq!(value["deep"], json!(nested(levels)), "{levels}");
        }
        let changes = format!(
            r#"[{{"field": "attributes.deep", "before": null, "after": {}}}]"#,
            nested(300)
        );
        let fixed = repaired(&changes, Document::Changes).unwrap().expect("a repair");
        let value: Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(value[0]["after"], json!(nested(300)));
        assert_eq!(value[0]["field"], "attributes.deep");
    }

    #[test]
    fn a_number_no_float_holds_becomes_a_string_of_its_digits() {
        let text = r#"{"big": 1e400, "neg": -2E+999, "fine": 1.5, "s": "9e999"}"#;
        let fixed = repaired(text, Document::Attributes).unwrap().expect("a repair");
        let value: Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(
            value,
            json!({"big": "1e400", "neg": "-2E+999", "fine": 1.5, "s": "9e999"})
        );
    }
}
