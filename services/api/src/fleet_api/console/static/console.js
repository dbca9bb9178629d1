// The fleet console: fills the server-rendered pages from the gateway's own /api/v1
// REST and SSE endpoints, exactly as a user's script would, with the operator's key.
// Live parts follow the event stream; nothing polls the server on a timer.
"use strict";

const KEY_STORE = "fleet.apiKey";
const STATUS = ["pending", "running", "completed", "failed"];
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- API client
class ApiError extends Error {
  constructor(status, envelope) {
    super(envelope.message || `HTTP ${status}`);
    this.status = status;
    this.code = envelope.code;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { "X-API-Key": key, ...extra } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch("/api/v1" + path, init);
  let envelope;
  try {
    envelope = await response.json();
  } catch {
    envelope = { code: response.status * 100, message: response.statusText, data: null };
  }
  if (response.status === 401) askForKey(envelope.message);
  if (!response.ok || envelope.code !== 0) throw new ApiError(response.status, envelope);
  return envelope.data;
}

function notify(message) {
  const box = $("notice");
  box.textContent = message;
  box.hidden = !message;
}

async function act(what, call) {
  try {
    notify("");
    return await call();
  } catch (err) {
    notify(`${what}: ${err.message}`);
    return undefined;
  }
}

// ---------------------------------------------------------------- SSE over fetch
// EventSource cannot send X-API-Key, so streams are read with fetch and parsed here
// (the text/event-stream format is a few lines of rules). A dropped stream reconnects
// with Last-Event-ID, so nothing is missed while the gateway restarts.
const streams = [];

function setLive(state, text) {
  const badge = $("live");
  badge.dataset.state = state;
  badge.textContent = text;
}

function follow(path, onEvent, { lastId = null, onOpen = null } = {}) {
  const handle = { lastId, closed: false, controller: null };
  streams.push(handle);
  let backoff = 500;

  async function run() {
    while (!handle.closed) {
      handle.controller = new AbortController();
      const extra = { Accept: "text/event-stream" };
      if (handle.lastId !== null) extra["Last-Event-ID"] = String(handle.lastId);
      try {
        const response = await fetch("/api/v1" + path, { headers: headers(extra), signal: handle.controller.signal });
        if (!response.ok) {
          let envelope = {};
          try { envelope = await response.json(); } catch { /* not an envelope */ }
          if (response.status === 401) { askForKey(envelope.message); return; }
          if (response.status === 429) notify(envelope.message || "too many streams open for this key");
          if (response.status === 400 || response.status === 403) {
            setLive("error", "refused");
            notify(envelope.message || `stream refused: HTTP ${response.status}`);
            return;
          }
          throw new Error(envelope.message || `HTTP ${response.status}`);
        }
        setLive("live", "live");
        backoff = 500;
        if (onOpen) onOpen();
        await readEvents(response.body, (event) => {
          if (event.id !== undefined) handle.lastId = event.id;
          onEvent(event);
        });
      } catch (err) {
        if (handle.closed) return;
      }
      if (handle.closed) return;
      setLive("connecting", "reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }
  run();
  handle.close = () => { handle.closed = true; if (handle.controller) handle.controller.abort(); };
  return handle;
}

async function readEvents(body, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) {
          dispatch({ id: event.id, type: event.type || "message", data: event.data.join("\n") });
        }
        event = { data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") event.data.push(value);
        else if (field === "event") event.type = value;
        else if (field === "id") event.id = value;
      }
    }
  }
}

// The log's events: `data` is the EventEnvelope (type, data, recorded_at, position…).
function followLog(query, onEnvelope, options = {}) {
  const qs = new URLSearchParams(query).toString();
  return follow("/events" + (qs ? "?" + qs : ""), (event) => {
    let envelope;
    try { envelope = JSON.parse(event.data); } catch { return; }
    onEnvelope(envelope, event.id);
  }, options);
}

// Run `fn` at most once per `ms`, and always once after the last call.
function throttle(fn, ms) {
  let timer = null;
  let again = false;
  return function trigger() {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(() => { timer = null; if (again) { again = false; trigger(); } }, ms);
  };
}

// ---------------------------------------------------------------- key and role
function askForKey(reason) {
  const dialog = $("key-dialog");
  setLive("error", "key needed");
  if (reason) $("key-reason").textContent = reason;
  if (!dialog.open) dialog.showModal();
}

function setupKey() {
  $("key-form").addEventListener("submit", () => {
    localStorage.setItem(KEY_STORE, $("key-input").value.trim());
    location.reload();
  });
  $("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    location.reload();
  });
}

