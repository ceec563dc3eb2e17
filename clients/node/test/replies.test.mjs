// Exact replies of the real daemon, as the client hands them to the application.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, MeterdError } from "meterd-client";
import { DEADLINE_SECS, Emulator, Meterd, hourStart, workdir } from "../support/daemon.mjs";

const GENERATED = /^[0-9a-f]{32}$/;

const usage = (extra = {}) => ({ customer_aws_account_id: "111122223333", dimension: "requests", quantity: 1, ...extra });

async function daemon(t) {
  const dir = workdir(t);
  return Meterd.start(t, dir, await Emulator.start(t, dir));
}

const outcome = (r) => (r instanceof MeterdError ? [r.code, r.message, r.id] : r);

test("accepted events and resent ids", async (t) => {
  const meterd = await daemon(t);
  const client = new Client(meterd.socket, { timeout: 10_000 });
  t.after(() => client.close());
  const generated = await client.send(usage());
  assert.match(generated.id, GENERATED);
  assert.equal(generated.duplicate, false);
  assert.deepEqual(await client.send(usage({ id: "order-1", tags: { team: "a" } })), { id: "order-1", duplicate: false });
  assert.deepEqual(await client.send(usage({ id: "order-1", tags: { team: "a" } })), { id: "order-1", duplicate: true });
  // meterd stored the first event under the id the client made up.
  assert.deepEqual(await client.send(usage({ id: generated.id })), { id: generated.id, duplicate: true });
  assert.equal(await meterd.metric("meterd_events_accepted_total"), 2);
  assert.equal(await meterd.metric("meterd_events_duplicate_total"), 2);
});

test("sendMany answers every event in order", async (t) => {
  const meterd = await daemon(t);
  const client = new Client(meterd.socket, { timeout: 10_000 });
  t.after(() => client.close());
  const now = Math.floor(Date.now() / 1000);
  const tooOld = now - DEADLINE_SECS - 3600;
  const ahead = now + 3600;
  const longLine = usage({ id: "h", dimension: "x".repeat(70_000) });
  const events = [
    usage({ id: "a" }),
    usage({ id: "b", customer_aws_account_id: "12ab" }),
    usage({ id: "c", colour: "red" }),
    usage({ id: "d", dimension: "cpu" }),
    { customer_aws_account_id: "111122223333", quantity: 1, id: "e" },
    usage({ id: "f", timestamp: tooOld }),
    usage({ id: "g", timestamp: ahead }),
    longLine,
    usage({ id: "i", customer_aws_account_id: "444455556666", quantity: 2147483647, timestamp: hourStart(now) }),
    usage({ id: "j", customer_aws_account_id: "444455556666", quantity: 1, timestamp: hourStart(now) }),
    usage({ id: "" }),
    usage({ id: "l", quantity: -1 }),
  ];
  const results = await client.sendMany(events);
  const future = results[6];
  assert.deepEqual([future.code, future.id], ["future_timestamp", "g"]);
  const lead = new RegExp(`^timestamp ${ahead} is (\\d+)s ahead of meterd's clock$`).exec(future.message);
  assert.ok(lead && Number(lead[1]) >= 3590 && Number(lead[1]) <= 3600, future.message);
  const fields =
    "`customer_aws_account_id`, `customer_identifier`, `license_arn`, `product_code`, `dimension`, `quantity`, `timestamp`, `tags`, `id`";
  assert.deepEqual(
    results.filter((_, i) => i !== 6).map(outcome),
    [
      { id: "a", duplicate: false },
      ["invalid_field", "`customer_aws_account_id` must be digits only", "b"],
      ["invalid_field", `unknown field \`colour\`, expected one of ${fields}`, undefined],
      ["unknown_dimension", 'dimension "cpu" is not in aws.dimensions', "d"],
      ["missing_field", "`dimension` is required", "e"],
      [
        "out_of_window",
        `timestamp ${tooOld} is in an hour past the submit deadline (${DEADLINE_SECS}s after its start); the service would refuse it`,
        "f",
      ],
      ["line_too_long", `line of ${JSON.stringify(longLine).length} bytes is longer than 65536`, undefined],
      { id: "i", duplicate: false },
      ["quantity_overflow", "the hour's total for this customer and dimension would reach 2147483648, above 2147483647", "j"],
      ["invalid_field", "`id` must be 1 to 128 bytes", undefined],
      ["invalid_field", "`quantity` must be an integer from 0 to 2147483647, got -1", "l"],
    ],
  );
  // A refusal carries the event as sent, with the id the client gave it.
  assert.deepEqual(results[1].event, events[1]);
  assert.equal(await meterd.metric("meterd_events_accepted_total"), 2);
});

test("send rejects with a typed error carrying the wire code", async (t) => {
  const meterd = await daemon(t);
  const client = new Client(meterd.socket, { timeout: 10_000 });
  t.after(() => client.close());
  const error = await client.send(usage({ dimension: "cpu" })).then(
    () => assert.fail("accepted"),
    (err) => err,
  );
  assert.ok(error instanceof MeterdError && error instanceof Error);
  assert.equal(error.code, "unknown_dimension");
  assert.equal(error.message, 'dimension "cpu" is not in aws.dimensions');
  assert.match(error.id, GENERATED);
  assert.deepEqual(error.event, usage({ dimension: "cpu", id: error.id }));
  assert.equal(error.retryable, false);
});

test("events name their product", async (t) => {
  const meterd = await daemon(t);
  const client = new Client(meterd.socket, { timeout: 10_000 });
  t.after(() => client.close());
  assert.deepEqual(await client.send(usage({ id: "p-1", product_code: "prod-clients" })), { id: "p-1", duplicate: false });
  // The same usage without the field is the same event of the one configured product.
  assert.deepEqual(await client.send(usage({ id: "p-1" })), { id: "p-1", duplicate: true });
  const refused = await client.send(usage({ id: "p-2", product_code: "prod-other" })).catch((e) => e);
  assert.deepEqual(outcome(refused), [
    "unknown_product",
    '`product_code` "prod-other" is not a configured product (configured: "prod-clients")',
    "p-2",
  ]);
  assert.equal(refused.retryable, false);
});
