//! Profile.history: every applied change, newest first, and a tombstone after a delete.

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::helpers::UPDATE;
use crate::on_both_databases;

const HISTORY: &str = "query($id: ID!, $first: Int!, $after: String) {
    profile(ref: {id: $id}) {
        history(first: $first, after: $after) {
            edges { cursor node { version operation } }
            nodes { version operation changes { field before after } actor requestId at }
            pageInfo { hasNextPage endCursor }
        }
    }
}";

on_both_databases! {
    async fn every_applied_change_is_recorded_newest_first_with_its_actor_and_request(app) {
        let id = app.create(json!({"firstName": "Ana"})).await["id"].as_str().unwrap().to_owned();
        let updated = app.update(&id, json!({"scrip": {"attributes": {"plan": "premium"}}})).await;
        let update_request = updated["extensions"]["requestId"].clone();
        app.update(&id, json!({"spruce": {"role": "customer"}})).await;
        app.ok("mutation($id: ID!) { setProfileStatus(ref: {id: $id}, status: SUSPENDED) { version } }", json!({"id": id})).await;
        // Neither a dry run nor an update that changes nothing is a change.
        app.graphql(UPDATE, json!({"ref": {"id": id}, "update": {"spruce": {"role": "x"}}, "dryRun": true})).await;
        app.update(&id, json!({"spruce": {"role": "customer"}})).await;

        let history = app.ok(HISTORY, json!({"id": id, "first": 10})).await["profile"]["history"].clone();
        let nodes = history["nodes"].as_array().unwrap();
        let operations: Vec<(i64, &str)> =
            nodes.iter().map(|n| (n["version"].as_i64().unwrap(), n["operation"].as_str().unwrap())).collect();
        assert_eq!(
            operations,
            [(4, "setProfileStatus"), (3, "updateProfile.spruce"), (2, "updateProfile.scrip"), (1, "createProfile")]
        );
        assert_eq!(nodes[0]["changes"], json!([{"field": "status", "before": "ACTIVE", "after": "SUSPENDED"}]));
        assert_eq!(nodes[2]["changes"], json!([{"field": "attributes.plan", "before": null, "after": "premium"}]));
        assert_eq!(nodes[2]["requestId"], update_request);
        assert_eq!(nodes[3]["changes"], json!([{"field": "firstName", "before": null, "after": "Ana"}]));
        let admin = app.keys().list().await.unwrap().into_iter().find(|k| k.tenant == "default").unwrap();
        assert!(nodes.iter().all(|n| n["actor"] == admin.id.to_string()), "{nodes:?}");
        assert!(nodes.iter().all(|n| n["at"].as_str().is_some_and(|at| at.ends_with('Z') || at.contains('+'))));
        assert_eq!(history["pageInfo"]["hasNextPage"], false);
    }

    async fn history_pages_by_cursor(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        for n in 0..4 {
            app.update(&id, json!({"scrip": {"attributes": {"n": n}}})).await;
        }
        let page = app.ok(HISTORY, json!({"id": id, "first": 2})).await["profile"]["history"].clone();
        let versions = |page: &Value| page["edges"].as_array().unwrap().iter().map(|e| e["node"]["version"].as_i64().unwrap()).collect::<Vec<_>>();
        assert_eq!(versions(&page), [5, 4]);
        assert_eq!(page["pageInfo"]["hasNextPage"], true);
        let next = app.ok(HISTORY, json!({"id": id, "first": 2, "after": page["pageInfo"]["endCursor"]})).await["profile"]["history"].clone();
        assert_eq!(versions(&next), [3, 2]);
        let last = app.ok(HISTORY, json!({"id": id, "first": 2, "after": next["pageInfo"]["endCursor"]})).await["profile"]["history"].clone();
        assert_eq!((versions(&last), last["pageInfo"]["hasNextPage"].clone()), (vec![1], json!(false)));
        let bad = app.graphql(HISTORY, json!({"id": id, "first": 2, "after": "nonsense"})).await;
        assert_eq!(bad["errors"][0]["extensions"]["code"], "VALIDATION_FAILED");
    }

    async fn a_deleted_profile_leaves_only_a_tombstone_without_personal_data(app) {
        let id = app.create(json!({"email": "ana@example.com", "firstName": "Ana"})).await["id"].as_str().unwrap().to_owned();
        app.update(&id, json!({"spruce": {"profile": {"city": "London"}}})).await;
        app.ok("mutation($id: ID!) { deleteProfile(ref: {id: $id}) { id } }", json!({"id": id})).await;
        let db = profile_gateway::db::connect(&app.database_url).await.unwrap();
        let backend = db.get_database_backend();
        let rows = db
            .query_all_raw(Statement::from_string(backend, "SELECT version, operation, changes FROM profile_changes"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "history of a deleted profile should be one tombstone");
        assert_eq!(rows[0].try_get::<i32>("", "version").unwrap(), 3);
        assert_eq!(rows[0].try_get::<String>("", "operation").unwrap(), "deleteProfile");
        let changes: Value = rows[0].try_get("", "changes").unwrap();
        assert_eq!(changes, json!([]));
        let all = db.query_all_raw(Statement::from_string(backend, "SELECT * FROM profile_changes")).await.unwrap();
        let dump = format!("{all:?}");
        assert!(!dump.contains("ana@example.com") && !dump.contains("London"), "personal data left: {dump}");
    }

    async fn history_records_take_ids_that_sort_in_the_order_the_changes_were_made(app) {
        // Ids that sort by time put each new record at the end of the history's primary-key
        // index; random ones would come back in order once in 11! tries.
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        for n in 0..10 {
            app.update(&id, json!({"scrip": {"attributes": {"n": n}, "tags": [format!("t{n}")]}})).await;
        }
        let db = profile_gateway::db::connect(&app.database_url).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT id FROM profile_changes ORDER BY version",
            ))
            .await
            .unwrap();
        let ids: Vec<uuid::Uuid> = rows.iter().map(|row| row.try_get("", "id").unwrap()).collect();
        assert_eq!(ids.len(), 11);
        assert!(ids.is_sorted(), "{ids:?}");
    }
}
