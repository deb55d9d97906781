// Taskbeam page: starts tasks over REST, follows them over Socket.IO.
// Every task keeps the last seq applied; events at or below it are duplicates,
// a jump above it is a gap, answered by resubscribing with that seq.
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const tasks = new Map(); // id -> {snapshot, el}
const list = document.getElementById("tasks");
const indicator = document.getElementById("connection");
const formError = document.getElementById("form-error");

// Connected only after the first API answer: that response sets the session
// cookie the Socket.IO handshake must carry to be bound to its owner.
const socket = io({ transports: ["websocket", "polling"], autoConnect: false });

function setConnection(state, text) {
  indicator.dataset.state = state;
  indicator.textContent = text;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
  }
  return data;
}

function describe(s) {
  if (s.state === "failed" && s.error) return s.error.message;
  if (s.state === "succeeded" && s.result && s.result.rows !== undefined) {
    const mb = (s.result.bytes / 1e6).toFixed(1);
    return `Exported ${s.result.rows.toLocaleString("en")} rows (${mb} MB)`;
  }
  return s.message;
}

function render(task) {
  const s = task.snapshot;
  const el = task.el;
  el.dataset.state = s.state;
  el.querySelector(".kind").textContent = s.kind;
  el.querySelector(".state").textContent = s.state;
  const bar = el.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(Math.round(s.progress)));
  bar.setAttribute("aria-label", `${s.kind} progress`);
  el.querySelector(".fill").style.width = `${s.progress}%`;
  el.querySelector(".message").textContent = describe(s);
  el.querySelector(".cancel").hidden = TERMINAL.has(s.state);
  const link = el.querySelector(".download");
  const url = s.state === "succeeded" && s.result && s.result.download_url;
  link.hidden = !url;
  if (url) link.href = url;
  document.getElementById("empty").hidden = tasks.size > 0;
}

function track(snapshot, atTop) {
  let task = tasks.get(snapshot.id);
  if (!task) {
    const el = document.getElementById("task-template").content.firstElementChild.cloneNode(true);
    el.querySelector(".cancel").addEventListener("click", () => cancel(snapshot.id));
    task = { snapshot, el };
    tasks.set(snapshot.id, task);
    render(task); // before insertion: the bar never shows 0 for a task under way
    if (atTop) list.prepend(el); else list.append(el);
  } else if (snapshot.seq >= task.snapshot.seq) {
    task.snapshot = snapshot;
  }
  render(task);
  if (!TERMINAL.has(task.snapshot.state)) subscribe(snapshot.id);
}

function apply(event) {
  const task = tasks.get(event.task_id);
  if (!task || event.seq <= task.snapshot.seq) return; // unknown or duplicate
  if (event.seq > task.snapshot.seq + 1) {             // gap: fetch what we missed
    subscribe(event.task_id);
    return;
  }
  const s = task.snapshot;
  Object.assign(s, { seq: event.seq, state: event.state, progress: event.progress,
                     message: event.message });
  if (event.result) s.result = event.result;
  if (event.error) s.error = event.error;
  render(task);
}

function subscribe(id) {
  const task = tasks.get(id);
  if (!task || !socket.connected) return;
  socket.emit("subscribe", { task_id: id, after: task.snapshot.seq }, (ack) => {
    if (ack && ack.ok) {
      ack.missed.forEach(apply);
      if (ack.more) subscribe(id); // a long backlog comes in pages of 500
    } else if (ack && ack.error.code === "unavailable") setTimeout(() => subscribe(id), 1000);
  });
}

async function cancel(id) {
  try {
    track(await api("POST", `/api/tasks/${encodeURIComponent(id)}/cancel`, {}), false);
  } catch (err) {
    formError.textContent = err.message;
  }
}

function onSubmit(formId, kind, paramsOf) {
  document.getElementById(formId).addEventListener("submit", async (e) => {
    e.preventDefault();
    formError.textContent = "";
    try {
      track(await api("POST", "/api/tasks", { kind, params: paramsOf(new FormData(e.target)) }), true);
    } catch (err) {
      formError.textContent = err.message;
    }
  });
}

onSubmit("export-form", "export", (form) => {
  const params = { format: form.get("format") };
  if (form.get("date_from")) params.date_from = form.get("date_from");
  if (form.get("date_to")) params.date_to = form.get("date_to");
  return params;
});
onSubmit("simulate-form", "simulate", (form) => ({
  steps: Number(form.get("steps")), step_ms: Number(form.get("step_ms")),
}));

socket.on("connect", () => {
  setConnection("connected", "Connected");
  tasks.forEach((task, id) => { if (!TERMINAL.has(task.snapshot.state)) subscribe(id); });
});
socket.on("disconnect", () => setConnection("reconnecting", "Reconnecting…"));
// A refusal by the server (e.g. it lost Redis) stops automatic reconnection: retry.
socket.on("connect_error", () => {
  setConnection("reconnecting", "Reconnecting…");
  if (!socket.active) setTimeout(() => socket.connect(), 1000);
});
socket.io.on("reconnect_attempt", () => setConnection("reconnecting", "Reconnecting…"));
socket.io.on("reconnect_failed", () => setConnection("offline", "Offline"));
socket.on("task_update", apply);

api("GET", "/api/tasks")
  .then((data) => data.tasks.forEach((snapshot) => track(snapshot, false)))
  .catch((err) => { formError.textContent = err.message; })
  .finally(() => socket.connect());
