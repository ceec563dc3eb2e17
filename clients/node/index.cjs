"use strict";
// A client for meterd's ingest socket, without dependencies.
//
// Events are pipelined over one Unix socket connection shared by every caller of the client. Each
// event gets an `id` when it has none, and an event not answered when the connection breaks
// (meterd was restarted or killed) is sent again, under the same id, on the next connection:
// meterd answers it `duplicate` if it had stored it already, so nothing is lost and nothing is
// counted twice.

const net = require("node:net");
const crypto = require("node:crypto");

const DEFAULT_SOCKET = "/run/meterd/meterd.sock";
const DEFAULT_TIMEOUT_MS = 30_000;
/** Wire codes after which sending the same event again (same id) may succeed. */
const RETRYABLE = Object.freeze(["overloaded", "storage_error"]);
const BACKOFF_FIRST_MS = 50;
const BACKOFF_MAX_MS = 1000;

/** meterd refused the event: `code` is the wire error code, `message` meterd's explanation. */
class MeterdError extends Error {
  constructor(code, message, id, event) {
    super(message);
    this.name = "MeterdError";
    this.code = code;
    /** The id meterd echoed; undefined when the line had no readable id. */
    this.id = id;
    /** The event as sent, with its id. */
    this.event = event;
  }

  /** True for `overloaded` and `storage_error`: resending the same event may succeed. */
  get retryable() {
    return RETRYABLE.includes(this.code);
  }
}

/**
 * Not every event was answered within the timeout. `unanswered` holds those events with their
 * ids: send them again later, unchanged, and meterd counts each at most once.
 */
class MeterdTimeoutError extends Error {
  constructor(message, unanswered, results, lastError) {
    super(message, lastError ? { cause: lastError } : undefined);
    this.name = "MeterdTimeoutError";
    this.code = "ETIMEDOUT";
    this.unanswered = unanswered;
    /** What sendMany would have resolved to, with undefined for each unanswered event. */
    this.results = results;
  }
}

/** The client was closed before the events were answered. */
class ClientClosedError extends Error {
  constructor() {
    super("the meterd client is closed");
    this.name = "ClientClosedError";
    this.code = "ERR_METERD_CLOSED";
  }
}

/** A first-in first-out queue with O(1) shift, for the events awaiting replies. */
class Fifo {
  #items = [];
  #head = 0;

  get length() {
    return this.#items.length - this.#head;
  }

  push(item) {
    this.#items.push(item);
  }

  peek() {
    return this.#items[this.#head];
  }

  shift() {
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** The items, oldest first. */
  toArray() {
    return this.#items.slice(this.#head);
  }

  /** Keeps the items for which `keep` is true. */
  filter(keep) {
    this.#items = this.toArray().filter(keep);
    this.#head = 0;
  }

  /** Removes and returns every item. */
  drain() {
    const items = this.toArray();
    this.filter(() => false);
    return items;
  }
}

class Client {
  #path;
  #timeout;
  #socket = null; // the current connection, connected or connecting
  #connected = false;
  #inflight = new Fifo(); // entries written (or to be written) to #socket, awaiting replies in order
  #retryTimer = null;
  #backoff = 0;
  #lastError = null;
  #closed = false;

  /**
   * @param {string} [path] the ingest socket
   * @param {{timeout?: number}} [options] timeout in ms for each send/sendMany, reconnections included
   */
  constructor(path = DEFAULT_SOCKET, { timeout = DEFAULT_TIMEOUT_MS } = {}) {
    this.#path = path;
    this.#timeout = timeout;
  }

  /** Sends one event; resolves to `{id, duplicate}`, rejects with MeterdError or MeterdTimeoutError. */
  async send(event, options = {}) {
    const [result] = await this.sendMany([event], options);
    if (result instanceof MeterdError) throw result;
    return result;
  }

