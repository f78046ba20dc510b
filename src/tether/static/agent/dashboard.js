// The agent's local dashboard: one uPlot chart per chart id, refreshed every
// second from /api/v1/data (rows come newest first, uPlot wants oldest first).
(function () {
  "use strict";
  const WINDOW = 300;
  const COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6",
                  "#dd4477", "#66aa00", "#b82e2e", "#316395"];
  const charts = new Map();
  let family = "system";

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  function makeChart(c) {
    const box = el("section", { class: "chart", "data-chart": c.id, "data-points": "0", "data-last": "0" });
    const h = el("h2", {}, c.title + " ");
    h.appendChild(el("small", {}, c.id + " (" + c.units + ")"));
    box.appendChild(h);
    const target = el("div");
    box.appendChild(target);
    document.getElementById("charts").appendChild(box);
    const dims = Object.values(c.dimensions).map((d) => d.name);
    const opts = {
      width: Math.max(300, box.clientWidth - 16), height: 180,
      scales: { x: { time: true } },
      series: [{}].concat(dims.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 1 }))),
      axes: [{}, { size: 60 }],
    };
    const empty = [[]].concat(dims.map(() => []));
    return { box, plot: new uPlot(opts, empty, target), def: c };
  }

  async function refresh(entry) {
    const id = entry.def.id;
    const res = await getJSON("/api/v1/data?chart=" + encodeURIComponent(id) +
                              "&after=-" + WINDOW + "&points=" + WINDOW + "&format=json");
    const rows = res.result.data.slice().reverse();
    const cols = res.result.labels.map((_, i) => rows.map((r) => r[i]));
    entry.plot.setData(cols);
    entry.box.dataset.points = String(rows.length);
    entry.box.dataset.last = String(res.last_entry);
  }

  function showFamily(all) {
    const nav = document.getElementById("families");
    nav.textContent = "";
    for (const f of Object.keys(all).sort()) {
      const b = el("button", { type: "button", class: f === family ? "on" : "" }, f);
      b.onclick = () => { family = f; build(); };
      nav.appendChild(b);
    }
  }

  let defs = {};
  async function build() {
    const info = await getJSON("/api/v1/charts");
    defs = info.charts;
    document.getElementById("hostname").textContent = "— " + info.hostname;
    const groups = {};
    for (const c of Object.values(defs)) (groups[c.type] = groups[c.type] || []).push(c);
    if (!groups[family]) family = Object.keys(groups)[0];
    showFamily(groups);
    for (const e of charts.values()) { e.plot.destroy(); e.box.remove(); }
    charts.clear();
    for (const c of groups[family] || []) charts.set(c.id, makeChart(c));
    await tick();
  }

  async function status() {
    const i = await getJSON("/api/v1/info");
    const a = await getJSON("/api/v1/alarms");
    const active = Object.values(a.alarms);
    const parts = [
      "v" + i.version, i["metrics-count"] + " metrics",
      "cloud " + (i["cloud-enabled"] ? "enabled" : "disabled"),
      i["agent-claimed"] ? "claimed" : "not claimed",
      "link " + (i["aclk-available"] ? "connected" : "not connected"),
      active.length ? active.length + " active alert(s)" : "no active alerts",
    ];
    document.getElementById("status").textContent = parts.join(" · ");
    for (const e of charts.values()) e.box.className = "chart";
    for (const al of active) {
      const e = charts.get(al.chart);
      if (e) e.box.className = "chart alert-" + al.status;
    }
  }

  let ticks = 0;
  async function tick() {
    try {
      await Promise.all([...charts.values()].map(refresh));
      if (ticks++ % 5 === 0) await status();
    } catch (err) {
      const s = document.getElementById("status");
      s.textContent = "";
      s.appendChild(el("span", { class: "bad" }, "agent unreachable: " + err.message));
    }
  }

  build().catch((err) => { document.getElementById("status").textContent = String(err); });
  setInterval(tick, 1000);
})();
