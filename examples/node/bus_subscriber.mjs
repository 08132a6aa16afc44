// Watch one metastream task on the ZeroMQ bus: the Node twin of ../bus_subscriber.py.
//
//   npm install
//   node bus_subscriber.mjs TASK_ID [ENDPOINT]
//
// ENDPOINT defaults to $METASTREAM_BUS_SUB, else ipc://$METASTREAM_HOME/run/bus-out.sock.
// Prints "ready" once the subscription is live, then "<topic> <message as JSON>" per message,
// and exits after the task's final state. The bus is live only: history comes from the REST log.
import fs from "node:fs";
import path from "node:path";
import { decode } from "@msgpack/msgpack";
import { Subscriber } from "zeromq";

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
// The supervisor's beacon (twice a second): hearing it proves our subscription reached the bus.
const BEACON = "_sys/supervisor/";

const [taskId, endpointArg] = process.argv.slice(2);
if (!taskId || taskId.length !== 36) {
  console.error("usage: node bus_subscriber.mjs TASK_ID [ENDPOINT]  (full 36-character id)");
  process.exit(64);
}
const home = path.resolve(process.env.METASTREAM_HOME || "var");
const endpoint =
  endpointArg || process.env.METASTREAM_BUS_SUB || `ipc://${home}/run/bus-out.sock`;

// connect() succeeds even when nothing listens there: say where we look, and give up below
// if not even the supervisor's beacon (twice a second) arrives within READY_TIMEOUT_MS.
const READY_TIMEOUT_MS = 10_000;
console.error(`connecting to the bus at ${endpoint}`);
const sub = new Subscriber({ linger: 0 });
sub.connect(endpoint);
// Topics are "<task_id>/<kind>"; ids all have the same length, so this prefix is exact.
sub.subscribe(taskId);
sub.subscribe(BEACON);

let ready = false;
let highestEvent = 0;
let final = null;
let graceEnd = 0;

while (true) {
  // After the final state, events still in flight from the task process (a different
  // publisher than the supervisor) get one more second; receive() then fails with EAGAIN.
  if (final) sub.receiveTimeout = Math.max(1, graceEnd - Date.now());
  else sub.receiveTimeout = ready ? -1 : READY_TIMEOUT_MS;
  let frames;
  try {
    frames = await sub.receive();
  } catch (err) {
    if (final && err.code === "EAGAIN") break;
    if (!ready && err.code === "EAGAIN") {
      const sock = endpoint.startsWith("ipc://") ? endpoint.slice("ipc://".length) : null;
      const missing = sock !== null && !fs.existsSync(sock);
      console.error(
        `no answer from the bus at ${endpoint} within ${READY_TIMEOUT_MS / 1000} s` +
          (missing ? " (the socket does not exist: is the stack running?)" : ""),
      );
      process.exit(1);
    }
    throw err;
  }
  const [topicFrame, body] = frames;
  const topic = topicFrame.toString();
  if (!ready) {
    ready = true;
    sub.unsubscribe(BEACON);
    console.log("ready");
  }
  if (topic.startsWith(BEACON)) continue;
  const msg = decode(body); // a map: the WebSocket field names plus "kind"
  console.log(topic, JSON.stringify(msg));
  if (msg.kind === "event") highestEvent = Math.max(highestEvent, msg.event_id);
  if (msg.kind === "state" && TERMINAL.has(msg.status) && !final) {
    final = msg;
    graceEnd = Date.now() + 1000;
  }
  if (final && highestEvent >= (final.last_event_id ?? 0)) break;
}
sub.close();
