// Taskbeam page: starts tasks over REST, follows them over Socket.IO.
// Every task keeps the last seq applied; events at or below it are duplicates,
// a jump above it is a gap, answered by resubscribing with that seq.
// Events only change state and mark tasks dirty; the DOM is written once per
// animation frame (100 tasks at 10 events/s each would otherwise stall the page).
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const TASKS_PAGE = 20;       // tasks shown per "Show older tasks"
const EVENTS_PAGE = 50;      // events per page of a task's log
const LOG_LIVE_MAX = 2000;   // past this, a log stops growing live: "Load more" reads on
const RATE_WINDOW_S = 15;    // the rate is measured over this much recent history
const ETA_MIN_SPAN_S = 2;    // ... and shown once the history spans this long
const QUEUE_POLL_MS = 3000;  // the queue moving sends no event: ask for positions
const CLOCK_PAINTS = 25;     // tasks whose times are redrawn per frame
const OFFSCREEN_PAINTS = 25; // off-screen tasks redrawn per frame, each at most once a second
const RESULT_PAIRS = 20;     // a result shows at most this many key/value pairs
const VALUE_CHARS = 200;     // ... each value cut to this length
const KID_ROW_PX = 44;       // a child's row (style.css .kid): the list is windowed by it
const KID_MARGIN = 4;        // rows drawn beyond the view, either side
const KID_POLL_MS = 1000;    // an open list of an unfinished workflow is read this often
const KID_KEEP = 200;        // children kept in memory either side of the view
const KID_SETTLE_POLLS = 10; // reads after the workflow ended, while children in view end too

const tasks = new Map(); // id -> task {snapshot, el, f (its nodes), est, log}
const kinds = new Map(); // kind -> {kind, title, description, units, schema, form, fields}
const order = [];        // ids, newest first
const dirty = new Set();
let listDirty = true;
let frame = 0;
let shownLimit = TASKS_PAGE;
let clockPaints = 0;
const $ = (id) => document.getElementById(id);
const list = $("tasks");
const indicator = $("connection");
const formError = $("form-error");
const picker = $("kind-picker");
const make = (tag, props) => Object.assign(document.createElement(tag), props);

const locale = undefined; // the browser's
const num0 = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });
const num1 = new Intl.NumberFormat(locale, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const numAny = new Intl.NumberFormat(locale, { maximumFractionDigits: 6 });
const absolute = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "medium" });
const clock = new Intl.DateTimeFormat(locale, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const relative = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });

// AUTH_MODE=jwt (docs/identity.md): the token, and auth.js for the rest.
const token = () => localStorage.getItem("taskbeam.token");
let authJs;
function auth(refused) {
  if (refused) localStorage.removeItem("taskbeam.token");
  if (self.showLogin) refused && showLogin();
  else authJs ||= document.head.appendChild(Object.assign(document.createElement("script"), { src: "/auth.js" }));
}
if (token()) auth();

// The Socket.IO client (15 KB gzipped) is loaded once the page has its answers (see
// connect): the forms and the list come first, and those answers set the session
// cookie the handshake must carry to be bound to its owner (or a token).
let socket = null;

function setConnection(state, text) {
  indicator.dataset.state = state;
  indicator.textContent = text;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (token()) init.headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error((data.error && data.error.message) || `HTTP ${response.status}`);
    err.status = response.status;
    if (response.status === 401) auth(true);
    throw err;
  }
  return data;
}

// --- formatting ---------------------------------------------------------------

