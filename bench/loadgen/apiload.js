// apiload.js: a closed-loop HTTP/1.1 load for bench/apischema.py. `concurrency` keep-alive connections,
// each sending the next request as soon as the last answer is in, for `seconds`; prints one JSON line with
// the count of answers by status. Usage: node apiload.js '<spec JSON>'
//   spec: {host, port, seconds, concurrency, method, paths: [...], headers, body (string or null)}
'use strict';
const http = require('http');

const spec = JSON.parse(process.argv[2]);
const agent = new http.Agent({ keepAlive: true, maxSockets: spec.concurrency });
const statuses = {};
let next = 0;
const deadline = Date.now() + spec.seconds * 1000;

function one() {
  return new Promise((resolve, reject) => {
    const path = spec.paths[next++ % spec.paths.length];
    const req = http.request({ host: spec.host, port: spec.port, method: spec.method, path, agent,
      headers: spec.headers }, (res) => {
      res.resume();
      res.on('end', () => {
        statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
        resolve();
      });
    });
    req.on('error', reject);
    if (spec.body !== null) req.write(spec.body);
    req.end();
  });
}

async function loop() {
  while (Date.now() < deadline) await one();
}

Promise.all(Array.from({ length: spec.concurrency }, loop)).then(() => {
  process.stdout.write(`${JSON.stringify({ statuses })}\n`);
  agent.destroy();
}, (err) => {
  process.stderr.write(`apiload: ${err}\n`);
  process.exit(1);
});
