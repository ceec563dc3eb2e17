// The package works from require() and import alike, with the same classes.
const assert = require("node:assert/strict");
const { test } = require("node:test");

test("require and import give the same module", async () => {
  const required = require("meterd-client");
  const imported = await import("meterd-client");
  for (const name of ["Client", "MeterdError", "MeterdTimeoutError", "ClientClosedError", "RETRYABLE"]) {
    assert.equal(imported[name], required[name], name);
  }
  assert.equal(imported.default, required);
  assert.deepEqual(required.RETRYABLE, ["overloaded", "storage_error"]);
  assert.equal(required.DEFAULT_SOCKET, "/run/meterd/meterd.sock");
});