function duration(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function ago(ms) {
  const s = (ms - Date.now()) / 1000;
  for (const [unit, size] of [["day", 86400], ["hour", 3600], ["minute", 60]]) {
    if (Math.abs(s) >= size) return relative.format(Math.round(s / size), unit);
  }
  return relative.format(Math.abs(s) < 10 ? 0 : Math.round(s), "second");
}

function rateText(rate, unit) {
  return `${rate >= 100 ? num0.format(rate) : num1.format(rate)} ${unit}/s`;
}

// "date_from" -> "Date from": a result's keys, and a field with no title.
function pretty(name) {
  return name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function valueText(v) {
  const text = typeof v === "number" ? numAny.format(v) : typeof v === "string" ? v : JSON.stringify(v);
  return text.length > VALUE_CHARS ? `${text.slice(0, VALUE_CHARS - 1)}…` : text;
}

// Write only what changed: a repaint of 100 tasks then touches few nodes (an
// equal write still invalidates style and layout).
function setText(node, text) {
  if (node.shown !== text) node.textContent = node.shown = text;
}

function show(node, visible) {
  if (node.hidden === visible) node.hidden = !visible;
}

// --- rate and time left, from the task's own event timestamps -----------------

// Samples are (server ts, amount done) of running events; the rate is the slope
// over the last RATE_WINDOW_S. A report with counts (done/total) measures in its
// units (rows, steps), one without in percent; a change of unit or a step back
// (a retry starting over) starts the history again. A task in stages, or a
// workflow, measures in its weighted percent: its counts are the current stage's
// (or finished children's) and would mislead.
function sample(task, ev) {
  const e = task.est;
  if (ev.state !== "running" || typeof ev.ts !== "number") {
    if (ev.state !== "running") e.samples = [];
    return;
  }
  const k = kinds.get(task.snapshot.kind) || {};
  const staged = !!ev.stage || !!(k.stages && k.stages.length) || !!k.workflow;
  const counted = !!ev.total && !staged;
  const total = counted ? ev.total : 100;
  const x = counted ? ev.done : ev.progress;
  const last = e.samples[e.samples.length - 1];
  // Measure from the last report before work moved (an export counts rows first).
  if (last && (last.total !== total || last.counted !== counted || x < last.x ||
               x === e.samples[0].x)) e.samples = [];
  e.samples.push({ ts: ev.ts, x, total, counted, at: performance.now() });
  while (e.samples.length > 3 && ev.ts - e.samples[1].ts >= RATE_WINDOW_S) e.samples.shift();
  if (e.samples.length > 200) e.samples.splice(1, 1);
  if (ev.total) task.counts = { done: ev.done, total: ev.total };
  else if (staged) task.counts = null; // a new stage, not counted yet
}

function rateOf(task) {
  const s = task.est.samples;
  if (s.length < 3) return null;
  const first = s[0], last = s[s.length - 1];
  const span = last.ts - first.ts;
  if (span < ETA_MIN_SPAN_S || last.x <= first.x) return null;
  return { rate: (last.x - first.x) / span, last };
}

// The shown value counts down with the clock and moves a little toward each new
// estimate (a 3-s time constant), so it never jumps about.
function timeLeft(task, now) {
  const e = task.est;
  const r = rateOf(task);
  if (!r || task.snapshot.state !== "running") {
    e.shown = null;
    return null;
  }
  const raw = Math.max(0, (r.last.total - r.last.x) / r.rate - (now - r.last.at) / 1000);
  if (e.shown === null) e.shown = raw;
  else {
    const counted = Math.max(0, e.shown - (now - e.shownAt) / 1000);
    e.shown = counted + (1 - Math.exp(-(now - e.shownAt) / 3000)) * (raw - counted);
  }
  e.shownAt = now;
  return e.shown;
}

// --- painting (once per frame) ------------------------------------------------

function fact(task, name, text) {
  const row = task.f[name];
  show(row, text !== null);
  if (text !== null) setText(row.lastElementChild, text);
}

function timeFact(task, name, iso) {
  const row = task.f[name];
  show(row, !!iso);
  if (!iso) return;
  const time = row.querySelector("time");
  const ms = Date.parse(iso);
  if (time.dateTime !== iso) {
    time.dateTime = iso;
    time.title = absolute.format(ms);
  }
  setText(time, ago(ms));
}

function paint(task, now) {
  task.paintedAt = now;
  const s = task.snapshot;
  const f = task.f;
  const active = !TERMINAL.has(s.state);
  if (task.el.dataset.state !== s.state) task.el.dataset.state = s.state;
  setText(f.kind, s.kind);
  setText(f.state, s.state);
  const pct = String(Math.round(s.progress));
  if (f.bar.getAttribute("aria-valuenow") !== pct) {
    f.bar.setAttribute("aria-valuenow", pct);
    f.fill.style.transform = `scaleX(${s.progress / 100})`;
  }
  show(f.message, !(s.state === "failed" && s.error));
  setText(f.message, s.message || "");
  show(f.cancel, active);
  show(f.again, !!s.params && (s.state === "failed" || s.state === "cancelled"));
  const url = s.state === "succeeded" && s.result && s.result.download_url;
  show(f.download, !!url);
  if (url && f.download.getAttribute("href") !== url) f.download.href = url;
  if (task.resultShown !== s.result) paintResult(task);

  const unit = (kinds.get(s.kind) || {}).units || "items";
  const c = task.counts || (s.children && s.children.total ? s.children : null);
  fact(task, "stage", s.state === "running" && s.stage ? s.stage : null);
  fact(task, "progress", `${Math.floor(s.progress)} %` +
    (c ? ` · ${num0.format(c.done)} of ${num0.format(c.total)} ${unit}` : ""));
  fact(task, "queue", s.state === "queued" && s.queue_position ? num0.format(s.queue_position) : null);
  const left = timeLeft(task, now);
  fact(task, "left", left === null ? null : duration(left));
  const r = active && rateOf(task);
  fact(task, "rate", r ? rateText(r.rate, r.last.counted ? unit : "%") : null);
  paintKidsToggle(task);
  fact(task, "error", s.state === "failed" && s.error ? `${s.error.message} (${s.error.code})` : null);
  // What moves with the clock only: once a second, or when the state changes,
  // for at most CLOCK_PAINTS tasks a frame (the others wait a frame or two).
  if (task.clockState === s.state && (now - task.clockAt < 1000 || clockPaints <= 0)) return;
  clockPaints--;
  task.clockAt = now;
  task.clockState = s.state;
  const started = s.started_at && Date.parse(s.started_at);
  const end = s.finished_at ? Date.parse(s.finished_at) : Date.now();
  fact(task, "elapsed", started ? duration((end - started) / 1000) : null);
  timeFact(task, "created", s.created_at);
  timeFact(task, "started", s.started_at);
  timeFact(task, "finished", s.finished_at);
}

// A finished task's result, whatever its kind: its key/value pairs (the download
// link apart); the kind's own summary is the last event's message.
function paintResult(task) {
  const result = task.snapshot.result;
  task.resultShown = result;
  const pairs = Object.entries(result || {}).filter(([key]) => key !== "download_url");
  task.f.result.replaceChildren(...pairs.slice(0, RESULT_PAIRS).map(([key, value], i) => {
    const term = make("dt", { id: `${task.snapshot.id}-r${i}`, textContent: pretty(key) });
    const detail = make("dd", { textContent: valueText(value) });
    detail.setAttribute("aria-labelledby", term.id);
    const row = make("div");
    row.append(term, detail);
    return row;
  }));
  show(task.f.result, pairs.length > 0);
}

function matches(task) {
  const state = $("filter-state").value;
  const kind = $("filter-kind").value;
  const s = task.snapshot.state;
  if (state === "active" ? TERMINAL.has(s) : state && state !== s) return false;
  return !kind || kind === task.snapshot.kind;
}

function paintList() {
  let shown = 0;
  let matching = 0;
  for (const id of order) {
    const task = tasks.get(id);
    const visible = matches(task) && matching++ < shownLimit;
    if (visible) shown++;
    if (task.el.hidden === visible) {
      task.el.hidden = !visible;
      if (visible) dirty.add(task);
    }
  }
  const empty = $("empty");
  show(empty, shown === 0);
  setText(empty, tasks.size ? "No tasks match these filters." : "No tasks yet.");
  show($("older"), matching > shownLimit);
  $("clear").disabled = ![...tasks.values()].some((t) => TERMINAL.has(t.snapshot.state));
}

// The title shows how far the unfinished tasks are, for a page in another tab.
function paintTitle() {
  let sum = 0;
  let n = 0;
  tasks.forEach((t) => {
    if (!TERMINAL.has(t.snapshot.state)) { sum += t.snapshot.progress; n++; }
  });
  const title = n ? `${Math.floor(sum / n)} % · Taskbeam` : "Taskbeam";
  if (document.title !== title) document.title = title;
}

// Tasks on screen are redrawn every frame they change; the others at most once a
// second, a few a frame: the work per frame stays bounded however many tasks run.
const onScreen = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const task = entry.target.task;
    task.onScreen = entry.isIntersecting;
    if (task.onScreen) changed(task, false);
    if (task.onScreen && task.kids && task.kids.idle) loadKids(task);
  }
});