// ---------------------------------------------------------------- formatting
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.floor(s / 60)}m ago` : `${Math.floor(s / 3600)}h ago`;
}

function badge(status) {
  return el("span", { class: `badge s${status}`, "data-status": STATUS[status] }, STATUS[status] ?? status);
}

function taskLink(id) {
  return el("a", { href: `/console/tasks/${id}` }, `#${id}`);
}

function deviceLink(serial) {
  return serial ? el("a", { href: `/console/devices/${encodeURIComponent(serial)}` }, serial) : "";
}

// Why an event happened, in a few words, from whichever field the event carries.
function why(type, data) {
  if (data.reason) return data.reason;
  if (type === "task.progressed") return [data.step, data.percent != null ? `${data.percent}%` : "", data.message].filter(Boolean).join(" · ");
  if (type === "task.created") return data.wait_reason || `on ${data.serial}`;
  if (type === "task.dispatched") return `to ${data.agent_id}`;
  if (type === "task.started") return `on ${data.serial} by ${data.agent_id}`;
  if (type === "task.retried") return `retry ${data.retry_count}`;
  if (type === "task.completed") return Object.keys(data.result || {}).length ? JSON.stringify(data.result) : "";
  if (type === "device.connected") return [data.host, data.model].filter(Boolean).join(" · ");
  return "";
}

// Who caused an event: the actor the gateway recorded (API key name, scheduler,
// agent), wherever this version of the log keeps it.
function actorOf(record) {
  return record.actor || (record.data && record.data.actor) || "";
}

// Every page of a list that may answer a bare list or {items…, total, page, page_size}.
async function listAll(path, field) {
  const all = [];
  for (let page = 1; page <= 1000; page++) {
    const sep = path.includes("?") ? "&" : "?";
    const data = await api("GET", `${path}${sep}page=${page}&page_size=100`);
    if (Array.isArray(data)) return data;
    const items = data[field] || [];
    all.push(...items);
    if (!items.length || all.length >= (data.total ?? all.length)) break;
  }
  return all;
}

// ---------------------------------------------------------------- fleet state
// Devices from GET /device, kept current by device events, task events and heartbeats.
const fleet = {
  devices: new Map(),
  agents: new Map(),
  listeners: [],
  changed() { for (const fn of this.listeners) fn(); },
  async load() {
    const devices = await listAll("/device", "devices");
    for (const d of devices) this.devices.set(d.serial, d);
    for (const d of devices) {
      if (!d.agent_id) continue;
      const agent = this.agents.get(d.agent_id) || { agent_id: d.agent_id, host: d.host, phones: 0, beat: null };
      if (d.online) agent.phones += 1;
      const seen = d.last_seen ? Date.parse(d.last_seen) : null;
      if (seen && (!agent.beat || seen > agent.beat)) agent.beat = seen;
      this.agents.set(d.agent_id, agent);
    }
    this.changed();
  },
  onEvent(envelope) {
    const data = envelope.data || {};
    const device = data.serial ? this.devices.get(data.serial) : null;
    switch (envelope.type) {
      case "device.connected":
        this.devices.set(data.serial, { ...(device || {}), serial: data.serial, agent_id: data.agent_id, host: data.host,
          model: data.model, android_version: data.android_version, battery: data.battery ?? device?.battery, online: true });
        break;
      case "device.disconnected":
        if (device) Object.assign(device, { online: false, busy: false, current_task_id: null });
        break;
      case "task.dispatched":
      case "task.started":
        if (device) Object.assign(device, { busy: true, current_task_id: data.task_id });
        break;
      case "task.completed":
      case "task.failed":
      case "task.stopped":
      case "task.deleted":
        for (const d of this.devices.values()) {
          if (d.current_task_id === data.task_id) Object.assign(d, { busy: false, current_task_id: null });
        }
        break;
      default:
        return;
    }
    this.changed();
  },
  onHeartbeat(beat) {
    this.agents.set(beat.agent_id, { agent_id: beat.agent_id, host: beat.host, phones: beat.devices.length, beat: Date.now() });
    for (const status of beat.devices) {
      const device = this.devices.get(status.serial) || { serial: status.serial, agent_id: beat.agent_id, host: beat.host };
      Object.assign(device, { online: true, busy: status.busy, current_task_id: status.task_id,
        battery: status.battery ?? device.battery, agent_id: beat.agent_id, host: beat.host });
      this.devices.set(status.serial, device);
    }
    this.changed();
  },
  followHeartbeats() {
    follow("/heartbeats", (event) => {
      try { this.onHeartbeat(JSON.parse(event.data)); } catch { /* a malformed beat is skipped */ }
    });
  },
  byHost() {
    const hosts = new Map();
    for (const d of this.devices.values()) {
      const host = d.host || d.agent_id || "unknown";
      if (!hosts.has(host)) hosts.set(host, []);
      hosts.get(host).push(d);
    }
    return new Map([...hosts.entries()].sort());
  },
};

