// The npm `eventsource` package (pinned in package-lock.json) against a URL: every event it
// dispatches printed as one JSON line on stdout, {"id": lastEventId, "type": ..., "data": ...};
// its errors (reconnect attempts) as {"error": readyState}. It reconnects by itself, sending
// Last-Event-ID, and runs until it is killed.
// Used by tests/real_clients.rs: node tests/clients/eventsource.mjs <stream URL> [type,type,...]
import { EventSource } from 'eventsource';

const url = process.argv[2];
const types = (process.argv[3] || '').split(',').filter(Boolean);
const es = new EventSource(url);
const report = (e) => console.log(JSON.stringify({ id: e.lastEventId, type: e.type, data: e.data }));
es.onmessage = report;
for (const type of types) es.addEventListener(type, report);
es.onerror = () => console.log(JSON.stringify({ error: es.readyState }));
// The package unrefs its reconnect timer, so a script with nothing else to do would exit while
// it waits to reconnect; this one stays until it is killed, as an application would.
setInterval(() => {}, 1 << 30);
