//! What an operation asks for, learned from its document before anything runs: its kind, its
//! root fields, its size against the [`Limits`], the one validation rule async-graphql lacks
//! (a variable inside a @oneOf input must be non-null, GraphQL spec September 2025), and
//! whether a request's variables surely pass async-graphql's check of them
//! ([`variables_surely_valid`]).

use std::collections::{HashMap, HashSet};

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
    Type, TypeKind, TypeSystemDefinition,
};
use async_graphql::{ID, ScalarType, Variables};
use async_graphql_value::{ConstValue, Name, Value};

use super::limits::Limits;

/// An output field: its named type, its arguments' types, and the default of its page size
/// argument `first` when it has one.
#[derive(Debug)]
struct FieldInfo {
    ty: String,
    args: HashMap<String, Type>,
    page: Option<usize>,
}

/// The largest page a `first` argument asks for; a larger one is refused by its resolver (a
/// variable's page counts as this large).
const LARGEST_PAGE: usize = 100;

/// An input object: whether it is @oneOf, and its fields.
#[derive(Debug)]
struct InputInfo {
    one_of: bool,
    /// Field → its type and whether it has a default value.
    fields: HashMap<String, (Type, bool)>,
}

/// Types and fields of the schema, enough to follow arguments into input objects and to check
/// input values.
#[derive(Debug, Default)]
pub struct SchemaIndex {
    /// Output type → field → what it returns and takes.
    objects: HashMap<String, HashMap<String, FieldInfo>>,
    /// Input type → what it is made of.
    inputs: HashMap<String, InputInfo>,
    /// Enum → its values.
    enums: HashMap<String, HashSet<String>>,
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
                    let fields =
                        object
                            .fields
                            .into_iter()
                            .map(|field| {
                                let field = field.node;
                                let page = field.arguments.iter().find(|arg| arg.node.name.node == "first").map(
                                    |arg| match arg.node.default_value.as_ref().map(|value| &value.node) {
                                        Some(ConstValue::Number(n)) => page_size(n),
                                        _ => LARGEST_PAGE,
                                    },
                                );
                                let args = field
                                    .arguments
                                    .into_iter()
                                    .map(|arg| (arg.node.name.node.to_string(), arg.node.ty.node))
                                    .collect();
                                let ty = named(&field.ty.node).to_owned();
                                (field.name.node.to_string(), FieldInfo { ty, args, page })
                            })
                            .collect();
                    index.objects.insert(name, fields);
                }
                TypeKind::InputObject(input) => {
                    let one_of = ty.directives.iter().any(|d| d.node.name.node == "oneOf");
                    let fields = input
                        .fields
                        .into_iter()
                        .map(|f| {
                            let f = f.node;
                            (f.name.node.to_string(), (f.ty.node, f.default_value.is_some()))
                        })
                        .collect();
                    index.inputs.insert(name, InputInfo { one_of, fields });
                }
                TypeKind::Enum(values) => {
                    let values = values
                        .values
                        .into_iter()
                        .map(|v| v.node.value.node.to_string())
                        .collect();
                    index.enums.insert(name, values);
                }
                _ => {}
            }
        }
        Ok(index)
    }
}

