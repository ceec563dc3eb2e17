// SIGKILL meterd while the application is sending through the client; restart it; the client
// reconnects and resends what was unanswered under the same ids. Once the hour is sealed and
// submitted, the emulator has billed exactly what the application sent, once.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, MeterdError } from "meterd-client";
import { DIMENSIONS, Emulator, Meterd, hourStart, waitFor, workdir } from "../support/daemon.mjs";

const WORKERS = 4;
const BATCH = 50;
const LATER = 4 * 3600;

test("SIGKILL mid-stream bills every event once", async (t) => {
  const dir = workdir(t);
  const emulator = await Emulator.start(t, dir);
  const hour = hourStart();
  const first = await Meterd.start(t, dir, emulator);
  const client = new Client(first.socket, { timeout: 60_000 });
  t.after(() => client.close());
  const sent = []; // [event, its ack] for every event the application sent
  let stop = false;

  async function application(worker) {
    for (let n = 0; !stop; n += BATCH) {
      const batch = Array.from({ length: BATCH }, (_, i) => ({
        customer_aws_account_id: String(100_000_000_000 + worker),
        dimension: DIMENSIONS[(n + i) % 2],
        quantity: ((n + i) % 7) + 1,
        timestamp: hour + 1,
      }));
      const results = await client.sendMany(batch);
      assert.ok(results.every((r) => !(r instanceof MeterdError)), JSON.stringify(results));
      batch.forEach((event, i) => sent.push([event, results[i]]));
    }
  }

  const workers = Array.from({ length: WORKERS }, (_, w) => application(w));
  let atKill;
  let second;
  try {
    await waitFor(() => sent.length >= 2000, 30_000, "2000 events acknowledged");
    await first.kill9();
    atKill = sent.length;
    // A new meterd on the same data dir and socket; the client finds it on its own and the
    // application goes on sending.
    second = await Meterd.start(t, dir, emulator);
    await waitFor(async () => (await second.metric("meterd_events_accepted_total")) >= 2000, 30_000, "2000 accepted after the restart");
  } finally {
    stop = true;
    await Promise.all(workers);
  }

  const ids = sent.map(([, ack]) => ack.id);
  assert.equal(new Set(ids).size, sent.length);
  assert.ok(atKill < sent.length);
  const resentStored = sent.filter(([, ack]) => ack.duplicate).length;
  // Replies meterd never sent before the kill: what it had stored is answered duplicate by the new
  // meterd, the rest is counted by it; nothing else reached it.
  assert.equal(await second.metric("meterd_events_duplicate_total"), resentStored);
  assert.ok((await second.metric("meterd_events_accepted_total")) <= sent.length - atKill);

  // The application resends everything it sent: every event is known under its id.
  const again = await client.sendMany(sent.map(([event, ack]) => ({ ...event, id: ack.id })));
  assert.deepEqual(again, ids.map((id) => ({ id, duplicate: true })));
  client.close();
  assert.equal(await second.terminate(), 0);

  const expected = {};
  for (const [event] of sent) {
    const key = `${event.customer_aws_account_id}/${event.dimension}`;
    expected[key] = (expected[key] ?? 0) + event.quantity;
  }
  await emulator.setClockOffset(LATER);
  await Meterd.start(t, dir, emulator, { clockOffset: LATER }); // the hour is sealed and submitted
  const keys = Object.keys(expected).length;
  await waitFor(async () => (await emulator.records()).length >= keys, 60_000, `${keys} records billed`);
  const records = await emulator.records();
  assert.equal(records.length, WORKERS * DIMENSIONS.length);
  assert.equal(keys, records.length);
  assert.deepEqual(new Set(records.map((r) => r.hour)), new Set([hour]));
  assert.deepEqual(
    Object.fromEntries(records.map((r) => [`${r.customer_aws_account_id}/${r.dimension}`, r.quantity])),
    expected,
  );
  assert.equal((await emulator.statuses()).DuplicateRecord, undefined);
  t.diagnostic(
    `${sent.length} events, ${atKill} acknowledged before the SIGKILL, ${resentStored} stored but unanswered ` +
      `(answered duplicate after the restart), ${records.length} records billed`,
  );
});
