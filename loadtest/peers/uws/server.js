'use strict';
// The benchmark peer: a vws pub/sub broker on uWebSockets.js (docs/LOADTEST.md, "The
// uWebSockets.js peer"). It speaks as much of the vws dialect (SPEC §3) as the load
// harness uses, on exact topics:
//
//   client -> peer                     peer -> client
//   {"k":"s","t":T,"i"?}  subscribe    {"k":"a","i":I} when i was given, else nothing
//   {"k":"u","t":T,"i"?}  unsubscribe  idem
//   {"k":"U","i"?}        leave all    idem
//   {"t":T,"d":D,"h"?,"i"?} publish    idem; every subscriber of T gets {"t":T,"d":D,"h"?}
//   anything else                      {"k":"n","i"?,"e":"<reason>"}
//
// Fan-out is uWS's own topic tree: a publication is rendered once and the C++ core
// writes those bytes to every subscriber, so the peer's cost per delivery is uWS's.
//
// Environment: PORT (default 9001; 0 picks a free one), HOST (default 127.0.0.1).
// `node server.js --check` loads the native binary, prints what it loaded and exits.

const fs = require('fs');
const path = require('path');

const PACKAGE_DIR = path.join(__dirname, 'node_modules', 'uWebSockets.js');

// The package's own entry point quietly swaps in a JavaScript imitation (built on the
// `ws` package) when the native addon cannot be loaded. A benchmark of that would be a
// benchmark of something else, so the addon is required by its exact file name and a
// failure stops the peer with the reason.
function loadNative() {
  const abi = process.versions.modules;
  const file = `uws_${process.platform}_${process.arch}_${abi}.node`;
  const full = path.join(PACKAGE_DIR, 'binaries', file);
  const fail = (why) => {
    console.error(`uws peer: the native uWebSockets.js addon did not load: ${why}`);
    process.exit(1);
  };
  if (!fs.existsSync(PACKAGE_DIR)) {
    fail(`${PACKAGE_DIR} is missing; run \`npm ci --ignore-scripts\` in ${__dirname}`);
  }
  if (!fs.existsSync(full)) {
    let shipped = [];
    try {
      shipped = fs.readdirSync(path.join(PACKAGE_DIR, 'binaries'));
    } catch (e) {
      // reported below as an empty list
    }
    const abis = shipped
      .filter((f) => f.startsWith(`uws_${process.platform}_${process.arch}_`))
      .map((f) => f.replace(/^.*_(\d+)\.node$/, '$1'));
    fail(`no ${file} for Node ${process.version} (module ABI ${abi}); ` +
      `this package ships ABIs [${abis.join(', ')}] for ${process.platform}/${process.arch} ` +
      '(93 = Node 16, 108 = Node 18, 115 = Node 20)');
  }
  let addon;
  try {
    addon = require(full);
  } catch (e) {
    fail(`${full}: ${e.message}`);
  }
  if (typeof addon.App !== 'function' || typeof addon.us_listen_socket_close !== 'function') {
    fail(`${full} loaded but does not look like uWebSockets.js (no App)`);
  }
  return { addon, file: full };
}

const native = loadNative();
const uWS = native.addon;

if (process.argv.includes('--check')) {
  console.log(`uws peer: native uWebSockets.js loaded from ${native.file}`);
  process.exit(0);
}

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number.parseInt(process.env.PORT || '9001', 10);
// Longest topic accepted, in UTF-16 units (the harness's topics are short ASCII).
const TOPIC_LIMIT = 1024;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function send(ws, reply) {
  ws.send(JSON.stringify(reply), false, false);
}

// The ack or nack for request id `i` (an ack only when an id was given, as vws says).
function done(ws, i) {
  if (i !== undefined) send(ws, { k: 'a', i });
}

function refuse(ws, i, e) {
  send(ws, i === undefined ? { k: 'n', e } : { k: 'n', i, e });
}

function topicOk(t) {
  return typeof t === 'string' && t.length > 0 && t.length <= TOPIC_LIMIT;
}

// One parsed client message.
function handle(app, ws, m) {
  const i = m.i;
  if (m.k === undefined) {
    if (!topicOk(m.t)) return refuse(ws, i, 'invalid topic');
    if (!Object.prototype.hasOwnProperty.call(m, 'd')) return refuse(ws, i, 'missing d');
    const event = m.h === undefined ? { t: m.t, d: m.d } : { t: m.t, d: m.d, h: m.h };
    app.publish(m.t, JSON.stringify(event), false, false);
    return done(ws, i);
  }
  if (m.k === 's' || m.k === 'u') {
    if (!topicOk(m.t)) return refuse(ws, i, 'invalid topic');
    if (m.k === 's') ws.subscribe(m.t);
    else ws.unsubscribe(m.t);
    return done(ws, i);
  }
  if (m.k === 'U') {
    for (const t of ws.getTopics()) ws.unsubscribe(t);
    return done(ws, i);
  }
  return refuse(ws, i, 'unknown kind');
}

const app = uWS.App();

app.ws('/*', {
  // What the comparison in BENCHMARKS.md assumes: no compression, 64 KiB messages,
  // 1 MiB of backpressure per subscriber (past it publish skips the subscriber, which
  // the harness counts as loss; the subscriber is not closed), no idle timeout, no pings.
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 1024 * 1024,
  closeOnBackpressureLimit: false,
  idleTimeout: 0,
  sendPingsAutomatically: false,
  message(ws, data, isBinary) {
    if (isBinary) {
      ws.end(1003, 'binary frames are not supported');
      return;
    }
    let m;
    try {
      m = JSON.parse(utf8.decode(data));
    } catch (e) {
      refuse(ws, undefined, 'malformed JSON');
      return;
    }
    if (typeof m !== 'object' || m === null || Array.isArray(m)) {
      refuse(ws, undefined, 'a message is a JSON object');
      return;
    }
    handle(app, ws, m);
  },
});

// Plain HTTP gets a 400: the peer serves WebSockets on any path and nothing else.
app.any('/*', (res) => {
  res.writeStatus('400 Bad Request').end('a WebSocket upgrade is expected\n');
});

let listening = null;
app.listen(HOST, PORT, (socket) => {
  if (!socket) {
    console.error(`uws peer: cannot listen on ${HOST}:${PORT}`);
    process.exit(1);
  }
  listening = socket;
  const port = uWS.us_socket_local_port(socket);
  console.error(`uws peer (native uWebSockets.js, pid ${process.pid}) listening on ws://${HOST}:${port}/ws`);
});

function stop() {
  if (listening) uWS.us_listen_socket_close(listening);
  process.exit(0);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