/// The items a page of `first` costs: at most [`LARGEST_PAGE`]; a negative one none (its
/// resolver refuses it, as it does one past the largest).
fn page_size(first: &serde_json::Number) -> usize {
    match (first.as_u64(), first.as_i64()) {
        (Some(n), _) => usize::try_from(n).unwrap_or(usize::MAX).min(LARGEST_PAGE),
        (None, Some(_)) => 0,
        (None, None) => LARGEST_PAGE,
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
    /// The fields the operation may answer, each page counted as the items it asks for: what
    /// [`Limits::max_complexity`] bounds, for the operation and for a batch's sum.
    pub cost: usize,
    /// Whether it asks for a page anywhere (a field with `first`): only a page's rows are
    /// charged to the response's budget.
    pub pages: bool,
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

/// Whether `document` holds a single operation, which every request with it then selects.
pub fn has_one_operation(document: &ExecutableDocument) -> bool {
    match &document.operations {
        DocumentOperations::Single(_) => true,
        DocumentOperations::Multiple(operations) => operations.len() == 1,
    }
}

/// The longest chain of fragments in `document` that spread one another (a fragment that
/// spreads another is 2). Brackets nest no deeper than the scan before
/// parsing allowed, but such a chain nests without brackets, and every walk over the document
/// (the analysis, validation's rules) recurses once per link; this one does not recurse along
/// it. A cycle counts as the links that lead into it (validation reports the cycle).
pub fn fragment_chain(document: &ExecutableDocument) -> usize {
    fn spreads<'a>(set: &'a SelectionSet, into: &mut Vec<&'a Name>) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => spreads(&field.node.selection_set.node, into),
                Selection::InlineFragment(fragment) => spreads(&fragment.node.selection_set.node, into),
                Selection::FragmentSpread(spread) => into.push(&spread.node.fragment_name.node),
            }
        }
    }
    let mut graph: HashMap<&Name, Vec<&Name>> = HashMap::new();
    for (name, fragment) in &document.fragments {
        spreads(&fragment.node.selection_set.node, graph.entry(name).or_default());
    }
    // The longest chain from each fragment, found depth first with a stack of our own.
    let mut longest: HashMap<&Name, usize> = HashMap::new();
    for &start in graph.keys() {
        if longest.contains_key(start) {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        let mut on_path: HashSet<&Name> = HashSet::from([start]);
        while let Some(&mut (name, ref mut next)) = stack.last_mut() {
            let children = graph.get(name).map_or(&[][..], Vec::as_slice);
            if let Some(&child) = children.get(*next) {
                *next += 1;
                if graph.contains_key(child) && !longest.contains_key(child) && on_path.insert(child) {
                    stack.push((child, 0));
                }
                continue;
            }
            let depth = 1 + children
                .iter()
                .filter_map(|child| longest.get(child))
                .max()
                .unwrap_or(&0);
            longest.insert(name, depth);
            on_path.remove(name);
            stack.pop();
        }
    }
    longest.values().max().copied().unwrap_or(0)
}

/// Checks `operation` of `document` against `limits` and the @oneOf variable rule, and the
/// lists in `variables` against `limits`: [`analyze_operation`], then [`check_variables`].
pub fn analyze(
    index: &SchemaIndex,
    limits: &Limits,
    document: &ExecutableDocument,
    operation: &OperationDefinition,
    variables: &Variables,
) -> Result<Analysis, Refusal> {
    let analysis = analyze_operation(index, limits, document, operation)?;
    check_variables(limits, variables)?;
    Ok(analysis)
}

/// Checks `operation` of `document` against `limits` and the @oneOf variable rule: what depends
/// on the document alone, not on the request's variables.
pub fn analyze_operation(
    index: &SchemaIndex,
    limits: &Limits,
    document: &ExecutableDocument,
    operation: &OperationDefinition,
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
        pages: false,
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
    walk.selection_set(&operation.selection_set.node, Some(root_type), 1, 1, None)?;
    Ok(Analysis {
        kind: operation.ty,
        root_fields,
        cost: walk.fields,
        pages: walk.pages,
    })
}

/// The refusal of an operation, or a batch, that may answer too many fields.
pub fn too_complex() -> Refusal {
    Refusal::limit(
        "QUERY_TOO_COMPLEX",
        "The operation may answer too many fields (each page counts as many times as the items it asks for); ask for smaller pages or fewer fields.",
    )
}

/// Checks the lists in `variables` against `limits`.
pub fn check_variables(limits: &Limits, variables: &Variables) -> Result<(), Refusal> {
    for value in variables.values() {
        if longest_list(value) > limits.max_input_list {
            return Err(Refusal::limit(
                "INPUT_LIST_TOO_LONG",
                "A list in the variables is too long; send fewer items.",
            ));
        }
    }
    Ok(())
}

/// Whether a request's validation vouches for its whole document: the document holds this one
/// operation, and the request gives every variable the operation declares (async-graphql
/// checks an argument's literal parts only when it can fill in all of the argument's
/// variables).
pub fn vouches(document: &ExecutableDocument, operation: &OperationDefinition, variables: &Variables) -> bool {
    has_one_operation(document)
        && operation
            .variable_definitions
            .iter()
            .all(|definition| variables.contains_key(&definition.node.name.node))
}

