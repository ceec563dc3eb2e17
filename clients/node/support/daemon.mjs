// The real daemon for the client's tests: `meterd emulator` and `meterd run` as subprocesses on a
// temp dir, with their own socket and ports, as tests/common/daemon.rs starts them. The binary is
// METERD_BIN (scripts/test.sh sets it), else target/debug/meterd of this repository.

import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const METERD_BIN = path.resolve(process.env.METERD_BIN || path.join(here, "../../../target/debug/meterd"));
export const PRODUCT = "prod-clients";
export const DIMENSIONS = ["requests", "storage_gb"];
/** meterd's submit deadline and the emulator's window. */
export const DEADLINE_SECS = 12 * 3600;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const hourStart = (secs = Date.now() / 1000) => Math.floor(secs / 3600) * 3600;

/** Polls `condition` (sync or async) until it holds; fails after `withinMs`. */
export async function waitFor(condition, withinMs, what) {
  const deadline = Date.now() + withinMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${withinMs}ms`);
    await sleep(5);
  }
}

/** A short temp dir (socket paths must stay under 108 bytes), removed after the test. */
export function workdir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "meterd-js-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function request(url, method = "GET", body = undefined) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, timeout: 10_000 }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (text += chunk));
      res.on("end", () =>
        res.statusCode === 200 ? resolve(text) : reject(new Error(`${method} ${url}: ${res.statusCode} ${text}`)),
      );
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${url}: timed out`)));
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

export class Emulator {
  static async start(t, dir) {
    const config = path.join(dir, "emulator.toml");
    fs.writeFileSync(config, 'window = "12h"\n');
    const log = fs.openSync(path.join(dir, "emulator.log"), "w");
    const child = spawn(METERD_BIN, ["emulator", "--listen", "127.0.0.1:0", "--config", config], {
      stdio: ["ignore", "pipe", log],
    });
    fs.closeSync(log);
    const exited = once(child, "exit");
    t.after(async () => {
      child.kill("SIGTERM");
      await exited;
    });
    const lines = readline.createInterface({ input: child.stdout });
    const [url] = await Promise.race([once(lines, "line"), exited.then(() => ["(exited)"])]);
    if (!url.startsWith("http://127.0.0.1:")) throw new Error(`emulator printed ${url}`);
    const emulator = new Emulator();
    emulator.url = url;
    return emulator;
  }

  async control(route, method = "GET", body = undefined) {
    const text = await request(this.url + route, method, body);
    return text ? JSON.parse(text) : null;
  }

  async records() {
    return (await this.control("/_emulator/records")).records;
  }

  /** Per-record statuses summed over every request. */
  async statuses() {
    const total = {};
    for (const { statuses = {} } of (await this.control("/_emulator/requests")).requests) {
      for (const [status, n] of Object.entries(statuses)) total[status] = (total[status] ?? 0) + n;
    }
    return total;
  }

  async setClockOffset(seconds) {
    await this.control("/_emulator/clock", "POST", { offset_seconds: seconds });
  }
}

/** One `meterd run` process; its JSON log goes to a file of the work dir. */
export class Meterd {
  static async start(t, dir, emulator, { clockOffset = 0 } = {}) {
    const d = new Meterd();
    d.socket = path.join(dir, "meterd.sock");
    const earlier = fs.readdirSync(dir).filter((name) => name.startsWith("meterd-")).length;
    d.logPath = path.join(dir, `meterd-${earlier + 1}.log`);
    const env = {
      PATH: process.env.PATH,
      METERD_STORAGE__DATA_DIR: path.join(dir, "data"),
      METERD_INGEST__SOCKET: d.socket,
      METERD_ADMIN__SOCKET: path.join(dir, "admin.sock"),
      METERD_METRICS__LISTEN: "127.0.0.1:0",
      METERD_AWS__ENDPOINT_URL: emulator.url,
      METERD_AWS__PRODUCT_CODE: PRODUCT,
      METERD_AWS__DIMENSIONS: JSON.stringify(DIMENSIONS),
      METERD_LOG__FORMAT: "json",
      METERD_STORAGE__CHECKPOINT_INTERVAL: "100ms",
      METERD_SUBMIT__SEAL_DELAY: "3h",
      METERD_SUBMIT__DEADLINE: "12h",
      METERD_SUBMIT__MAX_REQUESTS_PER_SECOND: "10",
      METERD_SUBMIT__BACKOFF_BASE: "50ms",
      METERD_SUBMIT__BACKOFF_MAX: "400ms",
      METERD_TEST_CLOCK_OFFSET: String(clockOffset),
      AWS_ACCESS_KEY_ID: "AKIDCLIENTTEST",
      AWS_SECRET_ACCESS_KEY: "client-test-secret",
      AWS_REGION: "us-east-1",
      AWS_EC2_METADATA_DISABLED: "true",
      AWS_CONFIG_FILE: path.join(dir, "no-aws-config"),
      AWS_SHARED_CREDENTIALS_FILE: path.join(dir, "no-aws-credentials"),
    };
    const log = fs.openSync(d.logPath, "w");
    d.child = spawn(METERD_BIN, ["run"], { env, stdio: ["ignore", "ignore", log] });
    fs.closeSync(log);
    d.exited = once(d.child, "exit");
    t.after(async () => {
      d.child.kill("SIGKILL");
      await d.exited;
    });
    d.metrics = (await d.waitLog("meterd ready")).metrics;
    return d;
  }

  async waitLog(needle, withinMs = 30_000) {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const text = fs.readFileSync(this.logPath, "utf8");
      for (const line of text.split("\n")) {
        try {
          const entry = JSON.parse(line);
          if (entry.message?.includes(needle)) return entry;
        } catch {
          // not a JSON line (yet)
        }
      }
      if (this.child.exitCode !== null || this.child.signalCode !== null || Date.now() > deadline) {
        throw new Error(`no log line ${JSON.stringify(needle)}:\n${text}`);
      }
      await sleep(20);
    }
  }

  async metric(sample) {
    const text = await request(`http://${this.metrics}/metrics`);
    const line = text.split("\n").find((l) => l.startsWith(sample + " "));
    if (line === undefined) throw new Error(`no sample ${sample}`);
    return Number(line.split(" ")[1]);
  }

  async kill9() {
    this.child.kill("SIGKILL");
    const [code, signal] = await this.exited;
    if (signal !== "SIGKILL") throw new Error(`meterd ended with ${code} ${signal}`);
  }

  /** SIGTERM; resolves to the exit code. */
  async terminate() {
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 30_000);
    const [code] = await this.exited;
    clearTimeout(timer);
    return code;
  }
}
