// dispatch-runner's dashboard: no framework, no build step. The server pushes the board (server-sent
// events from the store's events); this file draws it, ticks the clocks between pushes, and sends
// actions to /dashboard/api/actions/<name>. Text from agents is only ever set as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const API = "/dashboard/api";
const LEGEND = [["running", "running"], ["succeeded", "succeeded"], ["failed", "failed / timed out"],
  ["rate_limited", "rate limited"], ["killed", "killed"], ["lost", "lost"]];
const PRIORITY = { critical: 0, high: 1, medium: 2, low: 3 };
const LOG_LINES_KEPT = 5000;
const QUEUE_PER_POOL = 50; // the board sends the head of each pool's queue (store/sql/board.py)

let skew = 0; // the server's clock minus this browser's, in seconds
let board = null;
let lanesBy = "pool";
let windowS = 3600; // the timeline shows the last hour, or zooms in on its end

const now = () => Date.now() / 1000 + skew;
const epoch = (t) => (t == null ? null : typeof t === "number" ? t : Date.parse(t) / 1000);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: the page's CSP allows no inline style attribute
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

function duration(s) {
  if (s == null || !isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}
const usd = (x) => (x == null ? "—" : `$${x < 1 ? x.toFixed(4) : x.toFixed(2)}`);
const tokens = (n) => (n == null ? "—" : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : `${n}`);
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

// a cell whose text the ticker keeps current: time since `since`, or left until `until`
const since = (t) => el("span", { "data-since": epoch(t), text: duration(now() - epoch(t)) });
const until = (t, prefix = "") => el("span", { "data-until": epoch(t), "data-prefix": prefix, text: prefix + duration(epoch(t) - now()) });

function tick() {
  for (const n of document.querySelectorAll("[data-since]")) n.textContent = duration(now() - Number(n.dataset.since));
  for (const n of document.querySelectorAll("[data-until]")) {
    const left = Number(n.dataset.until) - now();
    n.textContent = left > 0 ? n.dataset.prefix + duration(left) : "now";
  }
}

function showProblem(text) {
  const box = $("problem");
  box.hidden = !text;
  box.textContent = text || "";
}

// The key for actions: the sign-in redirect hands it over in the fragment, once; it is kept in
// this origin's localStorage (no other port or site reads it). The cookie alone only reads.
const KEY_STORE = "dispatch-runner-action-key";
function actionKey() {
  const given = new URLSearchParams(location.hash.slice(1)).get("key");
  if (given) {
    localStorage.setItem(KEY_STORE, given);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem(KEY_STORE) || "";
}
const ACTION_KEY = actionKey();

async function act(action, args = {}) {
  const response = await fetch(`${API}/actions/${action}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-dispatch-runner-action": ACTION_KEY },
    credentials: "same-origin",
    body: JSON.stringify(args),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    showProblem(`${action}: ${body.error || response.statusText}`);
    if (response.status === 403) { // no action key here (another browser profile, storage cleared)
      $("problem").append(" ", el("a", { href: `${location.pathname}?sign-in`, text: "Sign in again to act." }));
    }
    if (response.status === 401 || response.status === 403) await reloadIfSignedOut();
    return null;
  }
  showProblem(null);
  return body;
}

// a stream the server closed, or an action refused: if the token changed, show the sign-in page
async function reloadIfSignedOut() {
  const response = await fetch(`${API}/board`, { credentials: "same-origin" }).catch(() => null);
  if (response && response.status === 401) location.reload();
}

function killButton(workspace) {
  return el("button", {
    class: "danger kill", "data-workspace": workspace, text: "Kill", title: `Kill ${workspace}`,
    onclick: async (e) => {
      e.target.disabled = true;
      await act("kill", { workspace });
    },
  });
}

const link = (workspace) => el("a", { href: `/w/${encodeURIComponent(workspace)}`, text: workspace });
const stateCell = (state) => el("td", { class: `state s-${state}`, text: state });

function fillTable(table, head, rows, empty) {
  table.replaceChildren(
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { class: "empty", colspan: head.length, text: empty }))),
  );
}

// ---- the fleet page ---------------------------------------------------------------------------

function drawPools(pools) {
  const cards = Object.entries(pools).map(([name, p]) => {
    const limit = p.effective_limit ?? p.limit;
    const full = limit != null && p.running >= limit;
    const of = p.adaptive && p.limit != null && limit !== p.limit ? ` (of ${p.limit}, adaptive)` : p.adaptive ? " (adaptive)" : "";
    const lines = [el("div", { class: "line" }, `${p.queued} queued`, p.oldest_queued_at ? [", oldest ", since(p.oldest_queued_at)] : "")];
    if (p.backoff_until) lines.push(el("div", { class: "line warn" }, until(p.backoff_until, "backing off: ")));
    if (p.next_spawn_at && epoch(p.next_spawn_at) > now()) lines.push(el("div", { class: "line" }, until(p.next_spawn_at, "next start in ")));
    const used = p.usage_today || {};
    const daily = p.daily_limit != null ? ` · ${p.daily_used}/${p.daily_limit} starts today` : "";
    lines.push(el("div", { class: "line" }, `today: ${used.runs ?? 0} runs, ${tokens(used.tokens)} tokens, ${usd(used.usd)}${daily}`));
    if (p.allowance) {
      const parts = ["runs", "tokens", "usd"].filter((k) => p.allowance[k]).map((k) => `${k} ${p.allowance[k].used}/${p.allowance[k].limit}`);
      lines.push(el("div", { class: p.allowance.exhausted ? "line warn" : "line", text: `allowance: ${parts.join(", ")}${p.allowance.exhausted ? " — used up" : ""}` }));
    }
    const models = Object.entries(p.models || {}).map(([m, v]) => {
      const cap = v.effective_limit ?? v.limit;
      return el("div", {}, `${m}: ${v.running}/${cap ?? "∞"}`);
    });
    return el("div", { class: "pool", "data-pool": name },
      el("h3", {}, name, el("span", { class: "nums", text: `${p.running}/${limit ?? "∞"}${of}` })),
      el("div", { class: full ? "gauge full" : "gauge" },
        el("span", { style: `width:${limit ? Math.min(100, (100 * p.running) / limit) : p.running ? 100 : 0}%` })),
      lines, models.length ? el("div", { class: "models" }, models) : null);
  });
  $("pools").replaceChildren(...(cards.length ? cards : [el("p", { class: "count", text: "No pools yet." })]));
}

function packRows(runs) {
  // concurrent runs of a lane go on rows of their own, so the lane shows its concurrency
  const ends = [];
  for (const r of runs.sort((a, b) => a.start - b.start)) {
    let row = ends.findIndex((end) => end <= r.start);
    if (row < 0) row = ends.push(0) - 1;
    ends[row] = r.end;
    r.row = row;
  }
  return Math.max(1, ends.length);
}

function drawTimeline(b) {
  const box = $("timeline");
  const width = Math.max(600, box.clientWidth);
  const label = 130, right = 12, rowH = 9, gap = 3, pad = 8, axis = 20;
  const t1 = now(), t0 = t1 - Math.min(windowS, b.window_s);
  const x = (t) => label + ((Math.max(t, t0) - t0) / (t1 - t0)) * (width - label - right);
  const lanes = new Map();
  if (lanesBy === "pool") for (const name of Object.keys(b.pools)) lanes.set(name, []);
  for (const r of b.timeline) {
    if (r.ended_at != null && epoch(r.ended_at) < t0) continue; // before the window shown
    const key = (lanesBy === "pool" ? r.pool : r.host) || "(not started)";
    if (!lanes.has(key)) lanes.set(key, []);
    lanes.get(key).push({ ...r, start: epoch(r.started_at), end: r.ended_at == null ? t1 : epoch(r.ended_at) });
  }
  let y = axis;
  const g = svg("g");
  for (const [name, runs] of lanes) {
    const rows = packRows(runs);
    const h = rows * (rowH + gap) + pad;
    g.append(svg("rect", { class: "lane-bg", x: label, y, width: width - label - right, height: h - 2 }));
    g.append(svg("text", { x: 8, y: y + h / 2 + 4 }, name.length > 18 ? name.slice(0, 17) + "…" : name));
    for (const r of runs) {
      const outcome = r.ended_at == null ? "running" : r.outcome || "killed";
      const bar = svg("rect", {
        class: `bar f-${outcome}`, x: x(r.start), y: y + pad / 2 + r.row * (rowH + gap),
        width: Math.max(2, x(r.end) - x(r.start)), height: rowH, rx: 2,
        "data-workspace": r.workspace, "data-outcome": outcome,
      });
      bar.append(svg("title", {}, `${r.workspace} · run ${r.attempt} · ${outcome} · ${duration(r.end - r.start)}${r.host ? " · " + r.host : ""}`));
      bar.addEventListener("click", () => { location.href = `/w/${encodeURIComponent(r.workspace)}`; });
      g.append(bar);
    }
    y += h;
  }
  const grid = svg("g");
  const step = windowS <= 300 ? 60 : windowS <= 900 ? 180 : 600;
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    grid.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: axis - 4, y2: Math.max(y, axis + 10) }));
    if (x(t) < width - right - 60) grid.append(svg("text", { x: x(t) - 14, y: 12 }, clock(t)));
  }
  grid.append(svg("text", { x: width - right - 24, y: 12 }, "now"));
  const chart = svg("svg", { viewBox: `0 0 ${width} ${Math.max(y, axis + 10) + 4}`, height: Math.max(y, axis + 10) + 4, role: "img", "aria-label": "runs of the last hour" });
  chart.append(grid, g);
  box.replaceChildren(chart);
}

function drawLegend() {
  $("legend").replaceChildren(...LEGEND.map(([k, text]) => el("span", {}, el("i", { class: `f-${k}` }), text)));
}

function drawApprovals(approvals) {
  $("approvals-section").hidden = !approvals.length;
  $("approvals").replaceChildren(...approvals.map((a) => {
    const answer = (decision) => el("button", {
      class: decision === "allow" ? "allow" : "danger", text: decision === "allow" ? "Allow" : "Deny",
      "data-request": a.request,
      onclick: async (e) => { e.target.disabled = true; await act("approve", { request: a.request, decision }); },
    });
    return el("div", { class: "approval", "data-request": a.request },
      el("div", {}, link(a.workspace), ` (${a.agent}) asks to use `, el("b", { text: a.tool }), " · ", until(a.deadline, "denied in ")),
      el("code", { text: a.input }),
      el("div", { class: "buttons" }, answer("allow"), answer("deny")));
  }));
}

function drawRunning(running) {
  $("running-count").textContent = running.length ? `${running.length}` : "";
  fillTable($("running"), ["workspace", "agent", "host", "elapsed", "last output", "tokens", "cost", ""],
    running.map((r) => el("tr", { "data-workspace": r.workspace },
      el("td", {}, link(r.workspace), r.label ? el("div", { class: "count", text: r.label }) : null),
      el("td", { text: r.agent + (r.attempt > 1 ? ` (try ${r.attempt})` : "") }),
      el("td", { text: r.host || "—" }),
      el("td", { class: "num" }, r.phase === "reserved" ? "starting" : since(r.started_at), r.stalled ? " (stalled)" : ""),
      el("td", {
        class: "last",
        title: (r.last_line || "") + (r.progress_at ? ` (as ${r.host} sent it at ${new Date(r.progress_at * 1000).toLocaleTimeString()})` : ""),
        text: r.last_line || (r.host && r.host !== board.host ? `on ${r.host}` : ""),
      }),
      el("td", { class: "num", text: tokens(r.tokens) }),
      el("td", { class: "num", text: usd(r.cost_usd) }),
      el("td", {}, killButton(r.workspace)))),
    "Nothing is running.");
}

function drawQueue(queue) {
  const sorted = [...queue].sort((a, b) => PRIORITY[a.priority] - PRIORITY[b.priority] || a.pool.localeCompare(b.pool) || a.position - b.position);
  const perPool = {};
  for (const q of queue) perPool[q.pool] = (perPool[q.pool] || 0) + 1;
  const capped = Object.values(perPool).some((n) => n >= QUEUE_PER_POOL);
  $("queue-count").textContent = queue.length ? `${queue.length}${capped ? ` (the first ${QUEUE_PER_POOL} of a pool shown)` : ""}` : "";
  fillTable($("queue"), ["priority", "pool", "#", "workspace", "agent", "waiting", "eta", ""],
    sorted.map((q) => el("tr", { "data-workspace": q.workspace },
      el("td", { text: q.priority }),
      el("td", { text: q.pool }),
      el("td", { class: "num", text: q.position }),
      el("td", {}, link(q.workspace), q.label ? el("div", { class: "count", text: q.label }) : null),
      el("td", { text: q.route ? q.route.join(" → ") : q.agent }),
      el("td", { class: "num" }, since(q.created_at)),
      el("td", { class: "num", text: q.eta_s == null ? "unknown" : q.eta_s < 1 ? "now" : `~${duration(q.eta_s)}` }),
      el("td", {}, killButton(q.workspace)))),
    "The queue is empty.");
}

function drawLater(later) {
  $("later-section").hidden = !later.length;
  fillTable($("later"), ["workspace", "agent", "priority", "waits for", ""],
    later.map((q) => el("tr", { "data-workspace": q.workspace },
      el("td", {}, link(q.workspace)),
      el("td", { text: q.agent }),
      el("td", { text: q.priority }),
      el("td", {}, q.held ? "other work" : until(q.not_before, "starts in ")),
      el("td", {}, killButton(q.workspace)))),
    "");
}

function diffText(d) {
  if (!d) return "—";
  return `${d.files ?? 0} file${d.files === 1 ? "" : "s"} +${d.insertions ?? 0} −${d.deletions ?? 0}`;
}

function drawRecent(recent) {
  fillTable($("recent"), ["workspace", "outcome", "agent", "host", "duration", "cost", "diff", "ended", "summary"],
    recent.map((r) => el("tr", { "data-workspace": r.workspace },
      el("td", {}, link(r.workspace)),
      stateCell(r.state),
      el("td", { text: r.agent }),
      el("td", { text: r.host || "—" }),
      el("td", { class: "num", text: duration(r.duration_s) }),
      el("td", { class: "num", text: usd(r.cost_usd) }),
      el("td", { class: "num", text: diffText(r.diff) }),
      el("td", { class: "num" }, since(r.ended_at), " ago"),
      el("td", { class: "last", title: r.summary || r.ended_reason || "", text: r.summary || r.ended_reason || "" }))),
    "Nothing has ended yet.");
}

function drawFleet(b) {
  const c = b.counts || {};
  const hosts = b.hosts.length;
  $("summary").textContent = `${c.running || 0} running · ${c.queued || 0} queued · ${hosts} host${hosts === 1 ? "" : "s"} · config ${b.config?.source || "built-in"}`;
  drawPools(b.pools);
  drawTimeline(b);
  drawApprovals(b.approvals || []);
  drawRunning(b.running);
  drawQueue(b.queue);
  drawLater(b.later);
  drawRecent(b.recent);
  $("fleet").hidden = false;
}

// ---- the workspace page -----------------------------------------------------------------------

function pageWorkspace() {
  if (!location.pathname.startsWith("/w/")) return null;
  try {
    return decodeURIComponent(location.pathname.slice(3));
  } catch {
    return location.pathname.slice(3); // a malformed escape: the server says it knows no such workspace
  }
}
const workspaceId = pageWorkspace();

async function loadWorkspace() {
  const response = await fetch(`${API}/workspace/${encodeURIComponent(workspaceId)}`, { credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    showProblem(body.error || response.statusText);
    return;
  }
  drawWorkspace(body);
}

function drawWorkspace(w) {
  document.title = `${w.workspace || w.group} · dispatch-runner`;
  $("ws-title").replaceChildren(el("span", { text: (w.workspace || w.group) + " " }), el("span", { class: `state s-${w.state}`, text: w.state }));
  $("ws-kill").hidden = ["completed", "failed", "killed", "lost", "cancelled"].includes(w.state);
  const facts = [
    ["agent", w.agent], ["label", w.label], ["priority", w.priority], ["host", w.host], ["runs", w.runs],
    ["created", w.created_at], ["started", w.started_at], ["ended", w.ended_at], ["reason", w.ended_reason || w.reason],
    ["route", w.route && w.route.join(" → ")], ["cost", w.cost_usd != null ? usd(w.cost_usd) : null],
    ["tokens", w.usage ? tokens((w.usage.input_tokens || 0) + (w.usage.output_tokens || 0)) : null],
    ["diff", w.diff ? diffText(w.diff) + (w.diff.names ? `\n${w.diff.names.join("\n")}` : "") : null],
    ["parent", w.parent], ["path", w.path], ["summary", w.summary],
  ].filter(([, v]) => v != null && v !== "");
  $("ws-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }),
    k === "parent" ? el("dd", {}, link(v)) : el("dd", { text: String(v) })]));
  const children = w.children || w.members || [];
  $("ws-children-section").hidden = !children.length;
  fillTable($("ws-children"), ["workspace", "state", "agent"],
    children.map((c) => el("tr", {}, el("td", {}, link(c.workspace)), stateCell(c.state), el("td", { text: c.agent || "" }))), "");
  fillTable($("ws-events"), ["at", "event", "details"],
    (w.events || []).map((e) => el("tr", {},
      el("td", { class: "num", text: new Date(e.at * 1000).toLocaleTimeString() }),
      el("td", { text: e.type }),
      el("td", { class: "last", title: JSON.stringify(e.data), text: JSON.stringify(e.data) }))),
    "No events.");
}

let logSource = null;

function followLog() {
  if (logSource) logSource.close();
  const pre = $("ws-log");
  pre.replaceChildren();
  const stream = $("ws-stream").value;
  logSource = new EventSource(`${API}/logs/${encodeURIComponent(workspaceId)}?stream=${stream}`);
  const state = $("ws-log-state");
  state.textContent = "following";
  const append = (...nodes) => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(...nodes);
    for (let extra = pre.childNodes.length - LOG_LINES_KEPT; extra > 0; extra--) pre.firstChild.remove();
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };
  logSource.addEventListener("run", (e) => append(el("div", { class: "run-mark", text: `── run ${JSON.parse(e.data).run} ──` })));
  logSource.addEventListener("lines", (e) => {
    const lines = JSON.parse(e.data).lines.slice(-LOG_LINES_KEPT); // a node a line: the view keeps the last ones
    append(...lines.map((l) => document.createTextNode(l + "\n")));
  });
  logSource.addEventListener("end", (e) => {
    state.textContent = `ended: ${JSON.parse(e.data).state}`;
    logSource.close();
  });
  logSource.addEventListener("problem", (e) => {
    state.textContent = JSON.parse(e.data).error;
    logSource.close();
  });
  logSource.addEventListener("error", () => {
    if (logSource.readyState === EventSource.CLOSED) {
      state.textContent = "disconnected";
      reloadIfSignedOut();
    } else {
      state.textContent = "reconnecting…"; // the browser resumes where the log left off
    }
  });
  logSource.addEventListener("open", () => { state.textContent = "following"; });
}

// ---- live updates -----------------------------------------------------------------------------

let refetch = null;

function connect() {
  const live = $("live");
  const source = new EventSource(`${API}/stream`);
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
    if (source.readyState === EventSource.CLOSED) {
      reloadIfSignedOut();
      setTimeout(connect, 3000);
    }
  });
  source.addEventListener("board", (e) => {
    const next = JSON.parse(e.data);
    if (!next.pools) { // the server could not read the store: say so, keep what is shown
      showProblem(next.error || "the server sent no board");
      return;
    }
    const changed = !board || board.event_id !== next.event_id;
    board = next;
    skew = board.now - Date.now() / 1000;
    showProblem(board.config && board.config.error ? `agents.yaml: ${board.config.error}` : null);
    $("frozen").hidden = !board.frozen;
    $("freeze").textContent = board.frozen ? "Unfreeze" : "Freeze";
    if (!workspaceId) {
      drawFleet(board);
    } else if (changed) { // something happened in the store: the workspace's own view may have too
      clearTimeout(refetch);
      refetch = setTimeout(loadWorkspace, 100);
    }
  });
}

function start() {
  drawLegend();
  $("freeze").addEventListener("click", () => act(board && board.frozen ? "unfreeze" : "freeze"));
  $("poke").addEventListener("click", () => act("poke"));
  for (const radio of document.querySelectorAll("input[name=lanes]")) {
    radio.addEventListener("change", () => { lanesBy = radio.value; if (board) drawTimeline(board); });
  }
  for (const radio of document.querySelectorAll("input[name=window]")) {
    radio.addEventListener("change", () => { windowS = Number(radio.value); if (board) drawTimeline(board); });
  }
  if (workspaceId) {
    $("workspace").hidden = false;
    $("ws-kill").addEventListener("click", async (e) => {
      e.target.disabled = true;
      await act("kill", { workspace: workspaceId });
      e.target.disabled = false;
    });
    $("ws-stream").addEventListener("change", followLog);
    loadWorkspace();
    followLog();
  }
  connect();
  setInterval(tick, 1000);
  setInterval(() => { if (board && !workspaceId) drawTimeline(board); }, 10000);
  window.addEventListener("resize", () => { if (board && !workspaceId) drawTimeline(board); });
}

start();
