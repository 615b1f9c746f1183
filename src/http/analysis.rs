//! What an operation asks for, learned from its document before anything runs: its kind, its
//! root fields, its size against the [`Limits`], and the one validation rule async-graphql
//! lacks (a variable inside a @oneOf input must be non-null, GraphQL spec September 2025).

use std::collections::HashMap;

use async_graphql::Variables;
use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
    Type, TypeKind, TypeSystemDefinition,
};
use async_graphql_value::{ConstValue, Name, Value};

use super::limits::Limits;

/// An output field: its named type and its arguments' types.
type FieldInfo = (String, HashMap<String, Type>);

/// Types and fields of the schema, enough to follow arguments into input objects.
#[derive(Debug, Default)]
pub struct SchemaIndex {
    /// Output type → field → what it returns and takes.
    objects: HashMap<String, HashMap<String, FieldInfo>>,
    /// Input type → (whether it is @oneOf, its fields' types).
    inputs: HashMap<String, (bool, HashMap<String, Type>)>,
}

impl SchemaIndex {
    /// Indexes the schema's own SDL.
    pub fn new(sdl: &str) -> Result<Self, async_graphql::parser::Error> {
        let document = async_graphql::parser::parse_schema(sdl)?;
        let mut index = SchemaIndex::default();
        for definition in document.definitions {
            let TypeSystemDefinition::Type(ty) = definition else {
                continue;
            };
            let ty = ty.node;
            let name = ty.name.node.to_string();
            match ty.kind {
                TypeKind::Object(object) => {
                    let fields = object
                        .fields
                        .into_iter()
                        .map(|field| {
                            let field = field.node;
                            let args = field
                                .arguments
                                .into_iter()
                                .map(|arg| (arg.node.name.node.to_string(), arg.node.ty.node))
                                .collect();
                            (field.name.node.to_string(), (named(&field.ty.node).to_owned(), args))
                        })
                        .collect();
                    index.objects.insert(name, fields);
                }
                TypeKind::InputObject(input) => {
                    let one_of = ty.directives.iter().any(|d| d.node.name.node == "oneOf");
                    let fields = input
                        .fields
                        .into_iter()
                        .map(|f| (f.node.name.node.to_string(), f.node.ty.node))
                        .collect();
                    index.inputs.insert(name, (one_of, fields));
                }
                _ => {}
            }
        }
        Ok(index)
    }
}

fn named(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(name) => name.as_str(),
        BaseType::List(inner) => named(inner),
    }
}

/// Why an operation is refused before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A limit: HTTP 400 with this code.
    Limit { code: &'static str, message: &'static str },
    /// A GraphQL validation error.
    Invalid(String),
}

impl Refusal {
    fn limit(code: &'static str, message: &'static str) -> Self {
        Refusal::Limit { code, message }
    }
}

/// What the selected operation of a document does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub kind: OperationType,
    pub root_fields: Vec<String>,
}

/// The operation `operation_name` selects, if the document has exactly that one.
pub fn select<'a>(document: &'a ExecutableDocument, operation_name: Option<&str>) -> Option<&'a OperationDefinition> {
    match (&document.operations, operation_name) {
        (DocumentOperations::Single(op), None) => Some(&op.node),
        (DocumentOperations::Single(_), Some(_)) => None,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next().map(|op| &op.node),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// Checks `operation` of `document` against `limits` and the @oneOf variable rule.
pub fn analyze(
    index: &SchemaIndex,
    limits: &Limits,
    document: &ExecutableDocument,
    operation: &OperationDefinition,
    variables: &Variables,
) -> Result<Analysis, Refusal> {
    let root_type = match operation.ty {
        OperationType::Query => "Query",
        OperationType::Mutation => "Mutation",
        OperationType::Subscription => "Subscription",
    };
    let mut walk = Walk {
        index,
        limits,
        document,
        operation,
        fields: 0,
        aliases: 0,
        fragments: Vec::new(),
    };
    let mut root_fields = Vec::new();
    walk.collect_root_fields(&operation.selection_set.node, &mut root_fields);
    if root_fields.len() > limits.max_root_fields {
        return Err(Refusal::limit(
            "TOO_MANY_ROOT_FIELDS",
            "The operation selects too many root fields; split it up.",
        ));
    }
    walk.selection_set(&operation.selection_set.node, Some(root_type), 1)?;
    for value in variables.values() {
        if longest_list(value) > limits.max_input_list {
            return Err(Refusal::limit(
                "INPUT_LIST_TOO_LONG",
                "A list in the variables is too long; send fewer items.",
            ));
        }
    }
    Ok(Analysis {
        kind: operation.ty,
        root_fields,
    })
}

fn longest_list(value: &ConstValue) -> usize {
    match value {
        ConstValue::List(items) => items.iter().map(longest_list).max().unwrap_or(0).max(items.len()),
        ConstValue::Object(map) => map.values().map(longest_list).max().unwrap_or(0),
        _ => 0,
    }
}

struct Walk<'a> {
    index: &'a SchemaIndex,
    limits: &'a Limits,
    document: &'a ExecutableDocument,
    operation: &'a OperationDefinition,
    fields: usize,
    aliases: usize,
    /// Fragments being expanded, innermost last; a cycle is left for validation to report.
    fragments: Vec<&'a Name>,
}