/// Whether async-graphql's validation surely accepts `variables` for `operation`, whose
/// document it accepted before from a request that [`vouches`] for it: so its literals are
/// valid, and its variables are used only where their declared types fit. What is left to
/// check is each variable the request gives, against its declared type, by async-graphql's
/// rules. `false` means "not sure", not "invalid" (a null, a type not indexed): such a
/// request is validated in full.
pub fn variables_surely_valid(index: &SchemaIndex, operation: &OperationDefinition, variables: &Variables) -> bool {
    operation.variable_definitions.iter().all(|definition| {
        let definition = &definition.node;
        match variables.get(&definition.name.node) {
            None => true,
            // Null is valid in some positions of a nullable variable and not in others.
            Some(ConstValue::Null) => false,
            Some(value) => index.surely_valid(&definition.var_type.node, value),
        }
    })
}

impl SchemaIndex {
    /// Whether async-graphql takes `value` as a `ty` (its `is_valid_input_value`, mirrored
    /// where that accepts; whatever it would take only with a later error is `false`).
    fn surely_valid(&self, ty: &Type, value: &ConstValue) -> bool {
        if let ConstValue::Null = value {
            return ty.nullable;
        }
        match &ty.base {
            BaseType::List(item) => match value {
                ConstValue::List(items) => items.iter().all(|item_value| self.surely_valid(item, item_value)),
                // A single value where a list is expected counts as a list of one.
                other => self.surely_valid(item, other),
            },
            BaseType::Named(name) => self.surely_valid_named(name, value),
        }
    }

    fn surely_valid_named(&self, name: &str, value: &ConstValue) -> bool {
        if let Some(valid) = scalar_valid(name, value) {
            return valid;
        }
        if let Some(values) = self.enums.get(name) {
            return match value {
                ConstValue::Enum(item) => values.contains(item.as_str()),
                ConstValue::String(item) => values.contains(item.as_str()),
                _ => false,
            };
        }
        let (Some(input), ConstValue::Object(given)) = (self.inputs.get(name), value) else {
            return false;
        };
        if input.one_of && (given.len() != 1 || given.values().any(|v| matches!(v, ConstValue::Null))) {
            return false;
        }
        given.keys().all(|field| input.fields.contains_key(field.as_str()))
            && input
                .fields
                .iter()
                .all(|(field, (ty, has_default))| match given.get(field.as_str()) {
                    Some(field_value) => self.surely_valid(ty, field_value),
                    None => ty.nullable || *has_default,
                })
    }
}

