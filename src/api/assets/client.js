// shardcast browser client: an ES module with no dependencies, served by the broker at
// GET /client.js (docs/CLIENT.md). It speaks either wire dialect (docs/PROTOCOL.md),
// reconnects with exponential backoff and full jitter, and subscribes again to every topic
// after a reconnect.
//
//   import { Shardcast } from "/client.js";
//   const sc = new Shardcast({ dialect: "vws" });
//   sc.on("message", (topic, data) => console.log(topic, data));
//   await sc.subscribe("sensors/+/temp");

/**
 * Options for {@link Shardcast}.
 * @typedef {object} ShardcastOptions
 * @property {string} [url] WebSocket URL; default `ws(s)://<page host>/ws`.
 * @property {"vws"|"gows"} [dialect] wire dialect, sent as Sec-WebSocket-Protocol; default "vws".
 * @property {string} [token] credential, appended to the URL as `?token=`.
 * @property {boolean} [reconnect] reconnect when the connection drops; default true.
 * @property {number} [backoffBaseMs] first reconnect delay bound; default 500.
 * @property {number} [backoffCapMs] largest reconnect delay bound; default 30000.
 */

/**
 * Reconnect delay for the given attempt (0 = first retry): exponential backoff with full
 * jitter, uniformly random in [0, min(cap, base * 2^attempt)).
 * @param {number} attempt
 * @param {number} baseMs
 * @param {number} capMs
 * @param {() => number} [random] source of [0, 1) numbers; default Math.random
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  return random() * Math.min(capMs, baseMs * 2 ** attempt);
}

/** A connection to a shardcast broker that survives broker restarts. */
export class Shardcast {
  /** @param {ShardcastOptions} [options] */
  constructor(options = {}) {
    const dialect = options.dialect ?? "vws";
    if (dialect !== "vws" && dialect !== "gows") throw new Error(`unknown dialect ${dialect}`);
    this.dialect = dialect;
    this.url = buildUrl(options.url, options.token);
    this.reconnect = options.reconnect ?? true;
    this.backoffBaseMs = options.backoffBaseMs ?? 500;
    this.backoffCapMs = options.backoffCapMs ?? 30000;
    /** "connecting" | "open" | "reconnecting" | "closed" */
    this.state = "connecting";
    /** Failed attempts since the last successful open. */
    this.attempt = 0;
    this._handlers = new Map();
    this._topics = new Set(); // subscriptions to hold, sent again on every (re)connect
    this._waiting = new Map(); // topic -> [{resolve, reject}] until its subscribe is answered
    this._inflight = new Map(); // vws request id -> entry
    this._fifo = []; // gows: entries answered in order by the pong that follows each request
    this._nextId = 1;
    this._timer = null;
    this._ws = null;
    this._opened = false;
    this._open();
  }

  /**
   * Adds an event handler. Events: `open` (info `{reconnected}`), `close` (info
   * `{code, reason, retryInMs}`; retryInMs is null when no retry follows), `error` (an
   * Error), `message` (topic, data, raw). Broadcasts arrive as topic `$broadcast`.
   * @param {"open"|"close"|"error"|"message"} event
   * @param {Function} fn
   * @returns {() => void} removes the handler
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this._handlers.get(event).delete(fn);
  }

  /**
   * Subscribes to a topic or pattern, now and after every reconnect. Resolves when the
   * broker has accepted it (vws ack; gows: the pong after the request), rejects with the
   * broker's reason when refused. Called while disconnected, it is sent on the next connect.
   * @param {string} topic
   * @returns {Promise<void>}
   */
  subscribe(topic) {
    this._topics.add(topic);
    return new Promise((resolve, reject) => {
      if (!this._waiting.has(topic)) this._waiting.set(topic, []);
      this._waiting.get(topic).push({ resolve, reject });
      if (this.state === "open") this._sendSubscribe(topic);
    });
  }

  /**
   * Drops a subscription. Resolves when the broker has done it (at once when not connected:
   * the next connection will not subscribe to it).
   * @param {string} topic
   * @returns {Promise<void>}
   */
  unsubscribe(topic) {
    this._topics.delete(topic);
    this._settle(topic, new Error(`unsubscribed from ${topic}`));
    if (this.state !== "open") return Promise.resolve();
    const frame =
      this.dialect === "vws" ? { k: "u", t: topic } : { type: "unsubscribe", data: topic };
    return this._request(frame, {});
  }

  /**
   * Publishes `data` (any JSON value) on `topic`; needs the broker's permission
   * (`client.allow_publish` or a policy). Resolves when accepted, rejects when refused or
   * when not connected (publications are not queued).
   * @param {string} topic
   * @param {*} data
   * @returns {Promise<void>}
   */
  publish(topic, data) {
    if (this.state !== "open") return Promise.reject(new Error("not connected"));
    const frame =
      this.dialect === "vws"
        ? { t: topic, d: data ?? null }
        : { type: "publish", channel: topic, data: data ?? null };
    return this._request(frame, {});
  }

