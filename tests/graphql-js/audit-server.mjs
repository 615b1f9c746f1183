// Usage: node audit-server.mjs URL API_KEY
// Runs graphql-http's audits of the GraphQL over HTTP specification against a live server,
// sending the API key with every request. Exits 1 if any MUST or SHOULD audit fails.
import { serverAudits } from "graphql-http";

const [url, key] = process.argv.slice(2);
const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers);
  headers.set("X-API-Key", key);
  return fetch(input, { ...init, headers });
};

let failed = 0;
for (const audit of serverAudits({ url, fetchFn })) {
  const result = await audit.fn();
  if (result.status !== "ok") {
    const strict = audit.name.startsWith("MUST") || audit.name.startsWith("SHOULD");
    if (strict) failed += 1;
    console.log(`${strict ? "FAIL" : "note"} ${audit.id} ${audit.name}: ${result.reason}`);
  }
}
console.log(failed === 0 ? "all MUST and SHOULD audits pass" : `${failed} MUST/SHOULD audits fail`);
process.exit(failed === 0 ? 0 : 1);