/// async-graphql's own check of a value of the scalar `name`, for the scalars that inputs
/// use; `None` for any other.
fn scalar_valid(name: &str, value: &ConstValue) -> Option<bool> {
    Some(match name {
        "String" => <String as ScalarType>::is_valid(value),
        "Int" => <i32 as ScalarType>::is_valid(value),
        "Float" => <f64 as ScalarType>::is_valid(value),
        "Boolean" => <bool as ScalarType>::is_valid(value),
        "ID" => <ID as ScalarType>::is_valid(value),
        // async-graphql's `Json` has no check: any value is one.
        "JSON" => true,
        _ => return None,
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
    pages: bool,
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

    /// Walks `set`, each of whose fields is answered `times` times (the product of the pages
    /// around it, as GitHub counts nodes). When `set` is a page's, `page` is the items it asks
    /// for: what its `nodes` and `edges` hold counts once per item, the rest (`totalCount`,
    /// `pageInfo`) once.
    fn selection_set(
        &mut self,
        set: &'a SelectionSet,
        parent: Option<&'a str>,
        depth: usize,
        times: usize,
        page: Option<usize>,
    ) -> Result<(), Refusal> {
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
                    self.fields = self.fields.saturating_add(times);
                    if self.fields > self.limits.max_complexity {
                        return Err(too_complex());
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
                    let mut asks = definition.and_then(|definition| definition.page);
                    self.pages |= asks.is_some();
                    for (name, value) in &field.arguments {
                        let ty = definition.and_then(|definition| definition.args.get(name.node.as_str()));
                        self.value(&value.node, ty)?;
                        if name.node == "first" && asks.is_some() {
                            asks = Some(match &value.node {
                                Value::Number(n) => page_size(n),
                                _ => LARGEST_PAGE,
                            });
                        }
                    }
                    let child = definition.map(|definition| definition.ty.as_str());
                    let times = match (page, field.name.node.as_str()) {
                        (Some(items), "nodes" | "edges") => times.saturating_mul(items),
                        _ => times,
                    };
                    self.selection_set(&field.selection_set.node, child, depth + 1, times, asks)?;
                }
                Selection::InlineFragment(fragment) => {
                    let on = fragment
                        .node
                        .type_condition
                        .as_ref()
                        .map(|c| c.node.on.node.as_str())
                        .or(parent);
                    self.selection_set(&fragment.node.selection_set.node, on, depth, times, page)?;
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
                    self.selection_set(&fragment.node.selection_set.node, on, depth, times, page)?;
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
                    let field_ty = input
                        .and_then(|input| input.fields.get(name.as_str()))
                        .map(|(ty, _)| ty);
                    if let (Some(InputInfo { one_of: true, .. }), Value::Variable(variable)) = (input, field_value) {
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
            code(run(
                "{ profiles(first: 1) { edges { node { id } } } }",
                json!({}),
                &limits
            )),
            "QUERY_TOO_DEEP"
        );
        assert!(run("{ profiles(first: 1) { nodes { id } } }", json!({}), &limits).is_ok());
        assert_eq!(
            code(run(
                "{ profiles(first: 1) { nodes { id name email role city } } }",
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
        let once = format!("{{ profiles(first: 1) {{ nodes {{ ...P }} }} }} {fragment}");
        assert!(run(&once, json!({}), &limits).is_ok());
        let thrice = format!("{{ profiles(first: 1) {{ nodes {{ ...P ...P ...P }} }} }} {fragment}");
        assert_eq!(code(run(&thrice, json!({}), &limits)), "QUERY_TOO_COMPLEX");
    }

    #[test]
    fn whatever_a_page_holds_counts_once_per_item_it_asks_for() {
        let cost = |query: &str, variables: serde_json::Value| run(query, variables, &Limits::default()).unwrap().cost;
        // profiles, nodes and totalCount once, id for each of 10 profiles.
        assert_eq!(
            cost("{ profiles(first: 10) { totalCount nodes { id } } }", json!({})),
            3 + 10
        );
        assert_eq!(
            cost("{ profiles(first: 10) { edges { node { id } } } }", json!({})),
            2 + 10 * 2
        );
        // The default page is 20; a variable's is the largest, 100, whatever it holds.
        assert_eq!(cost("{ profiles { nodes { id } } }", json!({})), 2 + 20);
        assert_eq!(
            cost(
                "query ($n: Int!) { profiles(first: $n) { nodes { id } } }",
                json!({"n": 1})
            ),
            2 + 100
        );
        // Pages within pages multiply; a page past the largest counts as the largest (its
        // resolver refuses it) and a negative one as empty.
        assert_eq!(
            cost(
                "{ profiles(first: 10) { nodes { history(first: 5) { nodes { version } } } } }",
                json!({})
            ),
            2 + 10 * (2 + 5)
        );
        assert_eq!(cost("{ profiles(first: 1000) { nodes { id } } }", json!({})), 2 + 100);
        assert_eq!(cost("{ profiles(first: -1) { nodes { id } } }", json!({})), 2);
        // Ten aliases of a full page of attributes: too much for one operation.
        let aliases: String = (0..10)
            .map(|i| format!("p{i}: profiles(first: 100) {{ nodes {{ id attributes tags {{ key value }} }} }} "))
            .collect();
        assert_eq!(
            code(run(&format!("{{ {aliases} }}"), json!({}), &Limits::default())),
            "QUERY_TOO_COMPLEX"
        );
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

    /// Whether async-graphql's full validation accepts `variables` for `query`: a response
    /// with no data whose errors have no path is a request error (the root fields fail
    /// for want of a store when it executes).
    fn strict_accepts(query: &str, variables: &serde_json::Value) -> bool {
        static SCHEMA: std::sync::OnceLock<crate::graphql::AppSchema> = std::sync::OnceLock::new();
        let schema = SCHEMA.get_or_init(|| crate::schema().finish());
        let request = async_graphql::Request::new(query).variables(Variables::from_json(variables.clone()));
        super::super::graphql::executed(&futures::executor::block_on(schema.execute(request)))
    }

    fn surely(query: &str, variables: &serde_json::Value) -> bool {
        static INDEX: std::sync::OnceLock<SchemaIndex> = std::sync::OnceLock::new();
        let index = INDEX.get_or_init(|| SchemaIndex::new(&crate::sdl()).unwrap());
        let document = parse_query(query).unwrap();
        let operation = select(&document, None).unwrap();
        variables_surely_valid(index, operation, &Variables::from_json(variables.clone()))
    }

    const W1: &str = "query($id: ID!) { profile(ref: {id: $id}) { id } }";
    const W2: &str = "mutation($id: ID!, $u: ProfileUpdate!) { updateProfile(ref: {id: $id}, update: $u) { dryRun } }";
    const REF: &str = "query($r: ProfileRef!) { profile(ref: $r) { id } }";
    const LIST: &str =
        "query($n: Int!, $f: ProfileFilter, $a: String) { profiles(first: $n, after: $a, filter: $f) { totalCount } }";
    const DEFINE: &str = "mutation($i: CustomFieldInput!) { defineCustomField(input: $i) { name } }";
    const CREATE: &str = "mutation($i: CreateProfileInput!) { createProfile(input: $i) { id } }";
    const TAGS: &str =
        "mutation($t: [String!]) { updateProfile(ref: {id: \"x\"}, update: {scrip: {tags: $t}}) { dryRun } }";

    /// Each document with variables that give every one it declares, as ordinary clients send.
    fn documents() -> Vec<(&'static str, serde_json::Value)> {
        vec![
            (W1, json!({"id": "0b6e8f4e-0000-4000-8000-000000000001"})),
            (
                W2,
                json!({"id": "1", "u": {"scrip": {"attributes": {"plan": "pro"}, "tags": ["a", "b"]}}}),
            ),
            (REF, json!({"r": {"externalId": "e"}})),
            (
                LIST,
                json!({"n": 50, "f": {"status": "ACTIVE", "tag": "vip"}, "a": "cursor"}),
            ),
            (
                DEFINE,
                json!({"i": {"name": "Size", "type": "DROPDOWN", "options": ["S", "M"], "maxLength": 3}}),
            ),
            (
                CREATE,
                json!({"i": {"memberType": "TEAM", "tags": [{"key": "k", "value": "v"}], "groups": "solo"}}),
            ),
            (TAGS, json!({"t": ["a"]})),
        ]
    }

    #[test]
    fn variables_that_clients_usually_send_surely_pass_and_do_pass() {
        for (query, variables) in documents() {
            assert!(surely(query, &variables), "{query} {variables}");
            assert!(strict_accepts(query, &variables), "{query} {variables}");
        }
        // Optional variables left out and a single value for a list are also sure.
        assert!(surely(LIST, &json!({"n": 1})));
        assert!(surely(TAGS, &json!({"t": "a"})));
        assert!(surely(
            W2,
            &json!({"id": 7, "u": {"fragment": {"tags": {"delete": [{"key": "k"}]}}}})
        ));
    }

    #[test]
    fn variables_that_fail_validation_are_never_sure() {
        let cases = [
            (W1, json!({"id": true})),
            (W1, json!({"id": 1.5})),
            (W2, json!({"id": "1", "u": {"scrip": {"tags": ["a"]}, "spruce": {}}})),
            (W2, json!({"id": "1", "u": {}})),
            (W2, json!({"id": "1", "u": {"scrip": {"tags": ["a", null]}}})),
            (W2, json!({"id": "1", "u": {"scrip": {"bogus": 1}}})),
            (REF, json!({"r": {"id": "1", "externalId": "e"}})),
            (LIST, json!({"n": "1"})),
            (LIST, json!({"n": 1, "f": {"status": "GONE"}})),
            (LIST, json!({"n": 1, "f": {"status": 3}})),
            (DEFINE, json!({"i": {"name": "Size"}})),
            (CREATE, json!({"i": {"tags": [{"key": "k"}]}})),
            (CREATE, json!({"i": {"memberType": "team"}})),
        ];
        for (query, variables) in cases {
            assert!(!strict_accepts(query, &variables), "{query} {variables}");
            assert!(!surely(query, &variables), "{query} {variables}");
        }
    }

    #[test]
    fn a_null_variable_is_never_sure_though_it_may_pass() {
        assert!(strict_accepts(LIST, &json!({"n": 1, "f": null})));
        assert!(!surely(LIST, &json!({"n": 1, "f": null})));
        assert!(!surely(W1, &json!({"id": null})));
    }

    #[test]
    fn every_scalar_an_input_takes_has_async_graphqls_own_check() {
        let index = SchemaIndex::new(&crate::sdl()).unwrap();
        let argument_types = index
            .objects
            .values()
            .flat_map(|fields| fields.values().flat_map(|field| field.args.values()));
        let field_types = index
            .inputs
            .values()
            .flat_map(|input| input.fields.values().map(|(ty, _)| ty));
        for ty in argument_types.chain(field_types) {
            let name = named(ty);
            let known = index.inputs.contains_key(name) || index.enums.contains_key(name);
            assert!(known || scalar_valid(name, &ConstValue::Null).is_some(), "{name}");
        }
    }

    #[test]
    fn only_a_request_giving_every_variable_of_a_lone_operation_vouches_for_its_document() {
        let vouch = |query: &str, variables: serde_json::Value| {
            let document = parse_query(query).unwrap();
            let operation = select(&document, Some("A"))
                .or_else(|| select(&document, None))
                .unwrap();
            vouches(&document, operation, &Variables::from_json(variables))
        };
        assert!(vouch(LIST, json!({"n": 1, "f": null, "a": null})));
        assert!(!vouch(LIST, json!({"n": 1})));
        assert!(vouch(
            "query A($id: ID!) { profile(ref: {id: $id}) { id } }",
            json!({"id": "1"})
        ));
        assert!(!vouch(
            "query A { customFields { name } } query B { customFields { name } }",
            json!({})
        ));
    }

    mod against_async_graphql {
        use proptest::prelude::*;
        use serde_json::Value as Json;

        use super::*;

        const KEYS: &[&str] = &[
            "id",
            "externalId",
            "serialNumber",
            "scrip",
            "spruce",
            "fragment",
            "attributes",
            "tags",
            "key",
            "value",
            "name",
            "type",
            "options",
            "maxLength",
            "memberType",
            "status",
            "tag",
            "set",
            "delete",
            "bogus",
        ];

        fn json_value() -> impl Strategy<Value = Json> {
            let leaf = prop_oneof![
                Just(Json::Null),
                any::<bool>().prop_map(Json::from),
                prop::sample::select(vec![0_i64, -1, 7, 2_147_483_648, i64::MIN]).prop_map(Json::from),
                Just(json!(1.5)),
                Just(json!(u64::MAX)),
                prop::sample::select(vec!["", "x", "TEXT", "TEAM", "ACTIVE", "team", "GONE"]).prop_map(Json::from),
            ];
            leaf.prop_recursive(3, 24, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Json::Array),
                    prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..3)
                        .prop_map(|map| Json::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
                ]
            })
        }

        /// `value` with its `at`-th part (in pre-order, modulo their number) replaced by `with`.
        fn replace(value: &Json, at: usize, with: Json) -> Json {
            fn parts(value: &Json) -> usize {
                1 + match value {
                    Json::Array(items) => items.iter().map(parts).sum(),
                    Json::Object(map) => map.values().map(parts).sum(),
                    _ => 0,
                }
            }
            fn go(value: &mut Json, at: &mut usize, with: &mut Option<Json>) {
                if *at == 0 {
                    if let Some(with) = with.take() {
                        *value = with;
                    }
                    return;
                }
                *at -= 1;
                match value {
                    Json::Array(items) => items.iter_mut().for_each(|item| go(item, at, with)),
                    Json::Object(map) => map.values_mut().for_each(|item| go(item, at, with)),
                    _ => {}
                }
            }
            let mut value = value.clone();
            let mut at = at % parts(&value);
            go(&mut value, &mut at, &mut Some(with));
            value
        }

        proptest! {
            #[test]
            fn whatever_surely_passes_does_pass(
                which in 0..7_usize,
                at in any::<usize>(),
                with in json_value(),
                drop_key in prop::sample::select(KEYS),
            ) {
                let (query, valid) = documents()[which].clone();
                let replaced = replace(&valid, at, with);
                for variables in [replaced.clone(), {
                    let mut dropped = replaced;
                    if let Json::Object(map) = &mut dropped {
                        for value in map.values_mut() {
                            if let Json::Object(inner) = value {
                                inner.remove(drop_key);
                            }
                        }
                    }
                    dropped
                }] {
                    if surely(query, &variables) {
                        prop_assert!(strict_accepts(query, &variables), "{} {}", query, variables);
                    }
                }
            }
        }
    }
}
