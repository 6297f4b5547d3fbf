// The meshctl console: plain JavaScript over the read-only JSON API of `meshctl dashboard`.
// Views by URL hash: #/graph, #/service/NAME, #/config, #/explain. Live views refresh
// every REFRESH_MS without reloading the page.
"use strict";
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const pct = (v) => v == null ? "–" : (v * 100).toFixed(1) + "%";
const num = (v, d) => v == null ? "–" : Number(v).toFixed(d);

async function api(path) {
  const r = await fetch(path, {cache: "no-store"});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.status);
  return body;
}

function route() {
  const h = location.hash.replace(/^#\//, "") || "graph";
  const [view, ...rest] = h.split("/");
  return {view, arg: decodeURIComponent(rest.join("/"))};
}

let timer = null;
async function show() {
  clearTimeout(timer);
  const {view, arg} = route();
  for (const n of ["graph", "config", "explain"]) {
    $("nav-" + n).className = n === view ? "on" : "";
  }
  try {
    if (view === "graph") await graph();
    else if (view === "service") await service(arg);
    else if (view === "config") await config();
    else if (view === "explain") { explainForm(); return; }
    $("meta").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("meta").textContent = "error: " + e.message;
  }
  timer = setTimeout(show, REFRESH_MS);
}
window.addEventListener("hashchange", show);

// ---- graph ----
function layout(nodes, edges) {
  const depth = {};
  nodes.forEach((n) => (depth[n.id] = 0));
  for (let i = 0; i < nodes.length; i++) {
    for (const e of edges) {
      if (e.source !== e.target && depth[e.target] <= depth[e.source]) depth[e.target] = depth[e.source] + 1;
    }
  }
  const cols = {};
  const pos = {};
  for (const n of nodes) {
    const d = Math.min(depth[n.id], nodes.length);
    cols[d] = (cols[d] || 0) + 1;
    pos[n.id] = {x: 40 + d * 380, y: 40 + (cols[d] - 1) * 130};
  }
  return pos;
}

async function graph() {
  const g = await api("/api/graph");
  const pos = layout(g.nodes, g.edges);
  const W = 200, H = 74;
  const w = Math.max(640, ...Object.values(pos).map((p) => p.x + W + 40));
  const h = Math.max(240, ...Object.values(pos).map((p) => p.y + H + 40));
  let s = `<svg id="graph" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#667"/></marker></defs>`;
  for (const e of g.edges) {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const line1 = `${num(e.rps, 1)} rps · ${pct(e.successRate)} ok`;
    const line2 = `p99 ${num(e.p99Ms, 1)}ms · ${e.mtls}`;
    s += `<g data-edge="${esc(e.source)}->${esc(e.target)}" data-rps="${e.rps}" data-mtls="${esc(e.mtls)}" data-health="${esc(e.health)}">
<path class="edge ${e.health} ${e.mtls === "plaintext" ? "plaintext" : ""}" d="M${x1},${y1} C${x1 + 60},${y1} ${x2 - 60},${y2} ${x2},${y2}" marker-end="url(#arrow)"/>
<text class="elabel" x="${(x1 + x2) / 2}" y="${(y1 + y2) / 2 - 22}" text-anchor="middle">${esc(line1)}</text>
<text class="elabel" x="${(x1 + x2) / 2}" y="${(y1 + y2) / 2 - 8}" text-anchor="middle">${esc(line2)}</text></g>`;
  }
  for (const n of g.nodes) {
    const p = pos[n.id];
    const versions = n.versions.map((v) => `<tspan data-version="${esc(v.version)}">${esc(v.version || "–")}×${v.replicas}</tspan>`).join(" ");
    s += `<g class="node" data-node="${esc(n.id)}" onclick="location.hash='#/service/${encodeURIComponent(n.id)}'">
<rect x="${p.x}" y="${p.y}" width="${W}" height="${H}"/>
<text class="name" x="${p.x + 10}" y="${p.y + 22}">${esc(n.id)}</text>
<text x="${p.x + 10}" y="${p.y + 42}">${versions}</text>
<text class="muted" x="${p.x + 10}" y="${p.y + 60}">${esc(n.kind)}${n.namespace ? " · " + esc(n.namespace) : ""}</text></g>`;
  }
  s += "</svg>";
  $("view").innerHTML = `<h2>Service graph</h2><p class="muted">Calls over the last ${num(g.windowSeconds, 0)} s, as the servers count them. Click a service.</p>` + s;
  if (!window.firstRenderMs) {
    // Since navigation start: the page, the script, the first API answer and the SVG.
    window.firstRenderMs = performance.now();
    document.body.dataset.firstRenderMs = window.firstRenderMs.toFixed(0);
  }
}

// ---- service ----
function table(head, rows) {
  if (!rows.length) return `<p class="muted">none</p>`;
  return `<table><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>${rows.join("")}</table>`;
}

async function service(name) {
  const s = await api("/api/service?name=" + encodeURIComponent(name));
  const eps = s.endpoints.map((e) => `<tr data-endpoint="${esc(e.workload)}/${e.instance}" data-ejected="${e.ejected}">
<td>${esc(e.workload)}/${e.instance}</td><td>${esc(e.version)}</td><td>${esc(e.subset)}</td><td>${esc(e.state)}</td>
<td>${esc(e.identity)}</td><td>${e.certNotAfter ? new Date(e.certNotAfter * 1000).toLocaleString() : "–"}</td>
<td class="${e.ejected ? "bad" : "ok"}">${e.ejected ? "EJECTED" : "in rotation"}</td></tr>`);
  const versions = [...new Set([...Object.keys(s.configuredWeights), ...Object.keys(s.liveSplit)])].sort();
  const split = versions.map((v) => {
    const c = s.configuredWeights[v], l = s.liveSplit[v];
    return `<tr data-version="${esc(v)}" data-configured="${c == null ? "" : c}" data-live="${l == null ? "" : l}">
<td>${esc(v)}</td><td><span class="bar cfg" style="width:${(c || 0) * 2}px"></span> ${c == null ? "–" : c + "%"}</td>
<td><span class="bar" style="width:${(l || 0) * 2}px"></span> ${l == null ? "–" : l + "%"}</td></tr>`;
  });
  const routes = s.routes.map((r) => `<tr><td>#${r.index} ${esc(r.name || "")}</td><td><code>${esc(r.matches ? JSON.stringify(r.match) : "every request")}</code></td>
<td>${r.destinations.map((d) => esc(d.subset != null ? `${d.subset}: ${d.weight}` : JSON.stringify(d))).join("<br>")}</td>
<td>${r.timeoutMs == null ? "–" : r.timeoutMs + "ms"}</td><td>${r.retries == null ? "–" : r.retries}</td></tr>`);
  const errors = s.errors.map((e) => `<tr data-flag="${esc(e.flag)}"><td>${esc(e.flag)}</td><td>${esc(e.code)}</td><td>${esc(e.reporter)}</td><td>${e.count}</td></tr>`);
  const denials = s.denials.map((d) => `<tr data-policy="${esc(d.policy)}"><td>${esc(d.policy === "none" ? "none (no ALLOW policy matched)" : d.policy)}</td><td>${esc(d.workload)}</td><td>${d.count}</td></tr>`);
  $("view").innerHTML = `<h2>${esc(s.name)} <span class="muted">${esc(s.host)} ports ${esc(s.ports.join(", "))}</span></h2>
<p>VirtualService <b>${esc(s.virtualService || "none (default route)")}</b> · DestinationRule <b>${esc(s.destinationRule || "none")}</b></p>
<h3>Split per version: configured vs live (last few seconds)</h3>${table(["version", "configured", "live"], split)}
<h3>Endpoints</h3>${table(["proxy", "version", "subset", "state", "identity", "certificate expires", "outlier detection"], eps)}
<h3>Routes</h3>${table(["rule", "match", "destinations", "timeout", "retries"], routes)}
<h3>Recent errors by response flag (last ${num(s.recentSeconds, 0)} s)</h3>${table(["flag", "code", "reporter", "requests"], errors)}
<h3>Recent authorization denials (last ${num(s.recentSeconds, 0)} s)</h3>${table(["policy", "denied at", "requests"], denials)}`;
}

// ---- config ----
async function config() {
  const c = await api("/api/config");
  if (c.controlPlane !== "running") {
    $("view").innerHTML = `<h2>Config</h2><p class="bad">Control plane ${esc(c.controlPlane)}</p>`;
    return;
  }
  const r = c.lastReload;
  const proxies = c.proxies.map((p) => {
    const nack = p.nacked != null && (p.acked == null || p.nacked > p.acked);
    return `<tr data-proxy="${esc(p.proxy)}"><td>${esc(p.proxy)}</td><td>${p.version}</td><td>${p.acked == null ? "–" : p.acked}</td>
<td class="${nack ? "bad" : "ok"}">${nack ? "NACK " + esc(p.nackError || "") : p.acked === p.version ? "ACK" : "pending"}</td><td>${p.connected ? "yes" : "no"}</td></tr>`;
  });
  $("view").innerHTML = `<h2>Config <span class="muted">revision <span id="revision">${c.revision}</span></span></h2>
<h3>Last reload: <span id="reload" class="${r.ok ? "ok" : "bad"}">${r.ok ? "applied" : "REFUSED (the last good config stays)"}</span> <span class="muted">${new Date(r.atUnixMs).toLocaleTimeString()}, revision ${r.revision}</span></h3>
${r.errors.length ? `<pre id="errors" class="bad">${esc(r.errors.join("\n"))}</pre>` : ""}
${r.findings && r.findings.length ? `<pre>${esc(r.findings.join("\n"))}</pre>` : ""}
<h3>Diff of the last change</h3><pre id="diff">${esc(r.diff.length ? r.diff.join("\n") : "no change")}</pre>
<h3>Proxies</h3>${table(["proxy", "version", "acked", "state", "connected"], proxies)}`;
}

// ---- explain ----
function explainForm() {
  if ($("explain-form")) return;
  $("view").innerHTML = `<h2>Explain a request</h2>
<form id="explain-form"><label>From service <input id="x-from" value="frontend"></label>
<label>Method <input id="x-method" value="GET" size="7"></label>
<label>URL <input id="x-url" value="http://backend:8080/" size="50"></label>
<label>Headers (one <code>name: value</code> per line)<br><textarea id="x-headers" rows="3" cols="50"></textarea></label>
<p><button type="submit">Explain</button></p></form><div id="verdict"></div><div id="explained"></div>`;
  $("explain-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams({from: $("x-from").value, method: $("x-method").value, url: $("x-url").value});
    for (const h of $("x-headers").value.split("\n")) if (h.trim()) q.append("header", h.trim());
    try {
      renderExplained(await api("/api/explain?" + q));
    } catch (e) {
      $("verdict").textContent = "error: " + e.message;
      $("explained").innerHTML = "";
    }
  });
}

