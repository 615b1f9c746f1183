//! The README's GraphiQL examples, run as written and in order, so that they stay runnable.

use serde_json::json;

use crate::helpers::TestApp;

fn examples() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim()) {
            (None, "```graphql") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_graphiql_example_of_the_readme_runs_as_written() {
    let app = TestApp::sqlite().await;
    let examples = examples();
    assert!(examples.len() >= 8, "the README lost its examples");
    let mut id = None;
    for example in examples {
        // The one example that needs a variable says so: the id createProfile returned.
        let variables = if example.contains("$id") {
            json!({ "id": id })
        } else {
            json!({})
        };
        let data = app.ok(&example, variables).await;
        // Each update shows a real change in the order the README gives them.
        for (field, answer) in data.as_object().into_iter().flatten() {
            if let Some(changes) = answer.get("changes") {
                assert!(
                    changes.as_array().is_some_and(|changes| !changes.is_empty()),
                    "{field} changed nothing: {example}"
                );
            }
        }
        if let Some(created) = data.get("createProfile") {
            id = Some(created["id"].clone());
        }
    }
    let profile = app
        .ok(
            "{ profile(ref: {externalId: \"ana-1\"}) { name lastName status tags { key } } }",
            json!({}),
        )
        .await;
    assert_eq!(profile["profile"]["name"], "Ana G.");
    assert_eq!(profile["profile"]["lastName"], "García");
    assert_eq!(profile["profile"]["status"], "SUSPENDED");
}