  /** Closes the connection for good (no reconnect). */
  close() {
    this.reconnect = false;
    clearTimeout(this._timer);
    this.state = "closed";
    if (this._ws) this._ws.close(1000);
  }

  _emit(event, ...args) {
    for (const fn of this._handlers.get(event) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`shardcast: ${event} handler threw`, e);
      }
    }
  }

  _open() {
    let ws;
    try {
      ws = new WebSocket(this.url, this.dialect);
    } catch (e) {
      this._emit("error", e);
      this._scheduleReconnect(1006, String(e));
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      const reconnected = this._opened;
      this._opened = true;
      this.attempt = 0;
      this.state = "open";
      for (const topic of this._topics) this._sendSubscribe(topic);
      this._emit("open", { reconnected });
    };
    ws.onmessage = (ev) => this._receive(ev.data);
    ws.onerror = () => this._emit("error", new Error(`WebSocket error on ${this.url}`));
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._failInflight(new Error("connection closed before the broker answered"));
      this._scheduleReconnect(ev.code, ev.reason);
    };
  }

  _scheduleReconnect(code, reason) {
    if (!this.reconnect) {
      this.state = "closed";
      this._emit("close", { code, reason, retryInMs: null });
      return;
    }
    const delay = backoffDelay(this.attempt, this.backoffBaseMs, this.backoffCapMs);
    this.attempt += 1;
    this.state = "reconnecting";
    this._emit("close", { code, reason, retryInMs: Math.round(delay) });
    this._timer = setTimeout(() => {
      if (!this.reconnect) return;
      this.state = "connecting";
      this._open();
    }, delay);
  }

  // Requests still waiting for an answer on a connection that closed. Subscriptions are
  // not failed: they stay in _topics, are sent again on the next connection, and their
  // promises settle then.
  _failInflight(err) {
    const entries = [...this._inflight.values(), ...this._fifo];
    this._inflight.clear();
    this._fifo = [];
    for (const entry of entries) if (entry.reject) entry.reject(err);
  }

  _sendSubscribe(topic) {
    const frame =
      this.dialect === "vws" ? { k: "s", t: topic } : { type: "subscribe", data: topic };
    this._request(frame, { topic }).catch(() => {});
  }

  // Sends one request and returns a promise for its answer. `entry.topic` marks a
  // subscribe: its answer also settles every subscribe() promise waiting for that topic.
  _request(frame, entry) {
    return new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
      if (this.dialect === "vws") {
        const id = this._nextId++;
        this._inflight.set(id, entry);
        this._send({ ...frame, i: id });
      } else {
        // gows has no request ids and no acks; the broker answers in order, so an error
        // before the pong that follows a request is that request's refusal.
        this._fifo.push(entry);
        this._send(frame);
        this._send({ type: "ping" });
      }
    });
  }

  _send(obj) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(obj));
  }

  _answer(entry, error) {
    if (entry.topic !== undefined) {
      if (error) this._topics.delete(entry.topic);
      this._settle(entry.topic, error);
    }
    if (error) entry.reject(error);
    else entry.resolve();
  }

  _settle(topic, error) {
    const waiters = this._waiting.get(topic) ?? [];
    this._waiting.delete(topic);
    for (const w of waiters) {
      if (error) w.reject(error);
      else w.resolve();
    }
  }

  _receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this._emit("error", new Error("broker sent a message that is not JSON"));
      return;
    }
    if (this.dialect === "vws") this._receiveVws(msg);
    else this._receiveGows(msg);
  }

  _receiveVws(msg) {
    if (msg.k === "a" || msg.k === "n") {
      const error = msg.k === "n" ? new Error(msg.e ?? "refused") : null;
      const entry = this._inflight.get(msg.i);
      if (entry) {
        this._inflight.delete(msg.i);
        this._answer(entry, error);
      } else if (error) {
        this._emit("error", error);
      }
      return;
    }
    this._emit("message", msg.t, msg.d, msg);
  }

  _receiveGows(msg) {
    if (msg.type === "pong") {
      const entry = this._fifo.shift();
      if (entry) this._answer(entry, entry.error ?? null);
      return;
    }
    if (msg.type === "error" && this._fifo.length > 0) {
      const head = this._fifo[0];
      if (!head.error) head.error = new Error(msg.data ?? "refused");
      return;
    }
    // Channel-less events and errors are broadcasts; vws shows them on `$broadcast`.
    this._emit("message", msg.channel ?? "$broadcast", msg.data, msg);
  }
}

function buildUrl(url, token) {
  const base =
    url ??
    (typeof location !== "undefined"
      ? `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`
      : "ws://localhost:8080/ws");
  if (token === undefined || token === null) return base;
  const u = new URL(base);
  u.searchParams.set("token", token);
  return u.toString();
}
