//! Input that the database itself would choke on is refused (or finds nothing) before it
//! gets there: never an INTERNAL error.

use serde_json::{Value, json};

use crate::on_both_databases;

on_both_databases! {
    async fn a_nul_character_in_attributes_is_validation_failed(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        for attributes in [json!({"a": "x\u{0}y"}), json!({"a": {"nested": ["\u{0}"]}}), json!({"a": {"k\u{0}": 1}})] {
            let response = app.update(&id, json!({"scrip": {"attributes": attributes}})).await;
            assert_eq!(response["errors"][0]["extensions"]["code"], "VALIDATION_FAILED", "{response}");
        }
        let metadata = json!({"competitionLabs": {"id": id, "memberType": "TEAM", "memberRefId": "m", "metadata": [{"key": "k", "value": "\u{0}"}]}});
        let response = app.update(&id, metadata).await;
        assert_eq!(response["errors"][0]["extensions"]["code"], "VALIDATION_FAILED", "{response}");
        let response = app.graphql("mutation($a: JSON) { createProfile(input: {attributes: $a}) { id } }", json!({"a": {"k": "\u{0}"}})).await;
        assert_eq!(response["errors"][0]["extensions"]["code"], "VALIDATION_FAILED", "{response}");
    }

    async fn lookups_and_filters_with_a_nul_character_find_nothing(app) {
        app.create(json!({"externalId": "a"})).await;
        let data = app.ok("query($r: ProfileRef!) { profile(ref: $r) { id } }", json!({"r": {"externalId": "a\u{0}"}})).await;
        assert_eq!(data["profile"], Value::Null);
        let missing = app.graphql("mutation($r: ProfileRef!) { deleteProfile(ref: $r) { id } }", json!({"r": {"externalId": "\u{0}"}})).await;
        assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND", "{missing}");
        for filter in [json!({"tag": "\u{0}"}), json!({"group": "g\u{0}"})] {
            let data = app.ok("query($f: ProfileFilter) { profiles(filter: $f) { totalCount } }", json!({"f": filter})).await;
            assert_eq!(data["profiles"]["totalCount"], 0);
        }
    }

    async fn the_longest_custom_text_value_is_stored(app) {
        app.ok("mutation { defineCustomField(input: {name: \"Essay\", type: TEXT, maxLength: 10000}) { name } }", json!({})).await;
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        // Varied enough that PostgreSQL cannot compress it below an index entry's size.
        let essay: String = (0..10_000u32).map(|i| char::from_u32(0x4e00 + (i.wrapping_mul(7919) % 20_000)).unwrap()).collect();
        let response = app.update(&id, json!({"profileValues": {"values": [{"name": "Essay", "value": essay}]}})).await;
        assert!(response.get("errors").is_none(), "{response}");
        assert_eq!(app.profile(&id).await["values"]["Essay"], essay);
    }
}
