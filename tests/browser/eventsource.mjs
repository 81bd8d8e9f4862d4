// A real browser's EventSource against Switchboard, through a TCP proxy
// this script runs: the page receives events, the proxy cuts every
// connection (the stream drops), messages are sent meanwhile, the browser
// reconnects by itself with Last-Event-ID, and the page must end with every
// message once, in order, none missed.
//
// Environment: SWITCHBOARD_BASE (the node), RECEIVER_TOKEN, SENDER_TOKEN,
// CONVERSATION, CHROMIUM (the executable), PLAYWRIGHT (the folder holding
// node_modules/playwright-core). Prints one JSON line with what the page
// saw; exits 1 on a failed check.
import net from "node:net";
import { createRequire } from "node:module";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const base = new URL(env("SWITCHBOARD_BASE"));
const require = createRequire(`${env("PLAYWRIGHT")}/`);
const { chromium } = require("playwright-core");

// The proxy: the page's origin, forwarding to the node; `cut` drops every
// connection through it, as a network or a restarting balancer would.
const sockets = new Set();
const proxy = net.createServer((client) => {
  const upstream = net.connect(Number(base.port), base.hostname);
  for (const s of [client, upstream]) {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  }
  client.pipe(upstream);
  upstream.pipe(client);
});
await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${proxy.address().port}`;
const cut = () => {
  for (const s of sockets) s.destroy();
};

let sent = 0;
async function send(text) {
  const response = await fetch(`${base.origin}/api/v1/messages`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${env("SENDER_TOKEN")}`,
      "content-type": "application/json",
    },
    body: JSON.stringify({
      conversation_id: env("CONVERSATION"),
      encrypted_content: Buffer.from(text).toString("base64"),
      nonce: Buffer.from("nonce-0123456789").toString("base64"),
      message_type: "text",
      idempotency_key: text,
    }),
  });
  if (response.status !== 201) throw new Error(`send ${text}: ${response.status}`);
  sent += 1;
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let result;
try {
  const page = await browser.newPage();
  // The page itself, served on the proxy's origin, so the stream is
  // same-origin.
  await page.route(`${origin}/page`, (route) =>
    route.fulfill({
      contentType: "text/html",
      body: `<!doctype html><script>
        window.texts = []; window.opens = 0; window.errors = 0; window.ids = [];
        const source = new EventSource("/api/v1/subscribe?access_token=${env("RECEIVER_TOKEN")}");
        source.onopen = () => { window.opens += 1; };
        source.onerror = () => { window.errors += 1; };
        source.onmessage = (e) => {
          window.ids.push(e.lastEventId);
          const frame = JSON.parse(e.data);
          if (frame.type === "message.new") window.texts.push(atob(frame.data.encrypted_content));
        };
      </script>`,
    }),
  );
  await page.goto(`${origin}/page`);
  const until = async (what, check, ms = 30000) => {
    const deadline = Date.now() + ms;
    while (!(await page.evaluate(check))) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await until("the stream to open", () => window.opens >= 1);
  for (let i = 1; i <= 5; i++) await send(`m${i}`);
  await until("the first five", () => window.texts.length >= 5);
  // The stream drops; what is sent meanwhile waits in the session.
  cut();
  await until("the browser to see the drop", () => window.errors >= 1);
  for (let i = 6; i <= 10; i++) await send(`m${i}`);
  await until("the browser to reconnect", () => window.opens >= 2);
  for (let i = 11; i <= 15; i++) await send(`m${i}`);
  // The last one comes after everything before it: once it is here,
  // anything missing or repeated shows.
  await send("m16");
  await until("every message", () => window.texts.includes("m16"));
  const seen = await page.evaluate(() => ({
    texts: window.texts,
    opens: window.opens,
    errors: window.errors,
    ids: window.ids,
  }));
  result = { ...seen, sent, userAgent: await page.evaluate(() => navigator.userAgent) };
} finally {
  await browser.close();
  proxy.close();
}
console.log(JSON.stringify(result));
const expected = Array.from({ length: 16 }, (_, i) => `m${i + 1}`);
if (JSON.stringify(result.texts) !== JSON.stringify(expected)) {
  console.error(`expected ${expected} got ${result.texts}`);
  process.exit(1);
}