// ---------------------------------------------------------------- overview
async function overview() {
  const refreshStats = throttle(async () => {
    const stats = await act("stats", () => api("GET", "/task/stats"));
    if (!stats) return;
    for (const key of ["total", "pending", "running", "completed", "failed"]) $(`stat-${key}`).textContent = stats[key];
  }, 300);
  const created = [];
  const finished = [];
  const rates = () => {
    const cutoff = Date.now() - 60000;
    for (const list of [created, finished]) while (list.length && list[0] < cutoff) list.shift();
    $("rate-created").textContent = created.length;
    $("rate-finished").textContent = finished.length;
  };
  // Redrawn at most a few times a second, however many events and heartbeats arrive.
  const render = throttle(() => {
    const body = $("hosts");
    body.replaceChildren(...[...fleet.byHost()].map(([host, devices]) => {
      const online = devices.filter((d) => d.online).length;
      const busy = devices.filter((d) => d.online && d.busy).length;
      return el("tr", { "data-host": host }, el("td", {}, host), el("td", { class: "num" }, online),
        el("td", { class: "num" }, busy), el("td", { class: "num" }, devices.length - online));
    }));
    const agents = [...fleet.agents.values()].sort((a, b) => a.agent_id.localeCompare(b.agent_id));
    $("agents").replaceChildren(...agents.map((a) => el("tr", {}, el("td", {}, a.agent_id), el("td", {}, a.host || ""),
      el("td", { class: "num" }, a.phones), el("td", {}, a.beat ? ago(Date.now() - a.beat) : "—"))));
  }, 250);
  fleet.listeners.push(render);
  followLog({}, (envelope) => {
    if (envelope.type.startsWith("task.") && envelope.type !== "task.progressed") refreshStats();
    if (envelope.type === "task.created") created.push(Date.now());
    if (["task.completed", "task.failed", "task.stopped"].includes(envelope.type)) finished.push(Date.now());
    fleet.onEvent(envelope);
    rates();
  }, { onOpen: refreshStats });
  fleet.followHeartbeats();
  await act("devices", () => fleet.load());
  // A display clock: "last heartbeat 3s ago" and the per-minute rates age on screen.
  setInterval(() => { rates(); render(); }, 1000);
}