  /**
   * Pipelines events; resolves to one `{id, duplicate}` or MeterdError per event, in order.
   * Rejects with MeterdTimeoutError when some event has no answer within the timeout.
   */
  sendMany(events, { timeout = this.#timeout } = {}) {
    if (this.#closed) return Promise.reject(new ClientClosedError());
    let prepared;
    let lines;
    try {
      prepared = Array.from(events, (event) => (event.id == null ? { ...event, id: newId() } : { ...event }));
      lines = prepared.map((event) => JSON.stringify(event) + "\n");
    } catch (err) {
      return Promise.reject(err);
    }
    if (prepared.length === 0) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      const call = { events: prepared, results: new Array(prepared.length), remaining: prepared.length };
      call.resolve = resolve;
      call.reject = reject;
      call.timer = setTimeout(() => {
        call.abandoned = true;
        const unanswered = prepared.filter((_, i) => call.results[i] === undefined);
        const last = this.#lastError;
        reject(
          new MeterdTimeoutError(
            `meterd at ${this.#path} answered ${prepared.length - unanswered.length} of ${prepared.length} ` +
              `events within ${timeout}ms (last connection error: ${last ? last.message : "none"})`,
            unanswered,
            [...call.results],
            last,
          ),
        );
      }, timeout);
      for (let i = 0; i < prepared.length; i++) {
        this.#inflight.push({ call, index: i, id: prepared[i].id, line: lines[i] });
      }
      if (this.#connected) this.#socket.write(lines.join(""));
      else this.#connect();
    });
  }

  /** Closes the connection; calls still waiting reject with ClientClosedError. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.#socket?.destroy();
    this.#socket = null;
    for (const { call } of this.#inflight.drain()) {
      if (!call.done && !call.abandoned) {
        call.done = true;
        clearTimeout(call.timer);
        call.reject(new ClientClosedError());
      }
    }
  }

  #connect() {
    if (this.#socket || this.#retryTimer || this.#closed) return;
    // Events of calls that timed out are not sent again.
    this.#inflight.filter((entry) => !entry.call.abandoned);
    if (this.#inflight.length === 0) return;
    const socket = net.createConnection(this.#path);
    this.#socket = socket;
    socket.unref(); // waiting calls keep the process alive with their timers, idle clients do not
    socket.setEncoding("utf8");
    let pending = "";
    socket.on("connect", () => {
      this.#connected = true;
      this.#backoff = 0;
      socket.write(
        this.#inflight
          .toArray()
          .map((entry) => entry.line)
          .join(""),
      );
    });
    socket.on("data", (chunk) => {
      const lines = (pending + chunk).split("\n");
      pending = lines.pop();
      try {
        for (const line of lines) this.#answer(JSON.parse(line));
      } catch (err) {
        this.#lastError = err;
        socket.destroy();
      }
    });
    socket.on("error", (err) => {
      this.#lastError = err;
    });
    socket.on("close", () => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#connected = false;
      if (this.#closed) return;
      const delay = this.#backoff;
      this.#backoff = Math.min(Math.max(this.#backoff * 2, BACKOFF_FIRST_MS), BACKOFF_MAX_MS);
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = null;
        this.#connect();
      }, delay);
      this.#retryTimer.unref();
    });
  }

  /** Gives a reply to the oldest unanswered event. */
  #answer(reply) {
    const entry = this.#inflight.peek();
    if (entry === undefined) throw new Error(`meterd sent a reply for no event: ${JSON.stringify(reply)}`);
    const echoed = reply.id ?? undefined;
    if ((reply.ok === true || echoed !== undefined) && echoed !== entry.id) {
      throw new Error(`reply ${JSON.stringify(reply)} does not answer event id ${JSON.stringify(entry.id)}`);
    }
    this.#inflight.shift();
    this.#finish(entry, reply);
    if (reply.error === "permission_denied") {
      // Every event on this socket would be refused the same way.
      for (const other of this.#inflight.drain()) this.#finish(other, reply);
    }
  }

  #finish({ call, index, id }, reply) {
    if (call.done || call.abandoned || call.results[index] !== undefined) return;
    call.results[index] =
      reply.ok === true
        ? { id, duplicate: reply.duplicate === true }
        : new MeterdError(String(reply.error), String(reply.message ?? ""), reply.id ?? undefined, call.events[index]);
    if (--call.remaining === 0) {
      call.done = true;
      clearTimeout(call.timer);
      call.resolve(call.results);
    }
  }
}

function newId() {
  return crypto.randomBytes(16).toString("hex");
}

module.exports = {
  Client,
  ClientClosedError,
  DEFAULT_SOCKET,
  DEFAULT_TIMEOUT_MS,
  MeterdError,
  MeterdTimeoutError,
  RETRYABLE,
};