function renderExplained(x) {
  $("verdict").textContent = x.verdict.summary;
  const r = x.route;
  let h = `<p>from <b>${esc(x.from.workload)}</b> (${esc(x.from.identity)})</p>`;
  if (x.destination) {
    h += `<p>destination <b>${esc(x.destination.host)}</b> port ${x.destination.port} (${esc(x.destination.protocol)})</p>
<p>route <b>${esc(r.decision)}</b> · VirtualService ${esc(r.virtualService || "none")} · DestinationRule ${esc(r.destinationRule || "none")}</p>
<p>${r.rule == null ? "" : `rule #${r.rule} ${esc(r.ruleName || "")}: ${r.matched ? "matched " + esc(JSON.stringify(r.matched)) : "no match block"}`}</p>
${r.skipped.map((s) => `<p class="muted">skipped ${esc(s)}</p>`).join("")}
<p>timeout ${r.timeoutMs == null ? "none" : r.timeoutMs + "ms"} · retries ${r.retries ? `${r.retries.attempts} on ${esc(r.retries.retryOn)}` : "none"}</p>`;
  }
  const rows = [];
  for (const b of x.backends) {
    for (const e of b.endpoints) {
      const a = e.authorization;
      rows.push(`<tr><td>${esc(b.subset || "all")} (${num(b.percent, 0)}%)</td><td>${esc(b.loadBalancer)}</td><td>${esc(e.workload)}</td>
<td>${esc(e.clientTls)} ${esc(e.expectedIdentity || "")}</td><td>${esc(e.peerAuthentication || "")}${e.connectionAccepted ? "" : " refuses"}</td>
<td class="${a && !a.allowed ? "bad" : "ok"}">${a ? (a.allowed ? "ALLOW" : "DENY") + ` (${esc(a.reason)}${a.policy ? ` by ${esc(a.policy)} rule ${a.rule}` : ""})` : "–"}</td></tr>`);
    }
  }
  h += table(["subset", "load balancer", "endpoint", "mTLS", "server", "authorization"], rows);
  $("explained").innerHTML = h;
}

show();