// ---------------------------------------------------------------- task table
function taskActions(task, reload) {
  const buttons = [];
  if (task.status === 0 || task.status === 1) {
    buttons.push(el("button", { class: "stop", onclick: () => act(`stop #${task.id}`, () => api("POST", `/task/${task.id}/stop`)).then(reload) }, "stop"));
  }
  if (task.status === 3) {
    buttons.push(el("button", { class: "retry", onclick: () => act(`retry #${task.id}`, () => api("POST", `/task/${task.id}/retry`)).then(reload) }, "retry"));
  }
  buttons.push(el("button", { class: "delete", onclick: () => {
    if (confirm(`Delete task #${task.id}? A running task is stopped first.`)) {
      act(`delete #${task.id}`, () => api("DELETE", `/task/${task.id}`)).then(reload);
    }
  } }, "delete"));
  return buttons;
}

async function tasks() {
  const params = new URLSearchParams(location.search);
  for (const [name, value] of [...params]) if (!value) params.delete(name);
  const page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  const selected = new Set();
  const updateSelection = () => { $("delete-selected").disabled = selected.size === 0; };
  let shown = new Set();

  const reload = throttle(async () => {
    const data = await act("list", () => api("GET", "/task?" + params.toString()));
    if (!data) return;
    const before = shown;
    shown = new Set(data.tasks.map((t) => t.id));
    $("task-rows").replaceChildren(...data.tasks.map((task) => el("tr",
      { "data-task-id": task.id, "data-status": STATUS[task.status], class: before.has(task.id) || !before.size ? "" : "row-flash" },
      el("td", { class: "needs-operator" }, el("input", { type: "checkbox", "aria-label": `select #${task.id}`, checked: selected.has(task.id),
        onchange: (e) => { e.target.checked ? selected.add(task.id) : selected.delete(task.id); updateSelection(); } })),
      el("td", {}, taskLink(task.id)), el("td", {}, deviceLink(task.serial)), el("td", {}, task.script_name),
      el("td", { class: "when" }, badge(task.status), task.progress != null && task.status === 1 ? ` ${task.progress}%` : ""),
      el("td", { class: "reason" }, task.reason || ""), el("td", { class: "num" }, task.retry_count),
      el("td", { class: "when" }, when(task.created_at)), el("td", { class: "needs-operator actions" }, taskActions(task, reload)))));
    const pages = Math.max(1, Math.ceil(data.total / data.page_size));
    $("page-info").textContent = `page ${data.page} of ${pages} · ${data.total} task${data.total === 1 ? "" : "s"}`;
    const link = (id, target, enabled) => {
      const next = new URLSearchParams(params);
      next.set("page", target);
      $(id).href = "?" + next.toString();
      $(id).setAttribute("aria-disabled", String(!enabled));
    };
    link("prev", page - 1, page > 1);
    link("next", page + 1, page < pages);
  }, 400);

  $("select-all").addEventListener("change", (e) => {
    for (const box of document.querySelectorAll("#task-rows input[type=checkbox]")) {
      box.checked = e.target.checked;
      const id = parseInt(box.closest("tr").dataset.taskId, 10);
      e.target.checked ? selected.add(id) : selected.delete(id);
    }
    updateSelection();
  });
  $("delete-selected").addEventListener("click", async () => {
    const ids = [...selected];
    if (!ids.length || !confirm(`Delete ${ids.length} task(s)? Running ones are stopped first.`)) return;
    const result = await act("batch delete", () => api("DELETE", "/task/batch", { task_ids: ids }));
    if (result) { selected.clear(); updateSelection(); reload(); }
  });
  $("retry-all").addEventListener("click", async () => {
    if (!confirm("Retry every failed task?")) return;
    const result = await act("retry all", () => api("POST", "/task/retry-all"));
    if (result) { notify(""); reload(); }
  });
  setupCreate();
  // Any task event may move a row in or out of this filtered page: re-read the page,
  // at most a few times a second however busy the fleet is.
  followLog({ type: "task." }, () => reload(), { onOpen: reload });
}

