// Reconnection, resending and the timeout against a scripted stand-in for meterd's socket, so that
// what arrives on each connection can be asserted byte for byte.
import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { test } from "node:test";

import { Client, ClientClosedError, MeterdTimeoutError } from "meterd-client";
import { workdir } from "../support/daemon.mjs";

const GENERATED = /^[0-9a-f]{32}$/;
const EVENTS = [0, 1, 2].map((i) => ({ customer_identifier: `c-${i}`, dimension: "requests", quantity: i }));

/** A Unix socket server; each accepted connection comes with an async iterator over its lines. */
async function fakeMeterd(t, file) {
  const server = net.createServer();
  const connections = [];
  const waiting = [];
  server.on("connection", (socket) => {
    const conn = { socket, lines: readline.createInterface({ input: socket })[Symbol.asyncIterator]() };
    const next = waiting.shift();
    next ? next(conn) : connections.push(conn);
  });
  server.listen(file);
  await once(server, "listening");
  t.after(() => server.close());
  return {
    accept: () => (connections.length ? Promise.resolve(connections.shift()) : new Promise((r) => waiting.push(r))),
  };
}

async function readLines(conn, n) {
  const lines = [];
  while (lines.length < n) {
    const { value, done } = await conn.lines.next();
    if (done) throw new Error(`connection ended after ${lines.length} lines`);
    lines.push(value);
  }
  return lines;
}

const ok = (line, duplicate = false) =>
  JSON.stringify({ ok: true, id: JSON.parse(line).id, ...(duplicate ? { duplicate } : {}) }) + "\n";

const idOf = (line) => JSON.parse(line).id;

/** Resolves when the client closes its side. */
async function expectEnd(conn) {
  const { done, value } = await conn.lines.next();
  assert.ok(done, `expected the client to close, got ${value}`);
}

test("unanswered events are resent under the same ids", async (t) => {
  const file = path.join(workdir(t), "fake.sock");
  const fake = await fakeMeterd(t, file);
  const client = new Client(file, { timeout: 10_000 });
  const sending = client.sendMany(EVENTS);
  // First connection: all three events arrive, one is answered, then the connection breaks.
  let conn = await fake.accept();
  const first = await readLines(conn, 3);
  conn.socket.end(ok(first[0]));
  // Second connection: only the two unanswered events, unchanged; one had been stored.
  conn = await fake.accept();
  const second = await readLines(conn, 2);
  conn.socket.write(ok(second[0], true) + ok(second[1]));
  const results = await sending;
  client.close();
  await expectEnd(conn);
  assert.deepEqual(second, first.slice(1));
  const ids = first.map(idOf);
  assert.ok(ids.every((id) => GENERATED.test(id)) && new Set(ids).size === 3, ids);
  assert.deepEqual(first, EVENTS.map((e, i) => JSON.stringify({ ...e, id: ids[i] })));
  assert.deepEqual(results, [
    { id: ids[0], duplicate: false },
    { id: ids[1], duplicate: true },
    { id: ids[2], duplicate: false },
  ]);
});

test("a timeout names the unanswered events, which are not resent", async (t) => {
  const file = path.join(workdir(t), "fake.sock");
  const fake = await fakeMeterd(t, file);
  const client = new Client(file, { timeout: 300 });
  t.after(() => client.close());
  const started = Date.now();
  const sending = client.sendMany([{ ...EVENTS[0], id: "x" }, EVENTS[1]]).then(
    () => assert.fail("answered"),
    (err) => err,
  );
  let conn = await fake.accept();
  const first = await readLines(conn, 2);
  const error = await sending; // no answer until the client has given up
  const waited = Date.now() - started;
  assert.ok(waited >= 295 && waited < 2000, `${waited}ms`);
  conn.socket.end();
  assert.ok(error instanceof MeterdTimeoutError);
  assert.equal(error.code, "ETIMEDOUT");
  const generated = error.unanswered[1].id;
  assert.match(generated, GENERATED);
  assert.deepEqual(error.unanswered, [{ ...EVENTS[0], id: "x" }, { ...EVENTS[1], id: generated }]);
  assert.deepEqual(error.results, [undefined, undefined]);
  assert.ok(error.message.startsWith(`meterd at ${file} answered 0 of 2 events within 300ms`), error.message);
  assert.deepEqual(first.map(idOf), ["x", generated]);
  // The next call uses a new connection that carries only its own event.
  const next = client.send({ ...EVENTS[2], id: "y" }, { timeout: 10_000 });
  conn = await fake.accept();
  const second = await readLines(conn, 1);
  conn.socket.write(ok(second[0]));
  assert.deepEqual(await next, { id: "y", duplicate: false });
  assert.deepEqual(second.map(idOf), ["y"]);
});

test("no socket times out with the connection error", async (t) => {
  const client = new Client(path.join(workdir(t), "absent.sock"), { timeout: 200 });
  const error = await client.send(EVENTS[0]).then(
    () => assert.fail("answered"),
    (err) => err,
  );
  assert.ok(error instanceof MeterdTimeoutError);
  assert.equal(error.cause.code, "ENOENT");
  assert.match(error.message, /answered 0 of 1 events within 200ms \(last connection error: connect ENOENT /);
});

test("close rejects waiting calls and later ones", async (t) => {
  const file = path.join(workdir(t), "fake.sock");
  const fake = await fakeMeterd(t, file);
  const client = new Client(file, { timeout: 10_000 });
  const waiting = client.send(EVENTS[0]).then(
    () => assert.fail("answered"),
    (err) => err,
  );
  const conn = await fake.accept();
  await readLines(conn, 1);
  client.close();
  assert.ok((await waiting) instanceof ClientClosedError);
  await expectEnd(conn);
  await assert.rejects(client.send(EVENTS[0]), ClientClosedError);
});
