// The page's vendored socket.io-client (its browser bundle) in Node, WebSocket only:
// connect, one subscribe, print what came back as one JSON line, close.
// node --experimental-websocket vendored_client.js BUNDLE URL
"use strict";
const fs = require("fs");
const vm = require("vm");

const [bundle, url] = process.argv.slice(2);
const page = {
  WebSocket, setTimeout, clearTimeout, setInterval, clearInterval, console,
  TextEncoder, TextDecoder, Blob, ArrayBuffer, Uint8Array, Promise, queueMicrotask,
  location: new URL(url), navigator: { userAgent: "node" },
};
page.window = page.self = page.globalThis = page;
vm.createContext(page);
vm.runInContext(fs.readFileSync(bundle, "utf8"), page);

const done = (result) => {
  console.log(JSON.stringify(result));
  process.exit(0);
};
const socket = page.io(url, { transports: ["websocket"], reconnection: false });
socket.on("connect", () => {
  socket.emit("subscribe", { task_id: "0".repeat(32) }, (ack) => {
    socket.close();
    done({ connected: true, id: socket.id, ack });
  });
});
socket.on("connect_error", (err) => done({ connected: false, message: err.message, data: err.data }));
setTimeout(() => done({ timeout: true }), 10000);