// The create form: the same body a script would POST to /task; the gateway's 400
// names the field when something is wrong, and the new rows arrive by the stream.
function setupCreate() {
  const form = $("create-form");
  api("GET", "/script").then((scripts) => {
    form.script_name.replaceChildren(...scripts.map((spec) => el("option", {}, spec.name)));
  }).catch(() => null);
  const words = (text) => text.split(/[\s,]+/).filter(Boolean);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let config;
    try {
      config = JSON.parse(form.script_config.value || "{}");
    } catch (err) {
      notify(`script_config: not JSON (${err.message})`);
      return;
    }
    const body = { script_name: form.script_name.value, script_config: config,
      min_interval: Number(form.min_interval.value || 0), max_interval: Number(form.max_interval.value || 0) };
    const serials = words(form.serials.value);
    const usernames = words(form.usernames.value);
    if (serials.length) body.serials = serials;
    if (usernames.length) body.usernames = usernames;
    if (form.start_time.value.trim()) body.start_time = form.start_time.value.trim();
    const created = await act("create", () => api("POST", "/task", body));
    if (created) $("created").textContent = `created ${created.created_count} task(s): ${created.task_ids.join(", ")}`;
  });
}

// ---------------------------------------------------------------- one task
// Failure evidence from GET /task/{id}/artifacts: a list (or {artifacts: [...]}) of
// {name, file, dispatch_id, content_type, size, url}; images are fetched with the key
// and shown, anything else is a download link. A gateway without the endpoint (404) or
// with nothing kept hides the section.
async function showArtifacts(taskId) {
  const section = $("artifacts");
  let response;
  try {
    response = await fetch(`/api/v1/task/${taskId}/artifacts`, { headers: headers() });
  } catch {
    section.hidden = true;
    return;
  }
  if (!response.ok) { section.hidden = true; return; }
  let data;
  try { data = (await response.json()).data; } catch { section.hidden = true; return; }
  const items = Array.isArray(data) ? data : (data && (data.artifacts || data.items)) || [];
  if (!items.length) { section.hidden = true; return; }
  const nodes = await Promise.all(items.map(async (item) => {
    const name = item.file || (item.name || "artifact").split("/").pop();
    const label = item.dispatch_id ? `${name} (run ${item.dispatch_id.slice(0, 8)})` : name;
    const url = item.url || `/api/v1/task/${taskId}/artifacts/${encodeURIComponent(name)}`;
    const type = item.content_type || "";
    const blob = await fetch(url, { headers: headers() }).then((r) => (r.ok ? r.blob() : null)).catch(() => null);
    if (!blob) return el("div", {}, `${label} (not readable)`);
    const href = URL.createObjectURL(blob);
    if (type.startsWith("image/") || /\.png$|\.jpe?g$/i.test(name) || type === "screenshot") {
      return el("figure", {}, el("img", { src: href, alt: name }), el("figcaption", {}, label));
    }
    return el("div", {}, el("a", { href, download: name }, label), ` ${item.size ?? blob.size} bytes`);
  }));
  $("artifact-list").replaceChildren(...nodes);
  section.hidden = false;
}

