//! The schema guard: `schema.graphql` is exactly what the code generates, and it holds the
//! whole public contract unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{ServiceDocument, TypeDefinition, TypeKind, TypeSystemDefinition};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn schema_graphql_matches_the_code() {
    let generated = profile_gateway::sdl();
    let path = root().join("schema.graphql");
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("schema.graphql is writable");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema.graphql is out of date with the code.\n\
         Regenerate it with `cargo run -- print-schema > schema.graphql` \
         (or `UPDATE_SCHEMA=1 cargo test --test schema`) and commit the result."
    );
}

/// Every type of the contract, by name, as the SDL parser sees it.
fn types(document: &ServiceDocument) -> BTreeMap<String, &TypeDefinition> {
    document
        .definitions
        .iter()
        .filter_map(|definition| match definition {
            TypeSystemDefinition::Type(ty) => Some((ty.node.name.node.to_string(), &ty.node)),
            _ => None,
        })
        .collect()
}

/// A type's members as comparable text: fields with their arguments, defaults and types,
/// input fields, enum values, and the directives on the type.
fn members(ty: &TypeDefinition) -> Vec<String> {
    let mut members: Vec<String> = ty.directives.iter().map(|d| format!("@{}", d.node.name.node)).collect();
    match &ty.kind {
        TypeKind::Object(object) => {
            for field in &object.fields {
                let args: Vec<String> = field
                    .node
                    .arguments
                    .iter()
                    .map(|arg| {
                        let default = arg
                            .node
                            .default_value
                            .as_ref()
                            .map(|v| format!(" = {}", v.node))
                            .unwrap_or_default();
                        format!("{}: {}{default}", arg.node.name.node, arg.node.ty.node)
                    })
                    .collect();
                members.push(format!(
                    "{}({}): {}",
                    field.node.name.node,
                    args.join(", "),
                    field.node.ty.node
                ));
            }
        }
        TypeKind::InputObject(input) => {
            for field in &input.fields {
                members.push(format!("{}: {}", field.node.name.node, field.node.ty.node));
            }
        }
        TypeKind::Enum(enumeration) => {
            members.extend(enumeration.values.iter().map(|value| value.node.value.node.to_string()));
        }
        TypeKind::Scalar => members.push("scalar".to_owned()),
        TypeKind::Interface(_) => members.push("interface".to_owned()),
        TypeKind::Union(_) => members.push("union".to_owned()),
    }
    members
}

/// The contract's copy in the repository (so that a fresh clone's tests need nothing beside
/// it) is the shared contract, where that is checked out next to the repository.
#[test]
fn the_contracts_copy_is_the_shared_contract() {
    let shared = root().join("../shared/contract/api.graphql");
    let Ok(shared) = std::fs::read_to_string(&shared) else {
        println!(
            "skipped: no shared contract at {} to compare the copy with",
            shared.display()
        );
        return;
    };
    let copy = std::fs::read_to_string(root().join("tests/contract/api.graphql")).expect("the contract's copy");
    assert!(
        copy == shared,
        "tests/contract/api.graphql differs from ../shared/contract/api.graphql: copy it again"
    );
}

#[test]
fn schema_holds_every_name_and_type_of_the_contract() {
    let contract_path = std::env::var_os("CONTRACT_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/contract/api.graphql"));
    let contract = std::fs::read_to_string(&contract_path)
        .unwrap_or_else(|err| panic!("cannot read the contract at {}: {err}", contract_path.display()));
    let contract = parse_schema(&contract).expect("the contract parses");
    let generated = parse_schema(profile_gateway::sdl()).expect("the generated SDL parses");
    let ours = types(&generated);
    let mut missing = Vec::new();
    for (name, wanted) in types(&contract) {
        let Some(have) = ours.get(&name) else {
            missing.push(format!("type {name}"));
            continue;
        };
        let have = members(have);
        for member in members(wanted) {
            if !have.contains(&member) {
                missing.push(format!("{name}.{member}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the schema differs from the contract in:\n  {}",
        missing.join("\n  ")
    );
}

/// `schema.graphql` builds with graphql-js 17, the reference implementation frontends use,
/// and its @oneOf inputs behave as such there. `.ci/run` installs the checker and sets
/// REQUIRE_GRAPHQL_JS so that a missing install fails rather than skips.
#[test]
fn schema_graphql_builds_with_graphql_js_17() {
    let checker = root().join("tests/graphql-js");
    if !checker.join("node_modules/graphql").exists() {
        assert!(
            std::env::var_os("REQUIRE_GRAPHQL_JS").is_none(),
            "REQUIRE_GRAPHQL_JS is set but graphql-js is missing: run `npm ci --prefix tests/graphql-js`"
        );
        println!("skipped: graphql-js is not installed (`npm ci --prefix tests/graphql-js`)");
        return;
    }
    let output = std::process::Command::new("node")
        .arg(checker.join("check-schema.mjs"))
        .arg(root().join("schema.graphql"))
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "graphql-js refuses schema.graphql:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
