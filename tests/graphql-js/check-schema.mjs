// Usage: node check-schema.mjs SCHEMA.graphql
// Builds the SDL with graphql-js, validates it, and checks that @oneOf inputs behave as such.
import { readFileSync } from "node:fs";
import { buildSchema, parse, validate, validateSchema, isInputObjectType } from "graphql";

const schema = buildSchema(readFileSync(process.argv[2], "utf8"));
const problems = validateSchema(schema).map((error) => error.message);

for (const name of ["ProfileRef", "ProfileUpdate"]) {
  const type = schema.getType(name);
  if (!isInputObjectType(type) || !type.isOneOf) problems.push(`${name} is not a @oneOf input object`);
}
const twoKeys = validate(schema, parse('{ profile(ref: {id: "1", externalId: "x"}) { id } }'));
if (twoKeys.length === 0) problems.push("a ProfileRef with two keys was accepted");
const oneKey = validate(schema, parse('{ profile(ref: {externalId: "x"}) { id } }'));
problems.push(...oneKey.map((error) => `a valid query was refused: ${error.message}`));

if (problems.length > 0) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`graphql-js ${(await import("graphql")).version}: schema is valid`);