async function task() {
  const id = parseInt(document.body.dataset.taskId, 10);
  const seen = new Map();
  let screenshot = null;
  let evidenceFor = null; // the failure whose evidence is on the page

  const renderTimeline = () => {
    const rows = [...seen.values()].sort((a, b) => a.position - b.position);
    $("timeline").replaceChildren(...rows.map((e) => el("tr", { "data-type": e.type },
      el("td", { class: "num" }, e.version), el("td", {}, when(e.recorded_at)), el("td", {}, e.type),
      el("td", { class: "actor" }, actorOf(e)), el("td", {}, why(e.type, e.data || {})))));
    for (const e of rows) if (e.type === "task.failed" && e.data.screenshot) screenshot = e.data.screenshot;
  };
  const refresh = throttle(async () => {
    let t;
    try {
      t = await api("GET", `/task/${id}`);
    } catch (err) {
      notify(err.status === 404 ? `task ${id} does not exist (or was deleted)` : err.message);
      return;
    }
    const rows = [["status", badge(t.status)], ["serial", deviceLink(t.serial)], ["username", t.username],
      ["script", t.script_name], ["source", t.source], ["agent", t.agent_id], ["retries", t.retry_count],
      ["progress", t.status === 1 && t.progress != null ? `${t.progress}%` : null], ["interval", `${t.min_interval}–${t.max_interval} min`],
      ["start time", t.start_time], ["created", when(t.created_at)], ["due", when(t.due_at)],
      ["started", when(t.started_at)], ["finished", when(t.finished_at)]];
    $("task-summary").replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
    $("task-config").textContent = JSON.stringify(t.script_config, null, 2);
    const reason = $("task-reason");
    reason.hidden = !t.reason;
    reason.textContent = t.status === 3 ? `Failed: ${t.reason || ""}` : t.reason || "";
    if (t.status === 3 && screenshot) reason.textContent += `\nScreenshot kept on the agent's host: ${screenshot}`;
    $("task-stop").hidden = !(t.status === 0 || t.status === 1);
    $("task-retry").hidden = t.status !== 3;
    if (t.status === 3 && evidenceFor !== t.finished_at) {
      evidenceFor = t.finished_at;
      showArtifacts(id);
    } else if (t.status !== 3) {
      evidenceFor = null;
      $("artifacts").hidden = true;
    }
  }, 300);
  const add = (e) => { seen.set(e.position, e); };

  $("task-stop").addEventListener("click", () => act("stop", () => api("POST", `/task/${id}/stop`)));
  $("task-retry").addEventListener("click", () => act("retry", () => api("POST", `/task/${id}/retry`)));
  $("task-delete").addEventListener("click", async () => {
    if (!confirm(`Delete task #${id}? A running task is stopped first.`)) return;
    if (await act("delete", () => api("DELETE", `/task/${id}`)) !== undefined) location.href = "/console/tasks";
  });
  // Stream first, then the history: an event landing in between is in one or the
  // other, and the log position merges them.
  followLog({ task_id: id }, (envelope) => { add(envelope); renderTimeline(); refresh(); });
  const history = await act("history", () => api("GET", `/task/${id}/events`));
  for (const e of history || []) add(e);
  renderTimeline();
  refresh();
}

// ---------------------------------------------------------------- devices
const lastErrors = new Map();

// The newest failure of each phone among the 100 newest failed tasks (one request,
// however many phones fail at once).
async function loadLastErrors() {
  const data = await api("GET", "/task?status=3&page_size=100");
  const newest = new Map();
  for (const t of data.tasks) if (!newest.has(t.serial)) newest.set(t.serial, { id: t.id, reason: t.reason });
  for (const [serial, error] of newest) lastErrors.set(serial, error);
}

function deviceCard(d) {
  const error = lastErrors.get(d.serial);
  const state = !d.online ? "offline" : d.busy ? "busy" : "online";
  return el("div", { class: `device ${d.online ? "online" : ""} ${d.busy ? "busy" : ""}`, "data-serial": d.serial, "data-state": state },
    el("div", { class: "serial" }, deviceLink(d.serial), " ", el("span", { class: `badge ${state}` }, state)),
    el("div", { class: "meta" }, [d.model, d.android_version ? `Android ${d.android_version}` : null,
      d.battery != null ? `battery ${d.battery}%` : null].filter(Boolean).join(" · ") || "—"),
    d.busy && d.current_task_id ? el("div", {}, "running ", taskLink(d.current_task_id)) : null,
    error ? el("div", { class: "error" }, "last error ", taskLink(error.id), `: ${error.reason || ""}`) : null);
}

async function devices() {
  const render = throttle(() => {
    const hosts = fleet.byHost();
    $("device-count").textContent = `${fleet.devices.size} device(s) on ${hosts.size} host(s)`;
    $("device-hosts").replaceChildren(...[...hosts].map(([host, list]) => el("section", { class: "hosts", "data-host": host },
      el("h2", {}, host, el("span", { class: "small" }, ` ${list.filter((d) => d.online).length} online · ${list.filter((d) => d.busy).length} busy`)),
      el("div", { class: "devices" }, list.sort((a, b) => a.serial.localeCompare(b.serial, undefined, { numeric: true })).map(deviceCard)))));
  }, 250);
  const reloadErrors = throttle(() => loadLastErrors().then(render).catch(() => null), 1000);
  fleet.listeners.push(render);
  followLog({}, (envelope) => {
    if (envelope.type === "task.failed" || envelope.type === "task.stopped") reloadErrors();
    fleet.onEvent(envelope);
    render();
  });
  fleet.followHeartbeats();
  await act("failed tasks", loadLastErrors);
  await act("devices", () => fleet.load());
}

