// The node page: charts drawn with uPlot from the agent's own API, fetched
// through the Cloud's relay every second (values are never stored by the
// Cloud), the node's alerts, and a clear notice while the node is unreachable.
(function () {
  "use strict";
  const view = document.getElementById("node-view");
  if (!view) return;
  const RELAY = view.dataset.relay;
  const RANGE = parseInt(view.dataset.range, 10) || 300;
  const POINTS = 300;
  // What the page shows, in order: chart contexts and how many charts of each.
  const WANTED = [["system.cpu", 1], ["system.load", 1], ["system.ram", 1], ["disk.io", 2], ["net.net", 2]];
  const COLORS = ["#2f6fdf", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6",
                  "#dd4477", "#66aa00", "#b82e2e"];
  const relayStatus = document.getElementById("relay-status");
  const charts = [];
  let reachable = document.getElementById("unreachable").hidden;
  let chartsLoaded = false;

  // Axis labels short enough for the gutter: 250000 -> "250k".
  function compact(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return +(v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return +(v / 1e3).toFixed(1) + "k";
    return +v.toFixed(2);
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  class RelayError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function relay(path) {
    const r = await fetch(RELAY + path, { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { const body = await r.json(); msg = body.errorMessage || body.error || msg; } catch (e) { /* not JSON */ }
      throw new RelayError(r.status, msg);
    }
    return r.json();
  }

  function showRelayProblem(err) {
    if (err.status === 503) {
      relayStatus.textContent = "The node is not connected to the Cloud right now; charts resume when it reconnects.";
    } else if (err.status === 504) {
      relayStatus.textContent = "The node did not answer in time (" + err.message + "); retrying.";
    } else {
      relayStatus.textContent = "Could not load data: " + err.message + "; retrying.";
    }
    relayStatus.classList.add("bad");
  }

  function width(box) { return Math.max(260, box.clientWidth - 8); }

  function makeChart(c) {
    const box = el("section", { class: "chart", "data-chart": c.id, "data-rows": "0" });
    const h = el("h3", {}, c.title + " ");
    h.appendChild(el("small", {}, c.id + " · " + c.units));
    box.appendChild(h);
    const target = el("div", { class: "plot" });
    box.appendChild(target);
    document.getElementById("charts").appendChild(box);
    const dims = Object.values(c.dimensions).map((d) => d.name);
    const opts = {
      width: width(box), height: 170,
      // The x axis always spans the chosen range, so "1 hour" looks like one
      // even while the agent has less history than that.
      scales: { x: { time: true, range: () => { const now = Date.now() / 1000; return [now - RANGE, now]; } } },
      legend: { live: false },
      series: [{}].concat(dims.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 1.5 }))),
      axes: [{}, { size: 55, values: (u, splits) => splits.map(compact) }],
    };
    const plot = new uPlot(opts, [[]].concat(dims.map(() => [])), target);
    return { id: c.id, box, plot };
  }

  async function loadCharts() {
    const info = await relay("/charts");
    const all = Object.values(info.charts);
    document.getElementById("charts").replaceChildren();
    charts.length = 0;
    for (const [context, max] of WANTED) {
      const found = all.filter((c) => (c.context || c.id) === context)
        .sort((a, b) => (a.priority - b.priority) || a.id.localeCompare(b.id));
      for (const c of found.slice(0, max)) charts.push(makeChart(c));
    }
    chartsLoaded = true;
  }

  async function refresh(entry) {
    const res = await relay("/data?chart=" + encodeURIComponent(entry.id) + "&after=-" + RANGE +
                            "&points=" + POINTS + "&format=json");
    const rows = res.result.data.slice().reverse();  // the agent sends newest first
    const cols = res.result.labels.map((_, i) => rows.map((r) => r[i]));
    entry.plot.setData(cols);
    entry.box.dataset.rows = String(rows.length);
  }

  async function tick() {
    try {
      if (!chartsLoaded) await loadCharts();
      await Promise.all(charts.map(refresh));
      relayStatus.textContent = "Live through the Cloud; updated " + new Date().toLocaleTimeString() + ".";
      relayStatus.classList.remove("bad");
    } catch (err) {
      showRelayProblem(err);
    }
  }

  async function alerts() {
    const body = document.getElementById("alerts-body");
    try {
      const res = await relay("/alarms?all=1");
      const list = Object.values(res.alarms).sort((a, b) => (b.active - a.active) || a.name.localeCompare(b.name));
      if (!list.length) {
        body.replaceChildren(el("tr", {}, ""));
        body.firstChild.appendChild(el("td", { colspan: "4", class: "muted" }, "No alerts configured on this node."));
        return;
      }
      body.replaceChildren(...list.map((a) => {
        const tr = el("tr", { class: "alert-" + String(a.status).toLowerCase() });
        tr.appendChild(el("td", { "data-label": "Alert" }, a.name));
        tr.appendChild(el("td", { "data-label": "Chart" }, a.chart));
        tr.appendChild(el("td", { "data-label": "Status" }, a.status));
        const v = a.value === null || a.value === undefined ? "—" : Number(a.value).toFixed(2) + " " + (a.units || "");
        tr.appendChild(el("td", { "data-label": "Value" }, v));
        return tr;
      }));
    } catch (err) {
      const tr = el("tr");
      tr.appendChild(el("td", { colspan: "4", class: "muted" }, "Alerts unavailable: " + err.message));
      body.replaceChildren(tr);
    }
  }

  async function state() {
    try {
      const r = await fetch(view.dataset.stateUrl, { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) return;
      const n = await r.json();
      const badge = document.getElementById("node-state");
      badge.className = "state state-" + n.state;
      badge.textContent = n.unreachable ? "unreachable" : "live";
      const since = document.getElementById("node-since");
      since.dataset.since = n.state_since;
      since.dataset.state = n.state;
      since.textContent = n.state + " since " + window.tetherAgo(n.state_since);
      const box = document.getElementById("unreachable");
      box.hidden = !n.unreachable;
      const why = n.state === "unseen" ? "it has been claimed but has never connected"
        : "it went offline " + window.tetherAgo(n.state_since);
      document.getElementById("unreachable-text").textContent = why + (n.state_cause ? " (" + n.state_cause + ")" : "");
      if (!reachable && !n.unreachable) { chartsLoaded = false; alerts(); }
      reachable = !n.unreachable;
    } catch (err) { /* the next poll retries */ }
  }

  window.addEventListener("resize", () => {
    for (const c of charts) c.plot.setSize({ width: width(c.box), height: 170 });
  });
  tick();
  alerts();
  setInterval(tick, 1000);
  setInterval(alerts, 5000);
  setInterval(state, 2000);
})();
