// The dspy-actors console: renders the sections the server pushes over server-sent events.
// Every value is put on the page as text (textContent), never as HTML.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const views = {};
let lastTree = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function table(headers, rows) {
  return el("table", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h))),
    ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))));
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : typeof x === "number" ? +x.toFixed(digits) : x);
const ms = (s) => (s === null || s === undefined ? "–" : (s * 1000).toFixed(1) + " ms");
const kv = (o) => Object.entries(o || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "–";

function nodeKey(path, node) { return path + "/" + node.id; }

function flatTree(node, path, out) {
  const key = nodeKey(path, node);
  out[key] = `${node.state}|${node.restart_count}|${node.last_exit}`;
  for (const c of node.children || []) flatTree(c, key, out);
  return out;
}

function renderNode(node, path, before) {
  const key = nodeKey(path, node);
  const label = el("span", { class: "node", "data-node": key },
    node.id + " ", el("span", { class: "state-" + node.state }, node.state));
  if (node.restart_count) label.append(` restarts=${node.restart_count}`);
  if (node.last_exit) label.append(` last exit: ${node.last_exit}`);
  const now = `${node.state}|${node.restart_count}|${node.last_exit}`;
  const li = el("li", {}, label);
  if (before && before[key] !== undefined && before[key] !== now) li.classList.add("flash");
  if (node.children && node.children.length) {
    li.append(el("ul", { class: "tree" }, ...node.children.map((c) => renderNode(c, key, before))));
  }
  return li;
}

views.tree = (tree) => {
  const before = lastTree;
  lastTree = flatTree(tree, "", {});
  return el("ul", { class: "tree", id: "tree-root" }, renderNode(tree, "", before));
};

views.programs = (programs) => table(
  ["program", "version", "calls", "calls/s", "p50", "p99", "in flight", "errors", "tokens in/out", "cost"],
  programs.map((p) => [p.name + (p.kind === "pipeline" ? " (pipeline)" : ""), "v" + p.version, p.calls,
    fmt(p.calls_per_s, 2), ms(p.p50_s), ms(p.p99_s), p.in_flight, kv(p.errors),
    `${p.prompt_tokens}/${p.completion_tokens}`, p.cost_usd === null ? "–" : "$" + fmt(p.cost_usd, 4)]));

views.deployments = (deps) => table(
  ["deployment", "breaker", "in flight", "pool queue", "requests", "errors", "retries", "rate limit", "transitions"],
  deps.map((d) => [d.deployment + (d.fallback ? " (fallback)" : ""),
    el("span", { class: "state-" + d.breaker.state }, d.breaker.state), d.in_flight, d.pool_queue,
    d.requests, kv(d.errors), fmt(d.retries),
    d.rate_limit ? `${fmt(d.rate_limit.requests_per_second)}/s, wait ${fmt(d.rate_limit.wait_s)} s` : "–",
    d.transitions.map((t) => `${t.from}→${t.to}`).join(" ") || "–"]));

function plot(scores) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "220"); svg.setAttribute("height", "60");
  svg.setAttribute("class", "score-plot");
  if (scores.length) {
    const xs = scores.map((s) => s[0]), ys = scores.map((s) => s[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    const y0 = Math.min(...ys, 0), y1 = Math.max(...ys, y0 + 1e-9);
    const pts = scores.map(([x, y]) => `${(5 + 210 * (x - x0) / (x1 - x0)).toFixed(1)},${(55 - 50 * (y - y0) / (y1 - y0)).toFixed(1)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", "#264"); line.setAttribute("stroke-width", "2");
    svg.append(line);
  }
  return svg;
}

views.runs = (runs) => table(["run", "state", "progress", "best score", "scores", ""],
  runs.map((r) => [r.run_id + ` (${r.kind})`, el("span", { class: "state-" + r.state }, r.state),
    `${r.completed}${r.total ? " / " + r.total : ""} ${r.message}`, fmt(r.best_score), plot(r.scores),
    r.state === "running" ? el("button", { onclick: () => act(`/api/runs/${r.run_id}/cancel`) }, "cancel") : ""]));

views.dead_letters = (letters) => letters.length ? table(["id", "program", "module", "error", "attempts", ""],
  letters.map((d) => [d.id, d.program, d.module_path, `${d.exception_type}: ${d.message}`, d.attempts,
    el("span", {}, el("button", { onclick: () => inspect(d.id), "data-inspect": d.id }, "inspect"),
      el("button", { onclick: () => act(`/api/dead_letters/${d.id}/replay`), "data-replay": d.id }, "replay"),
      el("button", { onclick: () => act(`/api/dead_letters/${d.id}/discard`), "data-discard": d.id }, "discard"))]))
  : el("p", { id: "no-dead-letters" }, "none");

views.activity = (entries) => {
  const list = document.getElementById("activity");
  list.replaceChildren(...entries.slice().reverse().map((e) =>
    el("li", { class: "activity-" + e.kind }, `${new Date(e.at * 1000).toLocaleTimeString()} ${e.text}`)));
  return null;
};

function show(name, data) {
  const view = views[name];
  if (!view) return;
  const node = view(data);
  if (node) document.getElementById(name).replaceChildren(node);
}

async function inspect(id) {
  const r = await fetch(`/api/dead_letters/${encodeURIComponent(id)}`);
  const box = document.getElementById("letter");
  if (!r.ok) { box.replaceChildren(el("p", {}, `cannot inspect ${id}: ${r.status}`)); return; }
  const d = await r.json();
  box.replaceChildren(el("h3", {}, `dead letter ${d.id}`),
    el("p", {}, `${d.program} · ${d.module_path} · ${d.exception_type} · ${d.attempts} attempts`),
    el("pre", { class: "inputs" }, JSON.stringify(d.inputs, null, 2)),
    el("pre", { class: "traceback" }, d.traceback));
}

async function act(url) {
  const r = await fetch(url, { method: "POST", headers: { "X-CSRF-Token": csrf,
    "X-Console-User": document.getElementById("operator").value } });
  const box = document.getElementById("letter");
  let text = `${r.status}`;
  try { const body = await r.json(); text = body.text || body.error || text; } catch (e) { /* not JSON */ }
  box.replaceChildren(el("p", { id: "action-result" }, text));
}

function connect() {
  const status = document.getElementById("status");
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (m) => {
    const all = JSON.parse(m.data);
    for (const [name, data] of Object.entries(all)) show(name, data);
    status.textContent = "live"; status.className = "status live";
    document.body.dataset.ready = "1";
  });
  source.addEventListener("section", (m) => { const s = JSON.parse(m.data); show(s.name, s.data); });
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status down"; };
}

connect();