async function device() {
  const serial = document.body.dataset.serial;
  const render = () => {
    const d = fleet.devices.get(serial);
    if (!d) { $("device-summary").replaceChildren(el("dt", {}, "state"), el("dd", {}, "unknown device")); return; }
    const rows = [["host", d.host], ["agent", d.agent_id], ["model", d.model], ["android", d.android_version],
      ["battery", d.battery != null ? `${d.battery}%` : null], ["state", !d.online ? "offline" : d.busy ? "busy" : "online"],
      ["running", d.busy && d.current_task_id ? taskLink(d.current_task_id) : null], ["last seen", when(d.last_seen)]];
    $("device-summary").replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
  };
  const reloadTasks = throttle(async () => {
    const data = await act("tasks", () => api("GET", `/task?serial=${encodeURIComponent(serial)}&page_size=20`));
    if (!data) return;
    $("device-tasks").replaceChildren(...data.tasks.map((t) => el("tr", { "data-task-id": t.id },
      el("td", {}, taskLink(t.id)), el("td", {}, t.script_name), el("td", {}, badge(t.status)),
      el("td", {}, t.reason || ""), el("td", {}, when(t.created_at)))));
  }, 400);
  fleet.listeners.push(render);
  followLog({ serial }, (envelope) => { fleet.onEvent(envelope); reloadTasks(); }, { onOpen: reloadTasks });
  fleet.followHeartbeats();
  await act("devices", () => fleet.load());
}

// ---------------------------------------------------------------- event tail
async function eventTail() {
  const params = new URLSearchParams(location.search);
  const query = {};
  for (const name of ["task_id", "serial", "type"]) if (params.get(name)) query[name] = params.get(name);
  const since = params.get("since");
  let paused = false;
  const held = [];
  const MAX_ROWS = 1000;
  const body = $("event-rows");
  const show = (e, id) => {
    const data = e.data || {};
    body.prepend(el("tr", { "data-id": id, "data-type": e.type }, el("td", { class: "num" }, id), el("td", {}, when(e.recorded_at)),
      el("td", {}, e.type), el("td", {}, data.task_id ? taskLink(data.task_id) : ""), el("td", {}, deviceLink(data.serial)),
      el("td", {}, actorOf(e)), el("td", {}, why(e.type, data))));
    while (body.children.length > MAX_ROWS) body.lastChild.remove();
  };
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? `Resume (${held.length} held)` : "Pause";
    if (!paused) { for (const [e, id] of held.splice(0)) show(e, id); }
  });
  followLog(query, (envelope, id) => {
    $("last-id").textContent = `last event id ${id}`;
    const link = $("resume-link");
    const resume = new URLSearchParams({ ...query, since: id });
    link.href = "?" + resume.toString();
    link.hidden = false;
    if (paused) { held.push([envelope, id]); $("pause").textContent = `Resume (${held.length} held)`; } else show(envelope, id);
  }, { lastId: since && /^\d+$/.test(since) ? since : null });
}

// ---------------------------------------------------------------- start
const PAGES = { overview, tasks, task, devices, device, events: eventTail };

async function boot() {
  setupKey();
  const page = PAGES[document.body.dataset.page];
  if (!page) return;
  let me;
  try {
    me = await api("GET", "/whoami");
  } catch (err) {
    if (err.status !== 401) { setLive("error", "refused"); notify(err.message); }
    return;
  }
  document.body.dataset.role = me.role;
  $("who").textContent = me.keys_required ? `${me.actor} · ${me.role}` : "open loopback gateway";
  $("forget-key").hidden = !apiKey();
  await page();
}

window.addEventListener("beforeunload", () => { for (const s of streams) s.close(); });
document.addEventListener("DOMContentLoaded", boot);
