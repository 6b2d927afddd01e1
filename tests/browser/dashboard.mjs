// Opens polycall's /dashboard in Debian's headless Chromium, waits for the live feed,
// tells the test it is ready, then waits for a state change the test makes to appear
// in the machine graph, and saves a screenshot it checks is not blank.
//
// usage: node dashboard.mjs URL SCREENSHOT MACHINE STATE
// stdout: "READY" once the page is live; then "OK colors=N" or an error (exit 1).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, screenshot, machine, state] = process.argv.slice(2);
const deadline = (ms) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms).unref());

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction(() => document.getElementById("feed").textContent === "live", null, { timeout: 10000 });
    const selector = `svg[data-machine="${machine}"] rect[data-state="${state}"]`;
    await page.waitForSelector(selector, { timeout: 10000 });
    const before = await page.getAttribute(selector, "data-active");
    if (before !== "0") throw new Error(`${machine}/${state} is already active (${before}) before the change`);
    console.log("READY");
    // The test fires the transition, then writes a line.
    const rl = createInterface({ input: process.stdin });
    await Promise.race([new Promise((r) => rl.once("line", r)), deadline(20000)]);
    rl.close();
    await page.waitForFunction((sel) => Number(document.querySelector(sel)?.getAttribute("data-active")) > 0, selector, { timeout: 10000 });
    await page.waitForFunction(() => document.querySelectorAll("#transitions li").length > 0, null, { timeout: 5000 });
    const png = await page.screenshot({ path: screenshot, fullPage: true });
    // Not blank: the screenshot, decoded by the browser itself, has many colours.
    const colors = await page.evaluate(async (b64) => {
      const img = new Image();
      img.src = "data:image/png;base64," + b64;
      await img.decode();
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      const seen = new Set();
      for (let i = 0; i < d.length; i += 4 * 97) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
      return seen.size;
    }, png.toString("base64"));
    if (errors.length) throw new Error("page errors: " + errors.join("; "));
    if (colors < 8) throw new Error(`the screenshot looks blank: ${colors} colours`);
    console.log(`OK colors=${colors}`);
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => { console.error(String(e && e.stack || e)); process.exit(1); });
