// Opens a page in headless Chromium and prints the `window.__result` it sets, as JSON.
// Usage: node drive.mjs CHROMIUM URL SCREENSHOT; the screenshot is saved only on failure.
import { chromium } from "playwright-core";

const [executablePath, url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
const page = await browser.newPage();
const console_ = [];
page.on("console", (message) => console_.push(`${message.type()}: ${message.text()}`));
try {
  await page.goto(url);
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 30_000 });
  const result = await page.evaluate(() => window.__result);
  console.log(JSON.stringify({ result, console: console_ }));
} catch (error) {
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`${error}\n${console_.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