function flush() {
  frame = 0;
  clockPaints = CLOCK_PAINTS;
  let offscreen = OFFSCREEN_PAINTS;
  const now = performance.now();
  if (listDirty) { listDirty = false; paintList(); }
  for (const task of dirty) {
    if (!task.el.isConnected) {
      paint(task, now); // before insertion: the bar never shows 0 for a task under way
      if (task.atTop) list.prepend(task.el); else list.append(task.el);
      onScreen.observe(task.el);
    } else if (!task.el.hidden) {
      if (!task.onScreen && (now - task.paintedAt < 1000 || offscreen-- <= 0)) continue;
      paint(task, now);
    }
    dirty.delete(task);
  }
  paintTitle();
  if (dirty.size) schedule();
}

// A hidden tab gets no animation frames; its title and notifications still matter.
function schedule() {
  if (frame) return;
  frame = document.hidden ? setTimeout(flush, 250) : requestAnimationFrame(flush);
}

function changed(task, listToo) {
  dirty.add(task);
  if (listToo) listDirty = true;
  schedule();
}

// --- tasks --------------------------------------------------------------------

function track(snapshot, atTop) {
  let task = tasks.get(snapshot.id);
  if (!task) {
    const el = $("task-template").content.firstElementChild.cloneNode(true);
    const f = { kind: el.querySelector(".kind"), state: el.querySelector(".state"),
      bar: el.querySelector(".bar"), fill: el.querySelector(".fill"),
      message: el.querySelector(".message"), cancel: el.querySelector(".cancel"),
      again: el.querySelector(".again"), download: el.querySelector(".download"),
      result: el.querySelector(".result"), kidsToggle: el.querySelector(".kids-toggle"),
      kids: el.querySelector(".kids") };
    for (const row of el.querySelectorAll("[data-fact]")) {
      const term = row.firstElementChild;
      term.id = `${snapshot.id}-${row.dataset.fact}`;
      row.lastElementChild.setAttribute("aria-labelledby", term.id);
      row.hidden = true;
      f[row.dataset.fact] = row;
    }
    f.bar.setAttribute("aria-label", `${snapshot.kind} progress`);
    task = { snapshot, el, f, atTop, est: { samples: [], shown: null }, log: null,
             clockAt: -1e9, paintedAt: -1e9, onScreen: true };
    el.task = task;
    el.hidden = true; // until the list shows it
    f.cancel.addEventListener("click", () => cancel(snapshot.id));
    f.again.addEventListener("click", () => runAgain(task));
    el.querySelector(".log-toggle").addEventListener("click", () => toggleLog(task));
    el.querySelector(".log-more").addEventListener("click", () => loadLog(task));
    f.kidsToggle.addEventListener("click", () => toggleKids(task));
    f.kids.id = `${snapshot.id}-kids`;
    f.kidsToggle.setAttribute("aria-controls", f.kids.id);
    tasks.set(snapshot.id, task);
    if (atTop) order.unshift(snapshot.id); else order.push(snapshot.id);
  } else if (snapshot.seq >= task.snapshot.seq) {
    task.snapshot = Object.assign(task.snapshot, snapshot);
    if (snapshot.state !== "queued") delete task.snapshot.queue_position;
    if (!snapshot.stage) delete task.snapshot.stage;
  }
  changed(task, true);
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
  const wasActive = !TERMINAL.has(s.state);
  const stamp = new Date(event.ts * 1000).toISOString();
  Object.assign(s, { seq: event.seq, state: event.state, progress: event.progress,
                     message: event.message, updated_at: stamp });
  if (event.state !== "queued") delete s.queue_position;
  if (event.state === "running" && !s.started_at) s.started_at = stamp;
  if (event.result) s.result = event.result;
  if (event.error) s.error = event.error;
  // A stage is named while running (a report that names none stays in it).
  if (event.state !== "running") delete s.stage;
  else if (event.stage) s.stage = event.stage;
  // A workflow's counts are its children: finished, in all.
  if (event.total && (s.children || (kinds.get(s.kind) || {}).workflow)) {
    s.children = { failed: 0, ...s.children, done: event.done, total: event.total };
  }
  sample(task, event);
  logLive(task, event);
  const ended = wasActive && TERMINAL.has(event.state);
  if (ended) {
    s.finished_at = stamp;
    notify(task);
    if (task.kids && task.kids.open) loadKids(task); // their final states
  }
  changed(task, ended);
}

