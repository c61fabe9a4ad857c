// The p2pgrid dashboard: renders the snapshots the node streams (server-sent
// events) into plain HTML and SVG. No framework, no build step.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const seenFlows = new Set();
let firstRender = true;

const sat = (msat) => (msat / 1000).toLocaleString("en", { minimumFractionDigits: 3, maximumFractionDigits: 3 });
const pct = (r) => (r === null || r === undefined ? "–" : (100 * r).toFixed(1) + " %");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const time = (ms) => new Date(ms).toLocaleTimeString("en-GB");

function table(cols, rows, attrs) {
  const head = cols.map((c) => `<th class="${c[2] || ""}">${c[0]}</th>`).join("");
  const body = rows.map((r, i) => `<tr ${attrs ? attrs(r, i) : ""}>` +
    cols.map((c) => `<td class="${c[2] || ""}" data-col="${c[3] || ""}">${c[1](r)}</td>`).join("") + "</tr>").join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

// A bar: what is left of the allocation (green) and what was used (grey).
function leftBar(d) {
  const w = 120, total = Math.max(d.allocation_msat + d.received_msat, 1);
  const left = Math.max(0, Math.min(w, (w * d.left_msat) / total));
  return `<svg width="${w}" height="10" role="img" aria-label="left"><rect width="${w}" height="10" fill="#e1e4ea"/>` +
    `<rect width="${left.toFixed(1)}" height="10" fill="${d.overdraft_msat ? "#d9534f" : "#5cb85c"}"/></svg>`;
}

function renderSite(s) {
  const agreeing = s.peers.filter((p) => p.agrees).length;
  const agree = s.agree === null ? `<span class="muted">no peer synced with yet</span>`
    : `<span class="${s.agree ? "ok" : "warn"}">agrees with ${agreeing} of ${s.peers.length} peer replica(s)</span>` +
      ` <span class="muted">(as of their last sync)</span>`;
  const devices = table([
    ["device", (d) => `<b>${esc(d.name)}</b>`, "", "name"],
    ["class", (d) => esc(d.class), "txt", "class"],
    ["alloc sat", (d) => sat(d.allocation_msat), "", "allocation"],
    ["used Wh", (d) => d.energy_wh.toLocaleString("en"), "", "energy"],
    ["left sat", (d) => `<span data-msat="${d.left_msat}">${sat(d.left_msat)}</span>`, "", "left"],
    ["", leftBar, "", "bar"],
    ["received", (d) => `<span data-msat="${d.received_msat}">${sat(d.received_msat)}</span>`, "", "received"],
    ["given", (d) => `<span data-msat="${d.given_msat}">${sat(d.given_msat)}</span>`, "", "given"],
    ["bought Wh", (d) => d.bought_wh, "", "bought"],
    ["sold Wh", (d) => d.sold_wh, "", "sold"],
    ["paid sat", (d) => `<span data-msat="${d.paid_msat}">${sat(d.paid_msat)}</span>`, "", "paid"],
  ], s.devices, (d) => `data-device="${esc(d.name)}" data-index="${d.index}"`);
  const flows = table([
    ["time", (f) => time(f.ts_ms), "txt"],
    ["p", (f) => f.period],
    ["kind", (f) => f.kind.replace(/_/g, " "), "txt"],
    ["from", (f) => esc(f.from), "txt"],
    ["to", (f) => esc(f.to), "txt"],
    ["sat", (f) => sat(f.msat)],
    ["Wh", (f) => f.wh || ""],
  ], s.flows, (f) => `data-flow="${f.id}" class="${!firstRender && !seenFlows.has(f.id) ? "new" : ""}"`);
  s.flows.forEach((f) => seenFlows.add(f.id));
  const kpis = table([
    ["period", (k) => k.period],
    ["allocated sat", (k) => sat(k.allocated_msat)],
    ["grid Wh", (k) => k.grid_wh.toLocaleString("en")],
    ["neighbours Wh", (k) => k.local_wh.toLocaleString("en")],
    ["self-sufficiency", (k) => pct(k.self_sufficiency)],
    ["moved devices", (k) => pct(k.moved_devices)],
    ["moved sites", (k) => pct(k.moved_sites)],
    ["invoiced sat", (k) => sat(k.invoiced_msat)],
    ["paid sat", (k) => sat(k.paid_msat)],
  ], s.indicators, (k) => `data-kpi-period="${k.period}"`);
  const invoices = table([
    ["p", (i) => i.period],
    ["device", (i) => esc(i.name), "txt"],
    ["sat", (i) => sat(i.amount_msat)],
    ["Wh", (i) => i.energy_wh],
    ["state", (i) => `<span class="${i.state === "paid" ? "ok" : i.state === "disputed" ? "bad" : "muted"}">${i.state}</span>`, "txt", "state"],
    ["hash", (i) => `<code>${i.payment_hash.slice(0, 12)}…</code>`, "txt"],
  ], s.invoices, (i) => `data-invoice="${i.payment_hash}"`);
  const curtailments = s.curtailments.length ? table([
    ["p", (c) => c.period],
    ["device", (c) => esc(c.name), "txt"],
    ["from", (c) => time(c.start_ms), "txt"],
    ["s", (c) => c.duration_s],
    ["max W", (c) => c.max_power_w],
  ], s.curtailments) : `<p class="muted">none</p>`;
  const findings = s.findings.length ? table([
    ["p", (f) => f.period],
    ["device", (f) => esc(f.name), "txt"],
    ["why", (f) => esc(f.reason), "reason"],
  ], s.findings) : `<p class="muted">none</p>`;
  return `<section class="site" data-site="${esc(s.site)}" data-period="${s.period}"
      data-digest="${s.digest}" data-entries="${s.entries}" data-agree="${s.agree}">
    <h2>${esc(s.site)} <span class="muted">period ${s.period} · ${s.entries} entries ·
      replica ${esc(s.replica)} · digest <code>${s.digest.slice(0, 16)}</code></span> · ${agree}</h2>
    <h3>Devices (period ${s.period})</h3><div class="scroll">${devices}</div>
    <h3>Per period</h3><div class="scroll">${kpis}</div>
    <p class="muted">Self-consumption: not in the log (a producer's output is logged only as it is sold).</p>
    <div class="grid">
      <div><h3>Shares and sales</h3><div class="feed">${flows}</div></div>
      <div><h3>Invoices (Lightning)</h3><div class="scroll">${invoices}</div>
        <h3>Inefficiencies</h3>${findings}</div>
      <div><h3>Curtailments</h3><div class="feed">${curtailments}</div></div>
    </div>
  </section>`;
}

function render(snap) {
  document.getElementById("node").textContent = "node " + snap.node;
  document.getElementById("updated").textContent = "updated " + time(snap.generated_ms);
  document.getElementById("sites").innerHTML = snap.sites.map(renderSite).join("");
  document.body.dataset.entries = snap.sites.reduce((n, s) => n + s.entries, 0);
  firstRender = false;
}

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("events" + q);
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.onopen = () => { live.textContent = "live"; live.className = "live"; };
  events.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
}

connect();
