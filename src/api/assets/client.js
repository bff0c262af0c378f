// shardcast browser client: an ES module with no dependencies, served by the broker at
// GET /client.js (docs/CLIENT.md). It speaks either wire dialect (docs/PROTOCOL.md),
// reconnects with exponential backoff and full jitter, and subscribes again to every topic
// after a reconnect: on a channel that keeps history, from the last offset it saw, so
// nothing published in between is missed. When the broker refuses the connection for good
// (origin not allowed, credentials missing or wrong) it says why (`refused`) and stops.
//
//   import { Shardcast } from "/client.js";
//   const sc = new Shardcast({ dialect: "vws" });
//   sc.on("message", (topic, data, raw, meta) => console.log(topic, meta.offset, data));
//   sc.on("resume", (topic, { recovered }) => recovered || console.warn("missed some", topic));
//   sc.on("refused", (reason, info) => console.error("refused:", reason, info.fix));
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
 * @property {string|null} [checkUrl] where to ask why a connection was refused; default
 *   `http(s)://<broker host>/api/ws-check` (the broker's `GET|POST /api/ws-check`), null = never
 *   ask. The WebSocket URL's query (`?token=`, `?dialect=`) is sent along.
 */

/**
 * The broker's answer to "why was my connection refused?" (`/api/ws-check`).
 * @typedef {object} Verdict
 * @property {boolean} ok true when a connection would be accepted now
 * @property {number} status what the upgrade gets: 101, or 400, 401, 403, 503
 * @property {string|null} reason e.g. "origin not allowed (server.allowed_origins)"
 * @property {boolean} retry true when trying again later may work (503)
 * @property {string|null} fix what to change, e.g. `add "http://localhost:3000" to server.allowed_origins`
 * @property {string|null} origin the Origin the broker saw
 */

/**
 * A place in a channel's history: after `offset` of `epoch`. `offset` 0 without an epoch
 * means "from the oldest publication the broker still has".
 * @typedef {object} Position
 * @property {number} offset
 * @property {string} [epoch]
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
    this._urlOption = options.url;
    this.url = buildUrl(options.url, options.token);
    this.checkUrl = options.checkUrl === undefined ? checkUrlFor(this.url) : options.checkUrl;
    this._reconnectOption = options.reconnect ?? true;
    this.reconnect = this._reconnectOption;
    this.backoffBaseMs = options.backoffBaseMs ?? 500;
    this.backoffCapMs = options.backoffCapMs ?? 30000;
    /** "connecting" | "open" | "reconnecting" | "refused" | "closed" */
    this.state = "connecting";
    /** @type {Verdict|null} why the broker refused the connection (state "refused"). */
    this.refusal = null;
    /** Failed attempts since the last successful open. */
    this.attempt = 0;
    this._handlers = new Map();
    this._topics = new Set(); // subscriptions to hold, sent again on every (re)connect
    this._waiting = new Map(); // topic -> [{resolve, reject}] until its subscribe is answered
    this._inflight = new Map(); // vws request id -> entry
    this._fifo = []; // gows: entries answered in order by the pong that follows each request
    // Exact channel -> {epoch, offset, top}: `offset` is the last one delivered (null until
    // the first event after an attach), `top` the channel's last offset when the broker
    // attached us (null when unknown). What a reconnect resumes from.
    this._positions = new Map();
    this._nextId = 1;
    this._timer = null;
    this._ws = null;
    this._opened = false;
    this._generation = 0; // bumped by close() and connect(): outdated checks are ignored
    this._open();
  }

  /**
   * Adds an event handler. Events: `open` (info `{reconnected}`), `close` (info
   * `{code, reason, retryInMs}`; retryInMs is null when no retry follows), `refused`
   * (reason, {@link Verdict}: the broker refused the connection for good, no retry
   * follows until {@link Shardcast#connect}), `error` (an Error), `message` (topic, data,
   * raw, meta `{offset, epoch, replayed}`), `resume` (topic,
   * `{recovered, after, offset, epoch}`) and `gap` (topic, `{from, to, epoch}`).
   * Broadcasts arrive as topic `$broadcast`.
   * @param {"open"|"close"|"refused"|"error"|"message"|"resume"|"gap"} event
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
   * On a channel that keeps history it resolves with `{offset, epoch, recovered?}` (the
   * channel's last offset when we were attached), else with undefined; gows tells this
   * only for a subscribe with a position.
   *
   * `options.since` (exact channels only) starts from a position instead of "now": the
   * broker first replays what came after it. `{offset: 0}` is the oldest retained.
   * @param {string} topic
   * @param {{since?: Position}} [options]
   * @returns {Promise<{offset: number, epoch: string, recovered?: boolean}|undefined>}
   */
  subscribe(topic, options = {}) {
    const since = options.since;
    if (since !== undefined && since !== null) {
      // Refused here rather than by the broker, so both dialects say the same thing.
      if (!isExact(topic)) return Promise.reject(new Error("recovery needs an exact channel"));
      if (!Number.isSafeInteger(since.offset) || since.offset < 0) {
        return Promise.reject(new Error("since.offset must be a whole number >= 0"));
      }
      this._positions.set(topic, { epoch: since.epoch ?? null, offset: since.offset, top: null });
    }
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
    this._positions.delete(topic);
    this._settle(topic, new Error(`unsubscribed from ${topic}`));
    if (this.state !== "open") return Promise.resolve();
    const frame =
      this.dialect === "vws" ? { k: "u", t: topic } : { type: "unsubscribe", data: topic };
    return this._request(frame, {});
  }

  /**
   * Where a subscribed exact channel stands: `{offset, epoch}` of the last publication
   * delivered (or of the channel's top when we were attached, before any arrived), or null
   * when the channel keeps no history or nothing is known yet. Pass it back as
   * `subscribe(topic, {since})`, e.g. after a page reload.
   * @param {string} topic
   * @returns {Position|null}
   */
  position(topic) {
    const p = this._positions.get(topic);
    const offset = p ? p.offset ?? p.top : null;
    if (offset === null || offset === undefined) return null;
    return p.epoch === null ? { offset } : { offset, epoch: p.epoch };
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
    this._generation += 1;
    clearTimeout(this._timer);
    this.state = "closed";
    if (this._ws) this._ws.close(1000);
  }

  /**
   * Connects again: after `refused` (once the cause is fixed: the broker's config, or a
   * new `token`), after `close()`, or at once instead of waiting for the next retry.
   * Subscriptions are sent again as after any reconnect. Does nothing while connected or
   * while a connection is being opened.
   * @param {{token?: string}} [options] `token` replaces the credential (`?token=`)
   */
  connect(options = {}) {
    if (options.token !== undefined) {
      this.url = buildUrl(this._urlOption, options.token);
    }
    if (this.state !== "closed" && this._ws) return;
    this._generation += 1;
    clearTimeout(this._timer);
    this.reconnect = this._reconnectOption;
    this.refusal = null;
    this.attempt = 0;
    this.state = "connecting";
    this._open();
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
    let opened = false;
    ws.onopen = () => {
      opened = true;
      const reconnected = this._opened;
      this._opened = true;
      this.attempt = 0;
      this.state = "open";
      // Resumes go first: a pattern attached before one of them could deliver a live
      // publication on its channel ahead of its replay, which would then look like old news.
      const topics = [...this._topics];
      const resuming = (t) => this._resumeFrom(t) !== null;
      for (const topic of topics.filter(resuming)) this._sendSubscribe(topic);
      for (const topic of topics.filter((t) => !resuming(t))) this._sendSubscribe(topic);
      this._emit("open", { reconnected });
    };
    ws.onmessage = (ev) => this._receive(ev.data);
    ws.onerror = () => this._emit("error", new Error(`WebSocket error on ${this.url}`));
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._failInflight(new Error("connection closed before the broker answered"));
      // Closed before it opened: the handshake failed, and a browser is not told why
      // (code 1006, no status, no body). Ask the broker; a permanent refusal stops here.
      if (!opened && this.checkUrl && this.state !== "closed") this._diagnose(ev.code, ev.reason);
      else this._scheduleReconnect(ev.code, ev.reason);
    };
  }

  async _diagnose(code, reason) {
    const generation = this._generation;
    const verdict = await this._check();
    if (generation !== this._generation || this.state === "closed") return;
    if (verdict && !verdict.ok && !verdict.retry) this._refuse(code, verdict);
    else this._scheduleReconnect(code, reason);
  }

  // The broker's verdict on a connection from here, or null when it cannot be had (the
  // broker is down, an old broker without the endpoint, a proxy in the way): then the
  // usual backoff applies. POST, because browsers send Origin with every POST (also to
  // their own origin) and with a GET only across origins; a POST without body or
  // headers needs no CORS preflight.
  async _check() {
    if (typeof fetch !== "function") return null;
    try {
      const url = new URL(this.checkUrl, typeof location !== "undefined" ? location.href : undefined);
      url.search = new URL(this.url).search; // the same ?token= and ?dialect= as the upgrade
      const signal =
        typeof AbortSignal !== "undefined" && AbortSignal.timeout ? AbortSignal.timeout(5000) : undefined;
      const r = await fetch(url, { method: "POST", cache: "no-store", credentials: "omit", signal });
      if (!r.ok) return null;
      const v = await r.json();
      return v && typeof v.ok === "boolean" && typeof v.status === "number" ? v : null;
    } catch {
      return null;
    }
  }

  _refuse(code, verdict) {
    this.state = "refused";
    this.refusal = verdict;
    const reason = verdict.reason ?? `HTTP ${verdict.status}`;
    this._emit("close", { code, reason, retryInMs: null });
    if (!this._handlers.get("refused")?.size) {
      // Nobody listens: say it where a developer looks.
      console.warn(`shardcast: ${this.url.split("?")[0]} refused by the broker: ${reason}` +
        (verdict.fix ? `; ${verdict.fix}` : ""));
    }
    this._emit("refused", reason, verdict);
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

  // The position a subscribe to `topic` resumes from, or null for a plain subscribe.
  _resumeFrom(topic) {
    const p = this._positions.get(topic);
    if (!p || !this._topics.has(topic)) return null;
    const offset = p.offset ?? p.top;
    if (offset === null) return null;
    return { offset, epoch: p.epoch };
  }

  _sendSubscribe(topic) {
    const since = this._resumeFrom(topic);
    let frame;
    if (this.dialect === "vws") {
      frame = { k: "s", t: topic };
      if (since) {
        frame.o = since.offset;
        if (since.epoch !== null) frame.e = since.epoch;
      }
    } else {
      frame = { type: "subscribe", data: topic };
      if (since) {
        frame.since = since.epoch !== null ? since : { offset: since.offset };
      }
    }
    this._request(frame, { topic, since }).catch(() => {});
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
      if (error) {
        this._topics.delete(entry.topic);
        this._positions.delete(entry.topic);
      }
      this._settle(entry.topic, error, entry.info);
    }
    if (error) entry.reject(error);
    else entry.resolve(entry.info);
  }

  _settle(topic, error, info) {
    const waiters = this._waiting.get(topic) ?? [];
    this._waiting.delete(topic);
    for (const w of waiters) {
      if (error) w.reject(error);
      else w.resolve(info);
    }
  }

  // The broker attached a subscribe to a history channel whose last offset is `top`
  // (vws ack with "o", gows "subscribed"). Called before any replayed event arrives.
  _attached(entry, top, epoch = null, recovered) {
    const topic = entry.topic;
    entry.info =
      recovered === undefined ? { offset: top, epoch } : { offset: top, epoch, recovered };
    if (!this._topics.has(topic) || !isExact(topic)) return;
    const since = entry.since;
    if (!since) {
      // Plain subscribe: the first event is at most top + 1 (older ones when the channel
      // replays its history to plain subscribes).
      this._positions.set(topic, { epoch, offset: null, top });
      return;
    }
    // Our offsets still count when the epoch is ours. An offset without its epoch (a gows
    // plain subscribe never tells it) the broker takes in the current epoch, as we do
    // unless the channel has not even got that far; `offset: 0` without one asks for the
    // oldest retained, whichever that is, so there is nothing to hold it against.
    const ours =
      since.epoch !== null ? since.epoch === epoch : since.offset > 0 && since.offset <= top;
    this._positions.set(topic, { epoch, offset: ours ? since.offset : null, top });
    const resume = { recovered: recovered === true, after: since.offset, offset: top, epoch };
    this._emit("resume", topic, resume);
  }

  // A subscribe answered without a position: the channel keeps no history (any more).
  _attachedPlain(entry) {
    const had = entry.since;
    this._positions.delete(entry.topic);
    if (had && this._topics.has(entry.topic)) {
      const info = { recovered: false, after: had.offset, offset: null, epoch: null };
      this._emit("resume", entry.topic, info);
    }
  }

  // Every channel event goes through here: offsets are checked against the channel's
  // position (duplicates dropped, holes reported) before the application sees them.
  _event(topic, data, raw, offset) {
    const meta = { offset: null, epoch: null, replayed: false };
    if (typeof offset !== "number" || typeof topic !== "string") {
      this._emit("message", topic, data, raw, meta);
      return;
    }
    meta.offset = offset;
    let p = this._positions.get(topic);
    if (!p && this._topics.has(topic) && isExact(topic)) {
      // gows plain subscribes are not answered: the first event starts the position.
      p = { epoch: null, offset: null, top: null };
      this._positions.set(topic, p);
    }
    if (p) {
      if (p.offset !== null && offset <= p.offset) return; // already delivered
      const expected = p.offset !== null ? p.offset + 1 : p.top !== null ? p.top + 1 : offset;
      if (offset > expected) {
        this._emit("gap", topic, { from: expected, to: offset - 1, epoch: p.epoch });
      }
      p.offset = offset;
      meta.epoch = p.epoch;
      meta.replayed = p.top !== null && offset <= p.top;
    }
    this._emit("message", topic, data, raw, meta);
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
        if (!error && entry.topic !== undefined) {
          // A resume on a channel without history is acked with epoch "": no position.
          if (typeof msg.o === "number" && msg.e) this._attached(entry, msg.o, msg.e, msg.r);
          else this._attachedPlain(entry);
        }
        this._answer(entry, error);
      } else if (error) {
        this._emit("error", error);
      }
      return;
    }
    this._event(msg.t, msg.d, msg, msg.o);
  }

  _receiveGows(msg) {
    if (msg.type === "pong") {
      const entry = this._fifo.shift();
      if (!entry) return;
      // A subscribe with `since` that got no "subscribed" first: no history on that channel.
      if (!entry.error && entry.since && !entry.attached) this._attachedPlain(entry);
      this._answer(entry, entry.error ?? null);
      return;
    }
    if (msg.type === "error" && this._fifo.length > 0) {
      const head = this._fifo[0];
      if (!head.error) head.error = new Error(msg.data ?? "refused");
      return;
    }
    if (msg.type === "subscribed") {
      // The answer to a subscribe with `since`; its pong is still to come (after the replay).
      const entry = this._fifo.find((e) => e.topic === msg.channel && !e.attached);
      const d = msg.data ?? {};
      if (entry) {
        entry.attached = true;
        // Epoch "": the channel keeps no history, so there is no position to keep.
        if (typeof d.offset === "number" && d.epoch) {
          this._attached(entry, d.offset, d.epoch, d.recovered);
        } else {
          this._attachedPlain(entry);
        }
      }
      return;
    }
    // Channel-less events and errors are broadcasts; vws shows them on `$broadcast`.
    this._event(msg.channel ?? "$broadcast", msg.data, msg, msg.offset);
  }
}

/** True for a topic without wildcard levels: only those have history positions. */
function isExact(topic) {
  return !topic.split("/").some((level) => level === "+" || level === "#");
}

/** The broker's `/api/ws-check` next to a WebSocket URL. */
function checkUrlFor(wsUrl) {
  try {
    const u = new URL(wsUrl);
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    u.pathname = "/api/ws-check";
    u.search = "";
    u.hash = "";
    return u.toString();
  } catch {
    return null;
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