function subscribe(id) {
  const task = tasks.get(id);
  if (!task || !socket || !socket.connected) return;
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

async function start(kind, params) {
  formError.textContent = "";
  fieldError(kind, "");
  try {
    track(await api("POST", "/api/tasks", { kind, params }), true);
  } catch (err) {
    formError.textContent = err.message;
    fieldError(kind, err.message);
  }
}

function runAgain(task) {
  return start(task.snapshot.kind, task.snapshot.params);
}

// Clears every finished task, four requests at a time.
async function clearFinished() {
  const ids = order.filter((id) => TERMINAL.has(tasks.get(id).snapshot.state));
  const next = async () => {
    for (let id = ids.shift(); id; id = ids.shift()) {
      try {
        await api("DELETE", `/api/tasks/${encodeURIComponent(id)}`);
      } catch (err) {
        if (err.status !== 404) { formError.textContent = err.message; continue; }
      }
      const task = tasks.get(id);
      onScreen.unobserve(task.el);
      task.el.remove();
      dirty.delete(task);
      tasks.delete(id);
      order.splice(order.indexOf(id), 1);
    }
  };
  await Promise.all([next(), next(), next(), next()]);
  listDirty = true;
  schedule();
}

// Where a queued task stands in the queue; at most 20 requests a round.
async function pollQueue() {
  const queued = order.filter((id) => tasks.get(id).snapshot.state === "queued").slice(0, 20);
  for (const id of queued) {
    try {
      const snap = await api("GET", `/api/tasks/${encodeURIComponent(id)}`);
      const task = tasks.get(id);
      if (task && snap.seq === task.snapshot.seq) {
        task.snapshot.queue_position = snap.queue_position;
        changed(task, false);
      }
    } catch (err) { /* next round */ }
  }
  setTimeout(pollQueue, QUEUE_POLL_MS);
}

// --- the event log ------------------------------------------------------------

function toggleLog(task) {
  const button = task.el.querySelector(".log-toggle");
  const box = task.el.querySelector(".log");
  const open = button.getAttribute("aria-expanded") !== "true";
  button.setAttribute("aria-expanded", String(open));
  button.textContent = open ? "Hide log" : "Show log";
  box.hidden = !open;
  if (open && !task.log) {
    task.log = { after: 0, more: false, loading: false, count: 0, list: box.querySelector("ol") };
    loadLog(task);
  }
}

// One page after the last event shown; once caught up, live events append
// themselves (see apply), and anything missed meanwhile is read again.
async function loadLog(task) {
  const log = task.log;
  if (log.loading) return;
  log.loading = true;
  const more = task.el.querySelector(".log-more");
  more.disabled = true;
  try {
    const id = encodeURIComponent(task.snapshot.id);
    const page = await api("GET", `/api/tasks/${id}/events?after=${log.after}&limit=${EVENTS_PAGE}`);
    log.more = page.has_more;
    const first = page.events[0];
    if (first && first.seq > log.after + 1) { // trimmed (EVENT_LOG_MAXLEN): say so, go on
      const li = document.createElement("li");
      li.textContent = `Events ${log.after + 1} to ${first.seq - 1} are no longer stored.`;
      log.list.append(li);
      log.after = first.seq - 1;
    }
    logAppend(log, page.events);
    // Caught up, but an event went by while this page was read: read on.
    if (!log.more && page.events.length && task.snapshot.seq > log.after) setTimeout(() => loadLog(task));
  } catch (err) {
    log.more = true;
    formError.textContent = err.message;
  }
  log.loading = false;
  more.disabled = false;
  more.hidden = !log.more;
}

// Live: appends the next event, or reads what it missed (up to LOG_LIVE_MAX
// entries; past that, "Load more" reads on when asked).
function logLive(task, event) {
  const log = task.log;
  if (!log || log.more || event.seq <= log.after) return;
  if (log.count >= LOG_LIVE_MAX) {
    log.more = true;
    task.el.querySelector(".log-more").hidden = false;
  } else if (event.seq === log.after + 1) logAppend(log, [event]);
  else loadLog(task);
}

function logAppend(log, events) {
  const items = document.createDocumentFragment();
  for (const ev of events) {
    if (ev.seq !== log.after + 1) continue;
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.dateTime = new Date(ev.ts * 1000).toISOString();
    time.textContent = clock.format(ev.ts * 1000);
    li.append(time);
    for (const [cls, text] of [["log-seq", String(ev.seq)], ["log-state", ev.state],
                               ["", `${Math.floor(ev.progress)} %`], ["", ev.message]]) {
      const span = document.createElement("span");
      if (cls) span.className = cls;
      span.textContent = text;
      li.append(" ", span);
    }
    items.append(li);
    log.after = ev.seq;
    log.count++;
  }
  log.list.append(items);
}

// --- a workflow's children ----------------------------------------------------

// A workflow's children are read a page at a time (GET .../children), never
// subscribed to: only the rows in view (and KID_MARGIN either side) are in the
// DOM, over a list as tall as all of them, so 1,000 children cost as much as 20.
// While the list is open and the workflow unfinished, the rows in view are read
// again every KID_POLL_MS, one request at a time; once it ends, once more (and a
// few more while children in view are still stopping, e.g. after a cancel).

// How many children: the last page's count or the workflow's own, the larger
// (either may be the older); null while neither is known.
function kidsTotal(task) {
  const read = task.kids ? task.kids.total : null;
  const own = task.snapshot.children ? task.snapshot.children.total : null;
  return read === null ? own : own === null ? read : Math.max(read, own);
}

function paintKidsToggle(task) {
  const s = task.snapshot;
  const button = task.f.kidsToggle;
  show(button, !!s.children || !!(kinds.get(s.kind) || {}).workflow);
  if (button.hidden) return;
  const n = kidsTotal(task);
  const what = n ? `${num0.format(n)} ${n === 1 ? "child" : "children"}` : "children";
  setText(button, `${task.kids && task.kids.open ? "Hide" : "Show"} ${what}`);
}

function toggleKids(task) {
  const k = task.kids ||= { open: false, total: null, rows: [], cache: new Map(),
                            loading: false, again: false, timer: 0 };
  k.open = !k.open;
  task.f.kidsToggle.setAttribute("aria-expanded", String(k.open));
  show(task.f.kids, k.open);
  paintKidsToggle(task);
  if (!k.open) {
    clearTimeout(k.timer);
    return;
  }
  if (!k.listening) {
    k.listening = true;
    task.f.kids.addEventListener("scroll", () => scrollKids(task), { passive: true });
  }
  paintKids(task);
  loadKids(task);
}

// The rows in view and KID_MARGIN either side: [first, last], empty when last < first.
function kidsWindow(task) {
  const list = task.f.kids;
  const total = kidsTotal(task) || 0;
  const view = list.clientHeight || 8 * KID_ROW_PX;
  const first = Math.max(0, Math.floor(list.scrollTop / KID_ROW_PX) - KID_MARGIN);
  const last = Math.min(total - 1, Math.ceil((list.scrollTop + view) / KID_ROW_PX) - 1 + KID_MARGIN);
  return { first, last, rows: Math.ceil(view / KID_ROW_PX) + KID_MARGIN };
}

function scrollKids(task) {
  const k = task.kids;
  paintKids(task);
  const { first, last } = kidsWindow(task);
  for (let i = first; i <= last; i++) {
    if (!k.cache.has(i)) return loadKids(task);
  }
}

async function loadKids(task) {
  const k = task.kids;
  if (!k.open) return;
  if (k.loading) { k.again = true; return; }
  // A list out of sight waits until it is seen again (see onScreen).
  k.idle = task.el.hidden || !task.onScreen;
  if (k.idle) return;
  k.loading = true;
  k.again = false;
  clearTimeout(k.timer);
  const ended = TERMINAL.has(task.snapshot.state);
  let settled = false;
  const w = kidsWindow(task);
  // Before the count is known, the first screenful.
  const offset = k.total === null ? 0 : w.first;
  const limit = Math.max(1, Math.min(100, k.total === null ? w.rows : w.last - w.first + 1));
  try {
    const id = encodeURIComponent(task.snapshot.id);
    const page = await api("GET", `/api/tasks/${id}/children?offset=${offset}&limit=${limit}`);
    k.total = page.total;
    // What was read before the end is stale now: read again when scrolled to.
    if (ended && !k.ends) k.cache.clear();
    if (ended) k.ends = (k.ends || 0) + 1;
    settled = ended && page.children.every((child) => TERMINAL.has(child.state));
    page.children.forEach((child, i) => k.cache.set(page.offset + i, child));
    for (const i of k.cache.keys()) {
      if (i < w.first - KID_KEEP || i > w.last + KID_KEEP || i >= k.total) k.cache.delete(i);
    }
  } catch (err) {
    formError.textContent = err.message;
  }
  k.loading = false;
  if (!k.open) return;
  paintKids(task);
  paintKidsToggle(task);
  if (k.again) loadKids(task);
  else if (!ended || (!settled && (k.ends || 0) < KID_SETTLE_POLLS)) {
    k.timer = setTimeout(() => loadKids(task), KID_POLL_MS);
  }
}

function kidRow() {
  const row = make("li", { className: "kid" });
  const bar = make("div", { className: "kid-bar" });
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.append(make("div", { className: "kid-fill" }));
  row.append(make("span", { className: "kid-n" }), make("span", { className: "kid-state" }),
             bar, make("span", { className: "kid-message" }));
  return row;
}

// Rows are kept in order, one per index in the window, placed by a transform.
function paintKids(task) {
  const k = task.kids;
  const list = task.f.kids;
  const total = kidsTotal(task) || 0;
  list.style.setProperty("--kids", String(total));
  const { first, last } = kidsWindow(task);
  const n = Math.max(0, last - first + 1);
  while (k.rows.length < n) k.rows.push(list.appendChild(kidRow()));
  while (k.rows.length > n) k.rows.pop().remove();
  k.rows.forEach((row, j) => paintKid(row, first + j, k.cache.get(first + j), total));
}

function paintKid(row, i, child, total) {
  const [n, state, bar, message] = row.children;
  if (row.index !== i) {
    row.index = i;
    row.style.transform = `translateY(${i * KID_ROW_PX}px)`;
    row.setAttribute("aria-posinset", String(i + 1));
    bar.setAttribute("aria-label", `Child ${i + 1} progress`);
  }
  if (row.getAttribute("aria-setsize") !== String(total)) row.setAttribute("aria-setsize", String(total));
  const s = child || { state: "", progress: 0, message: "" };
  if (row.dataset.state !== s.state) row.dataset.state = s.state;
  setText(n, `${num0.format(i + 1)}`);
  setText(state, child ? s.state : "…");
  const pct = String(Math.round(s.progress || 0));
  if (bar.getAttribute("aria-valuenow") !== pct) {
    bar.setAttribute("aria-valuenow", pct);
    bar.firstElementChild.style.transform = `scaleX(${(s.progress || 0) / 100})`;
  }
  const text = s.state === "failed" && s.error ? `${s.error.message} (${s.error.code})` : s.message || "";
  setText(message, text);
  if (message.title !== text) message.title = text;
}

// --- notifications ------------------------------------------------------------

const canNotify = "Notification" in window && window.isSecureContext;
const notifyButton = $("notify");

function notifyOn() {
  return canNotify && Notification.permission === "granted" && localStorage.getItem("notify") === "1";
}

function notify(task) {
  if (!document.hidden || !notifyOn()) return;
  const s = task.snapshot;
  const body = s.state === "failed" && s.error ? s.error.message : s.message;
  const title = (kinds.get(s.kind) || { title: s.kind }).title;
  const note = new Notification(`${title} ${s.state}`, { body, tag: s.id });
  note.onclick = () => window.focus();
}

// Permission is asked only from this click, never on load.
notifyButton.hidden = !canNotify || Notification.permission === "denied" || notifyOn();
notifyButton.addEventListener("click", async () => {
  if (await Notification.requestPermission() === "granted") localStorage.setItem("notify", "1");
  notifyButton.hidden = notifyOn() || Notification.permission === "denied";
});

// --- kinds and their forms ----------------------------------------------------

// GET /api/kinds gives each kind's params as a JSON Schema (pydantic's); a form is
// made from it, with the constraints HTML can check, the first time it is shown.

// Follows local references (#/$defs/Name: pydantic's enums) and one-branch allOfs;
// the keys beside a reference (default, description) win over its target's.
function resolve(root, s) {
  for (let depth = 0; s && depth < 8; depth++) {
    const { $ref, allOf, ...rest } = s;
    let target;
    if ($ref) {
      const name = /^#\/\$defs\/([^/]+)$/.exec($ref);
      target = name && (root.$defs || {})[name[1].replace(/~1/g, "/").replace(/~0/g, "~")];
    } else if (allOf && allOf.length === 1) target = allOf[0];
    else return s;
    s = { ...target, ...rest };
  }
  return s;
}

// A field's schema with its optional form unwrapped: pydantic writes an optional
// field as {"anyOf": [{...}, {"type": "null"}], "default": null}.
function fieldSchema(root, raw) {
  let s = resolve(root, raw);
  let nullable = false;
  const alts = s.anyOf || s.oneOf;
  if (alts) {
    const { anyOf, oneOf, ...rest } = s;
    const some = alts.map((a) => resolve(root, a)).filter((a) => a.type !== "null");
    nullable = some.length < alts.length;
    s = some.length === 1 ? { ...some[0], ...rest } : rest;
  }
  if (Array.isArray(s.type)) {
    nullable ||= s.type.includes("null");
    s = { ...s, type: s.type.find((t) => t !== "null") };
  }
  return { ...s, nullable };
}

// HTML matches a pattern against the whole value with the v flag; JSON Schema's
// finds it anywhere. One the v flag refuses (e.g. [a-z_-]) is checked by hand, and
// one JavaScript cannot compile (Python's own syntax) is left to the server.
function setPattern(input, p) {
  try {
    new RegExp(`.*(?:${p}).*`, "v");
    input.pattern = `.*(?:${p}).*`;
  } catch (err) {
    try {
      const re = new RegExp(p, "u");
      input.addEventListener("input", () => input.setCustomValidity(
        !input.value || re.test(input.value) ? "" : "Please match the requested format."));
    } catch (err2) { /* the server checks it */ }
  }
}

let fieldCount = 0;

// One field: its label, its control with the schema's constraints, its hint and a
// place for the server's error; read() gives its value, or undefined to omit it.
function makeField(root, name, raw, required) {
  const s = fieldSchema(root, raw);
  const id = `field-${++fieldCount}`;
  const title = raw.title || pretty(name); // a $ref's target is titled after its type
  const items = s.type === "array" && s.items && fieldSchema(root, s.items);
  const box = make(items && items.enum ? "fieldset" : "div", { className: "field" });
  let input, focus, read;
  if (items && items.enum) {
    // A set of choices: a checkbox each; the count is checked here, as HTML cannot.
    box.append(make("legend", { textContent: title }));
    const picked = new Set(s.default || []);
    const boxes = items.enum.map((v, i) => {
      const check = make("input", { type: "checkbox", id: `${id}-${i}`, checked: picked.has(v) });
      check.v = v;
      const choice = make("span", { className: "choice" });
      choice.append(check, make("label", { htmlFor: check.id, textContent: String(v) }));
      box.append(choice);
      return check;
    });
    const count = () => {
      const n = boxes.filter((b) => b.checked).length;
      boxes[0].setCustomValidity(n < (s.minItems || 0) ? `Choose at least ${s.minItems}.`
        : n > (s.maxItems ?? n) ? `Choose at most ${s.maxItems}.` : "");
    };
    if (boxes.length) { box.addEventListener("change", count); count(); }
    input = box;
    focus = boxes[0];
    read = () => boxes.filter((b) => b.checked).map((b) => b.v);
  } else {
    const label = make("label", { htmlFor: id, textContent: title });
    if (s.type === "boolean") {
      input = make("input", { type: "checkbox", id, checked: s.default === true });
      box.classList.add("check");
      // Unticked and never set: left out, so the kind's default (null) applies.
      read = () => (input.checked || required || s.default != null ? input.checked : undefined);
    } else if (s.enum) {
      input = make("select", { id });
      if (!required && s.default == null) input.append(make("option", { textContent: "(none)" }));
      for (const v of s.enum) {
        const option = make("option", { textContent: String(v), selected: v === s.default });
        option.v = v;
        input.append(option);
      }
      read = () => input.selectedOptions[0] && input.selectedOptions[0].v;
    } else if (s.type === "integer" || s.type === "number") {
      const int = s.type === "integer";
      const { exclusiveMinimum: xmin, exclusiveMaximum: xmax } = s;
      input = make("input", { type: "number", id, step: s.multipleOf || (int ? 1 : "any") });
      const min = s.minimum ?? (xmin == null ? null : int ? Math.floor(xmin) + 1 : xmin);
      const max = s.maximum ?? (xmax == null ? null : int ? Math.ceil(xmax) - 1 : xmax);
      if (min != null) input.min = min;
      if (max != null) input.max = max;
      // An exclusive bound of a number: HTML has none (comparisons with undefined are false).
      if (!int) input.addEventListener("input", () => input.setCustomValidity(
        input.valueAsNumber <= xmin ? `Must be more than ${xmin}.`
          : input.valueAsNumber >= xmax ? `Must be less than ${xmax}.` : ""));
      read = () => (input.value === "" ? undefined : input.valueAsNumber);
    } else if (s.type === "string") {
      const type = { date: "date", "date-time": "datetime-local", email: "email", uri: "url" }[s.format];
      input = make("input", { type: type || "text", id });
      if (s.minLength) input.minLength = s.minLength;
      if (s.maxLength != null) input.maxLength = s.maxLength;
      const min = s.formatMinimum ?? s.minimum, max = s.formatMaximum ?? s.maximum;
      if (type && min != null) input.min = min;
      if (type && max != null) input.max = max;
      if (s.pattern) setPattern(input, s.pattern);
      read = () => (input.value === "" ? undefined : input.value);
    } else {
      // Anything else (an object, a list of free values): typed as JSON.
      input = make("input", { type: "text", id, placeholder: "JSON" });
      if (s.default != null) input.value = JSON.stringify(s.default);
      read = () => {
        if (input.value === "") return undefined;
        try { return JSON.parse(input.value); } catch (err) { return input.value; }
      };
    }
    if (input.type !== "checkbox" && input.type !== "select-one") {
      if (s.default != null && typeof s.default !== "object") input.value = s.default;
      input.required = required && !s.nullable;
    }
    focus = input;
    box.append(...(s.type === "boolean" ? [input, label] : [label, input]));
  }
  const described = [];
  if (s.description) {
    box.append(make("small", { id: `${id}-hint`, className: "muted", textContent: s.description }));
    described.push(`${id}-hint`);
  }
  const err = make("span", { id: `${id}-error`, className: "field-error" });
  box.append(err);
  described.push(err.id);
  input.setAttribute("aria-describedby", described.join(" "));
  // Left empty, a required field that may be null is sent as null.
  const value = () => (required && s.nullable ? read() ?? null : read());
  return { name, box, input, focus, err, read: value };
}

function makeForm(k) {
  const schema = k.schema || {};
  const required = new Set(schema.required || []);
  const form = make("form", { className: "start" });
  form.setAttribute("aria-label", k.title);
  k.fields = Object.entries(schema.properties || {})
    .map(([name, raw]) => makeField(schema, name, raw, required.has(name)));
  form.append(...k.fields.map((f) => f.box), make("button", { type: "submit", textContent: "Start" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = {};
    for (const f of k.fields) {
      const value = f.read();
      if (value !== undefined) params[f.name] = value;
    }
    start(k.kind, params);
  });
  return form;
}

function showKind(kind) {
  const k = kinds.get(kind);
  if (!k) return;
  picker.value = kind;
  setText($("kind-description"), k.description || "");
  $("kind-form").replaceChildren(k.form ||= makeForm(k));
  localStorage.setItem("taskbeam.kind", kind);
}

function setKinds(list) {
  for (const k of list) {
    k.title ||= k.kind;
    kinds.set(k.kind, k);
    picker.append(make("option", { value: k.kind, textContent: k.title }));
    $("filter-kind").append(make("option", { value: k.kind, textContent: k.title }));
  }
  const last = localStorage.getItem("taskbeam.kind");
  if (list.length) showKind(kinds.has(last) ? last : list[0].kind);
  else setText($("kind-description"), "No kinds of task are registered.");
}

// A 400 invalid_params names the field ("params.steps: ..."): said beside it too.
function fieldError(kind, message) {
  const k = kinds.get(kind);
  for (const f of (k && k.fields) || []) {
    const bad = message.startsWith(`params.${f.name}:`) || message.startsWith(`params.${f.name}.`);
    setText(f.err, bad ? message.slice(message.indexOf(":") + 1).trim() : "");
    if (!f.focus) continue;
    if (bad) f.focus.setAttribute("aria-invalid", "true");
    else f.focus.removeAttribute("aria-invalid");
    if (bad && k.form.isConnected) f.focus.focus();
  }
}

// --- wiring -------------------------------------------------------------------

picker.addEventListener("change", () => showKind(picker.value));
for (const id of ["filter-state", "filter-kind"]) {
  $(id).addEventListener("change", () => { shownLimit = TASKS_PAGE; listDirty = true; schedule(); });
}
$("older").addEventListener("click", () => { shownLimit += TASKS_PAGE; listDirty = true; schedule(); });
$("clear").addEventListener("click", clearFinished);
// A frame asked for just before the tab was hidden would never come: paint now.
document.addEventListener("visibilitychange", () => { if (frame) flush(); });

// Elapsed, time left and "x minutes ago" move with the clock.
setInterval(() => {
  tasks.forEach((task) => { if (!task.el.hidden) dirty.add(task); });  // bounded per frame
  schedule();
}, 1000);

// Loaded here rather than by the page (see socket); a failed load is tried again.
function connect() {
  const script = make("script", { src: "/vendor/socket.io-4.8.1.min.js" });
  script.onerror = () => { script.remove(); setTimeout(connect, 5000); };
  script.onload = () => {
    socket = io({ transports: ["websocket", "polling"], autoConnect: false,
                  auth: (cb) => cb(token() ? { token: token() } : undefined) });
    socket.on("connect", () => {
      setConnection("connected", "Connected");
      tasks.forEach((task, id) => { if (!TERMINAL.has(task.snapshot.state)) subscribe(id); });
    });
    socket.on("disconnect", () => setConnection("reconnecting", "Reconnecting…"));
    // A refusal by the server (e.g. it lost Redis) stops automatic reconnection: retry.
    socket.on("connect_error", (err) => {
      setConnection("reconnecting", "Reconnecting…");
      if (/^(unauthenticated|token_expired)/.test(err.message)) return auth(true);
      if (!socket.active) setTimeout(() => socket.connect(), 1000);
    });
    socket.io.on("reconnect_attempt", () => setConnection("reconnecting", "Reconnecting…"));
    socket.io.on("reconnect_failed", () => setConnection("offline", "Offline"));
    socket.on("task_update", apply);
    socket.on("task_created", (snapshot) => tasks.has(snapshot.id) || track(snapshot, true));
    socket.on("error", (err) => err.code === "token_expired" && auth(true));
    socket.connect();
  };
  document.head.append(script);
}

// One request after the other: on a first visit each answer sets a session cookie
// of its own (a new owner), and the list and the socket must be the last one's.
api("GET", "/api/kinds")
  .then((data) => setKinds(data.kinds))
  .catch((err) => { formError.textContent = err.message; })
  .then(() => api("GET", "/api/tasks"))
  .then((data) => data.tasks.forEach((snapshot) => track(snapshot, false)))
  .catch((err) => { formError.textContent = err.message; })
  .finally(() => { connect(); setTimeout(pollQueue, QUEUE_POLL_MS); });