impl<'a> Walk<'a> {
    fn collect_root_fields(&mut self, set: &'a SelectionSet, into: &mut Vec<String>) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => into.push(field.node.name.node.to_string()),
                Selection::InlineFragment(fragment) => {
                    self.collect_root_fields(&fragment.node.selection_set.node, into)
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if let Some(fragment) = self.document.fragments.get(name)
                        && !self.fragments.contains(&name)
                    {
                        self.fragments.push(name);
                        self.collect_root_fields(&fragment.node.selection_set.node, into);
                        self.fragments.pop();
                    }
                }
            }
        }
    }

    fn selection_set(&mut self, set: &'a SelectionSet, parent: Option<&'a str>, depth: usize) -> Result<(), Refusal> {
        if depth > self.limits.max_depth && !set.items.is_empty() {
            return Err(Refusal::limit(
                "QUERY_TOO_DEEP",
                "The operation nests fields too deeply.",
            ));
        }
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    self.fields += 1;
                    if self.fields > self.limits.max_complexity {
                        return Err(Refusal::limit(
                            "QUERY_TOO_COMPLEX",
                            "The operation selects too many fields.",
                        ));
                    }
                    if field.alias.is_some() {
                        self.aliases += 1;
                        if self.aliases > self.limits.max_aliases {
                            return Err(Refusal::limit(
                                "TOO_MANY_ALIASES",
                                "The operation uses too many aliases.",
                            ));
                        }
                    }
                    let definition = parent
                        .and_then(|parent| self.index.objects.get(parent))
                        .and_then(|fields| fields.get(field.name.node.as_str()));
                    for (name, value) in &field.arguments {
                        let ty = definition.and_then(|(_, args)| args.get(name.node.as_str()));
                        self.value(&value.node, ty)?;
                    }
                    let child = definition.map(|(ty, _)| ty.as_str());
                    self.selection_set(&field.selection_set.node, child, depth + 1)?;
                }
                Selection::InlineFragment(fragment) => {
                    let on = fragment
                        .node
                        .type_condition
                        .as_ref()
                        .map(|c| c.node.on.node.as_str())
                        .or(parent);
                    self.selection_set(&fragment.node.selection_set.node, on, depth)?;
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    let Some(fragment) = self.document.fragments.get(name) else {
                        continue;
                    };
                    if self.fragments.contains(&name) {
                        continue;
                    }
                    self.fragments.push(name);
                    let on = Some(fragment.node.type_condition.node.on.node.as_str());
                    self.selection_set(&fragment.node.selection_set.node, on, depth)?;
                    self.fragments.pop();
                }
            }
        }
        Ok(())
    }

    /// Checks an argument value of type `ty` (when known): list lengths, and that a variable
    /// given for a field of a @oneOf input is declared non-null.
    fn value(&self, value: &Value, ty: Option<&Type>) -> Result<(), Refusal> {
        match value {
            Value::List(items) => {
                if items.len() > self.limits.max_input_list {
                    return Err(Refusal::limit(
                        "INPUT_LIST_TOO_LONG",
                        "A list in the arguments is too long; send fewer items.",
                    ));
                }
                let inner = ty.and_then(|ty| match &ty.base {
                    BaseType::List(inner) => Some(inner.as_ref()),
                    BaseType::Named(_) => None,
                });
                items.iter().try_for_each(|item| self.value(item, inner))
            }
            Value::Object(fields) => {
                let input = ty.and_then(|ty| self.index.inputs.get(named(ty)));
                for (name, field_value) in fields {
                    let field_ty = input.and_then(|(_, fields)| fields.get(name.as_str()));
                    if let (Some((true, _)), Value::Variable(variable)) = (input, field_value) {
                        self.non_null_variable(variable, name)?;
                    }
                    self.value(field_value, field_ty)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn non_null_variable(&self, variable: &Name, field: &Name) -> Result<(), Refusal> {
        let declared = self
            .operation
            .variable_definitions
            .iter()
            .find(|d| d.node.name.node == *variable);
        match declared {
            Some(definition) if definition.node.var_type.node.nullable => Err(Refusal::Invalid(format!(
                "Variable \"${variable}\" is nullable but is used for the @oneOf input field \"{field}\", \
                 which needs a non-null type (for example {}!).",
                definition.node.var_type.node
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;
    use serde_json::json;

    use super::*;

    fn run(query: &str, variables: serde_json::Value, limits: &Limits) -> Result<Analysis, Refusal> {
        let index = SchemaIndex::new(&crate::sdl()).unwrap();
        let document = parse_query(query).unwrap();
        let operation = select(&document, None).unwrap();
        analyze(&index, limits, &document, operation, &Variables::from_json(variables))
    }

    fn code(result: Result<Analysis, Refusal>) -> &'static str {
        match result {
            Err(Refusal::Limit { code, .. }) => code,
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    #[test]
    fn root_fields_are_found_through_fragments() {
        let analysis = run(
            "mutation { ...F ... on Mutation { deleteProfile(ref: {id: \"x\"}) { id } } } \
             fragment F on Mutation { defineCustomField(input: {name: \"A\", type: TEXT}) { name } }",
            json!({}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(analysis.kind, OperationType::Mutation);
        assert_eq!(analysis.root_fields, ["defineCustomField", "deleteProfile"]);
    }

    #[test]
    fn depth_complexity_aliases_and_root_fields_are_limited() {
        let limits = Limits {
            max_depth: 3,
            max_complexity: 5,
            max_aliases: 1,
            max_root_fields: 2,
            ..Limits::default()
        };
        assert_eq!(
            code(run("{ profiles { edges { node { id } } } }", json!({}), &limits)),
            "QUERY_TOO_DEEP"
        );
        assert!(run("{ profiles { nodes { id } } }", json!({}), &limits).is_ok());
        assert_eq!(
            code(run(
                "{ profiles { nodes { id name email role city } } }",
                json!({}),
                &limits
            )),
            "QUERY_TOO_COMPLEX"
        );
        assert_eq!(
            code(run(
                "{ a: customFields { name } b: customFields { name } }",
                json!({}),
                &limits
            )),
            "TOO_MANY_ALIASES"
        );
        assert_eq!(
            code(run(
                "{ __typename customFields { name } profiles { totalCount } }",
                json!({}),
                &limits
            )),
            "TOO_MANY_ROOT_FIELDS"
        );
    }

    #[test]
    fn fragments_count_every_time_they_are_used() {
        let limits = Limits {
            max_complexity: 10,
            ..Limits::default()
        };
        let fragment = "fragment P on Profile { id name email role city }";
        let once = format!("{{ profiles {{ nodes {{ ...P }} }} }} {fragment}");
        assert!(run(&once, json!({}), &limits).is_ok());
        let thrice = format!("{{ profiles {{ nodes {{ ...P ...P ...P }} }} }} {fragment}");
        assert_eq!(code(run(&thrice, json!({}), &limits)), "QUERY_TOO_COMPLEX");
    }

    #[test]
    fn a_fragment_cycle_ends_the_walk_without_looping() {
        let query = "{ profiles { nodes { ...A } } } fragment A on Profile { id ...B } fragment B on Profile { ...A }";
        assert!(run(query, json!({}), &Limits::default()).is_ok());
    }

    #[test]
    fn long_lists_are_refused_inline_and_in_variables() {
        let limits = Limits {
            max_input_list: 2,
            ..Limits::default()
        };
        let inline =
            "mutation { updateProfile(ref: {id: \"x\"}, update: {scrip: {tags: [\"a\", \"b\", \"c\"]}}) { dryRun } }";
        assert_eq!(code(run(inline, json!({}), &limits)), "INPUT_LIST_TOO_LONG");
        let with_variables = "mutation($u: ProfileUpdate!) { updateProfile(ref: {id: \"x\"}, update: $u) { dryRun } }";
        let variables = json!({"u": {"fragment": {"tags": {"set": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}, {"key": "c", "value": "3"}]}}}});
        assert_eq!(code(run(with_variables, variables, &limits)), "INPUT_LIST_TOO_LONG");
    }

    #[test]
    fn a_nullable_variable_inside_a_one_of_input_is_invalid() {
        let nullable = "query($e: String) { profile(ref: {externalId: $e}) { id } }";
        assert!(matches!(
            run(nullable, json!({"e": "x"}), &Limits::default()),
            Err(Refusal::Invalid(_))
        ));
        let non_null = "query($e: String!) { profile(ref: {externalId: $e}) { id } }";
        assert!(run(non_null, json!({"e": "x"}), &Limits::default()).is_ok());
        let nested =
            "mutation($p: ScripParticipantPatch) { updateProfile(ref: {id: \"x\"}, update: {scrip: $p}) { dryRun } }";
        assert!(matches!(
            run(nested, json!({}), &Limits::default()),
            Err(Refusal::Invalid(_))
        ));
        let whole = "query($r: ProfileRef!) { profile(ref: $r) { id } }";
        assert!(run(whole, json!({"r": {"id": "x"}}), &Limits::default()).is_ok());
        let inside_plain_input =
            "mutation($t: [String!]) { updateProfile(ref: {id: \"x\"}, update: {scrip: {tags: $t}}) { dryRun } }";
        assert!(run(inside_plain_input, json!({}), &Limits::default()).is_ok());
    }
}
