// Drives /graphiql in headless Chromium with every host but the gateway's unreachable, and
// prints what it found as JSON. Usage: node graphiql.mjs CHROMIUM GATEWAY SCREENSHOT
// The test (tests/api/graphiql.rs) checks the result; the screenshot is saved on failure.
import { chromium } from "playwright-core";

const [executablePath, gateway, screenshot] = process.argv.slice(2);
const { host } = new URL(gateway);
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE ${host.split(":")[0]}`],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const requests = [];
const problems = [];
page.on("request", (request) => requests.push(request.url()));
// Resources that failed to load and the Content-Security-Policy's refusals; the explorer also
// logs harmless complaints about list arguments, which are not the page's problems.
page.on("console", (message) => {
  if (message.type() === "error" && /Failed to load|Refused to/.test(message.text())) problems.push(message.text());
});
page.on("pageerror", (error) => problems.push(String(error)));

/** The text of the response pane once it contains `text`. */
async function responseWith(text, timeout = 10_000) {
  const pane = page.locator(".graphiql-response .CodeMirror");
  await pane.filter({ hasText: text }).first().waitFor({ timeout });
  return pane.first().innerText();
}

/** Puts `text` in the query editor of the current tab. */
async function setQuery(text) {
  await page.evaluate((text) => {
    document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror.setValue(text);
  }, text);
}

const found = {};
try {
  const started = Date.now();
  await page.goto(`${gateway}/graphiql`);
  const editor = page.locator(".graphiql-query-editor .CodeMirror");
  await editor.waitFor({ state: "visible", timeout: 10_000 });
  await editor.click();
  found.usableAfterMs = Date.now() - started;
  found.example = await page.evaluate(
    () => document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror.getValue(),
  );
  found.headers = await page.evaluate(
    () => document.querySelector(".graphiql-editor-tool [aria-label='Headers'] .CodeMirror, .graphiql-editor-tool .graphiql-editor:not(:first-child) .CodeMirror")?.CodeMirror.getValue() ?? null,
  );

  // The Docs pane lists updateProfile with its description.
  await page.getByRole("button", { name: /documentation explorer/i }).click();
  await page.locator(".graphiql-doc-explorer").getByText("Mutation", { exact: true }).click();
  await page.locator(".graphiql-doc-explorer").getByText("updateProfile", { exact: true }).first().click();
  found.docs = await page.locator(".graphiql-doc-explorer").innerText();

  // The explorer lists the root fields to click.
  await page.getByRole("button", { name: "Show GraphiQL Explorer" }).click();
  const explorer = page.locator(".graphiql-plugin").filter({ hasText: "updateProfile" });
  found.explorer = await explorer.first().innerText({ timeout: 5_000 });

  // An example operation runs and its result appears.
  await page.locator(".graphiql-execute-button").click();
  await page.getByRole("menuitem", { name: "CreateAna" }).click();
  found.created = await responseWith("ana-1");

  // A subscription in a new tab receives an event of a change made meanwhile.
  await page.locator(".graphiql-tab-add").click();
  await setQuery("subscription Changes { profileChanged { version operation } }");
  // GraphiQL reads the editor's document a moment after it changes.
  await page.waitForTimeout(500);
  await page.locator(".graphiql-execute-button").click();
  await page.locator(".graphiql-execute-button[aria-label*='Stop']").waitFor({ timeout: 5_000 });
  for (let attempt = 0; attempt < 50 && found.event === undefined; attempt++) {
    // The change is made outside the page, as another client would make it.
    const headers = JSON.parse(found.headers);
    await fetch(`${gateway}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({
        query: `mutation { updateProfile(ref: {externalId: "ana-1"}, update: {scrip: {attributes: {n: ${attempt}}}}) { profile { version } } }`,
      }),
    });
    found.event = await responseWith("updateProfile.scrip", 200).catch(() => undefined);
  }
  found.requests = requests;
  found.problems = problems;
  console.log(JSON.stringify(found));
} catch (error) {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`${error}\nfound so far: ${JSON.stringify(found)}\nproblems: ${problems.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
