// The node page: every chart the agent has, grouped by family in a menu,
// drawn with uPlot from the agent's own API through the Cloud's relay (values
// are never stored by the Cloud); a time picker, zoom and pan shared by every
// chart; the node's alerts and alert history; its events, live from the
// Space's Server-Sent Events stream. Node-supplied text goes in as text only.
(function () {
  "use strict";
  const view = document.getElementById("node-view");
  if (!view) return;
  const { el, getJSON, Group, compact, localTime } = window.tetherCharts;
  const RELAY = view.dataset.relay;
  const RANGE_KEY = view.dataset.rangeKey;
  const POINTS = 300;
  const MAX_SPAN = 86400; // the agent's per-minute tier holds 24 hours
  // The default set ("Overview"): chart contexts and how many charts of each.
  const OVERVIEW = [["system.cpu", 1], ["system.load", 1], ["system.ram", 1], ["disk.io", 2], ["net.net", 2]];
  const relayStatus = document.getElementById("relay-status");
  const chartsBox = document.getElementById("charts");
  const params = new URLSearchParams(location.search);
  let reachable = document.getElementById("unreachable").hidden;
  let defs = null; // the agent's charts, by id
  let family = params.get("family") || "overview";
  let shown = []; // {id, box, plot, sr}
  let inFlight = false;

  // The window: live ranges follow now; custom ranges and zooms are fixed.
  const live = { seconds: parseInt(view.dataset.range, 10) || 300 };
  let fixed = null; // {after, before} in epoch seconds
  let base = null; // the window before the first zoom, for "Reset zoom"

  function customWindow() {
    const from = Date.parse(params.get("from") || "");
    const to = Date.parse(params.get("to") || "");
    const now = Date.now();
    let w = { after: Math.floor((isNaN(from) ? now - 7200e3 : from) / 1000),
              before: Math.floor((isNaN(to) ? now : to) / 1000) };
    if (w.before <= w.after) w = { after: w.before - 3600, before: w.before };
    if (w.before - w.after > MAX_SPAN) w.after = w.before - MAX_SPAN;
    return w;
  }

  function localInput(secs) {
    const d = new Date(secs * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  if (RANGE_KEY === "custom") {
    fixed = customWindow();
    document.getElementById("custom-from").value = localInput(fixed.after);
    document.getElementById("custom-to").value = localInput(fixed.before);
  }

  function windowNow() {
    if (fixed) return [fixed.after, fixed.before];
    const now = Date.now() / 1000;
    return [now - live.seconds, now];
  }

  const group = new Group("node-" + view.dataset.nodeId, (min, max) => zoomTo(min, max));

  // The window before the first zoom or pan, for "Reset zoom".
  function remember() {
    if (!base) base = fixed ? { after: fixed.after, before: fixed.before } : { live: true };
    document.getElementById("zoom-reset").disabled = false;
  }

  function zoomTo(after, before) {
    remember();
    fixed = { after, before: Math.max(before, after + 10) };
    group.redraw();
    refreshAll();
  }

  function pan(direction) {
    const [a, b] = windowNow();
    remember();
    const span = Math.round(b - a);
    let before = Math.ceil(b + Math.round(span / 2) * direction);
    before = Math.min(before, Math.ceil(Date.now() / 1000));
    fixed = { after: before - span, before };
    group.redraw();
    refreshAll();
  }

  function resetZoom() {
    fixed = base && !base.live ? base : null;
    base = null;
    document.getElementById("zoom-reset").disabled = true;
    group.redraw();
    refreshAll();
  }

  document.getElementById("zoom-reset").addEventListener("click", resetZoom);
  document.getElementById("pan-earlier").addEventListener("click", () => pan(-1));
  document.getElementById("pan-later").addEventListener("click", () => pan(1));
  document.getElementById("range-custom-link").addEventListener("click", (ev) => {
    ev.preventDefault();
    const form = document.getElementById("custom-range");
    form.hidden = false;
    const [a, b] = windowNow();
    document.getElementById("custom-from").value = localInput(Math.floor(a));
    document.getElementById("custom-to").value = localInput(Math.floor(b));
    document.getElementById("custom-from").focus();
  });
  // The custom form sends local times as typed; keep the family in the URL.
  document.getElementById("custom-range").addEventListener("submit", () => {
    const form = document.getElementById("custom-range");
    if (family !== "overview" && !form.querySelector("input[name=family]")) {
      form.appendChild(el("input", { type: "hidden", name: "family", value: family }));
    }
  });

  function showProblem(err) {
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

  // -- the menu -------------------------------------------------------------

  function families() {
    const out = {};
    for (const c of Object.values(defs)) (out[c.type] = out[c.type] || []).push(c);
    for (const list of Object.values(out)) list.sort((a, b) => (a.priority - b.priority) || a.id.localeCompare(b.id));
    return out;
  }

  function overview() {
    const all = Object.values(defs);
    const out = [];
    for (const [context, max] of OVERVIEW) {
      const found = all.filter((c) => (c.context || c.id) === context)
        .sort((a, b) => (a.priority - b.priority) || a.id.localeCompare(b.id));
      out.push(...found.slice(0, max));
    }
    return out;
  }

  function buildMenu() {
    const list = document.getElementById("chart-menu-list");
    const groups = families();
    const items = [["overview", "Overview", overview().length]].concat(
      Object.keys(groups).sort().map((f) => [f, f, groups[f].length]));
    list.replaceChildren(...items.map(([key, label, count]) => {
      const li = el("li");
      const b = el("button", { type: "button", "data-family": key, "aria-pressed": String(key === family) }, label + " ");
      b.appendChild(el("span", { class: "count", "aria-label": count + " charts" }, String(count)));
      b.addEventListener("click", () => choose(key));
      li.appendChild(b);
      if (key === family && key !== "overview") {
        const sub = el("ul", { class: "chart-list" });
        for (const c of groups[key]) {
          const item = el("li");
          item.appendChild(el("a", { href: "#chart-" + c.id }, c.title));
          sub.appendChild(item);
        }
        li.appendChild(sub);
      }
      return li;
    }));
  }

  function choose(key) {
    family = key;
    const url = new URL(location.href);
    if (key === "overview") url.searchParams.delete("family"); else url.searchParams.set("family", key);
    history.replaceState(null, "", url);
    // The range links keep the family too.
    for (const a of document.querySelectorAll("a[data-range-key]")) {
      const u = new URL(a.href);
      if (key === "overview") u.searchParams.delete("family"); else u.searchParams.set("family", key);
      a.href = u.toString();
    }
    draw();
    const b = document.querySelector("#chart-menu-list button[data-family='" + CSS.escape(key) + "']");
    if (b) b.focus();
  }

  // -- charts ---------------------------------------------------------------

  function makeChart(c) {
    const box = el("section", { class: "chart", id: "chart-" + c.id, "data-chart": c.id, "data-rows": "0",
                                tabindex: "0", role: "figure", "aria-label": c.title + " (" + c.units + ")" });
    const h = el("h3", {}, c.title + " ");
    h.appendChild(el("small", {}, c.id + " · " + c.units));
    box.appendChild(h);
    const target = el("div", { class: "plot", "aria-hidden": "true" });
    box.appendChild(target);
    const sr = el("p", { class: "sr-only", "aria-live": "off" }, "No data yet.");
    box.appendChild(sr);
    chartsBox.appendChild(box);
    box.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowLeft") { pan(-1); ev.preventDefault(); }
      else if (ev.key === "ArrowRight") { pan(1); ev.preventDefault(); }
      else if (ev.key === "Escape" && base) { resetZoom(); ev.preventDefault(); }
    });
    const names = Object.values(c.dimensions).map((d) => d.name);
    const plot = group.chart(target, names, { width: width(box), range: () => windowNow() });
    return { id: c.id, title: c.title, units: c.units, box, plot, sr };
  }

  function draw() {
    group.clear();
    chartsBox.replaceChildren();
    buildMenu();
    const list = family === "overview" ? overview() : (families()[family] || []);
    if (family !== "overview" && !list.length) { family = "overview"; return draw(); }
    document.getElementById("charts-heading").textContent =
      family === "overview" ? "Overview" : "Family " + family + " (" + list.length + " charts)";
    shown = list.map(makeChart);
    refreshAll();
  }

  async function refresh(entry) {
    const [a, b] = windowNow();
    const span = fixed ? "&after=" + Math.floor(a) + "&before=" + Math.ceil(b) : "&after=-" + live.seconds;
    const res = await getJSON(RELAY + "/data?chart=" + encodeURIComponent(entry.id) + span +
                              "&points=" + POINTS + "&format=json");
    const rows = res.result.data.slice().reverse(); // the agent sends newest first
    const cols = res.result.labels.map((_, i) => rows.map((r) => r[i]));
    entry.plot.setData(cols);
    entry.box.dataset.rows = String(rows.length);
    // Which window this chart shows (the same for every chart of the page).
    entry.box.dataset.window = fixed ? Math.floor(a) + "-" + Math.ceil(b) : "live-" + live.seconds;
    entry.box.dataset.tier = String(res.tier === undefined ? "" : res.tier);
    const last = rows.length ? rows[rows.length - 1] : null;
    entry.sr.textContent = last
      ? "Latest " + res.result.labels.slice(1).map((n, i) => n + " " + compact(last[i + 1])).join(", ") + " " + entry.units + "."
      : "No data in this range.";
  }

  let again = false; // a zoom or pan while a refresh runs: run once more after it
  async function refreshAll() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    again = false;
    let fresh = false;
    try {
      if (!defs) {
        defs = (await getJSON(RELAY + "/charts")).charts;
        fresh = true;
      } else {
        await Promise.all(shown.map(refresh));
        const tier = shown.some((c) => c.box.dataset.tier === "1") ? " (per-minute values)" : "";
        const [a, b] = windowNow();
        relayStatus.textContent = (fixed ? "Showing " + localTime(a) + " – " + localTime(b)
          : "Live through the Cloud; updated " + new Date().toLocaleTimeString()) + tier + ".";
        relayStatus.classList.remove("bad");
      }
    } catch (err) {
      showProblem(err);
    } finally {
      inFlight = false;
      if (fresh) draw(); else if (again) refreshAll();
    }
  }

  // Live ranges refresh as often as their points change.
  function every() {
    if (live.seconds <= 900) return 1000;
    if (live.seconds <= 3600) return 5000;
    return 30000;
  }
  setInterval(() => { if (!fixed || !defs) refreshAll(); }, every());

  // -- alerts ---------------------------------------------------------------

  async function alerts() {
    const body = document.getElementById("alerts-body");
    try {
      const res = await getJSON(RELAY + "/alarms?all=1");
      const list = Object.values(res.alarms).sort((a, b) => (b.active - a.active) || a.name.localeCompare(b.name));
      if (!list.length) {
        const tr = el("tr");
        tr.appendChild(el("td", { colspan: "4", class: "muted" }, "No alerts configured on this node."));
        body.replaceChildren(tr);
      } else {
        body.replaceChildren(...list.map((a) => {
          const tr = el("tr", { class: "alert-" + String(a.status).toLowerCase() });
          tr.appendChild(el("td", { "data-label": "Alert" }, a.name));
          tr.appendChild(el("td", { "data-label": "Chart" }, a.chart));
          tr.appendChild(el("td", { "data-label": "Status" }, a.status));
          const v = a.value === null || a.value === undefined ? "—" : Number(a.value).toFixed(2) + " " + (a.units || "");
          tr.appendChild(el("td", { "data-label": "Value" }, v));
          return tr;
        }));
      }
      showHistory(res.transitions || []);
    } catch (err) {
      const tr = el("tr");
      tr.appendChild(el("td", { colspan: "4", class: "muted" }, "Alerts unavailable: " + err.message));
      body.replaceChildren(tr);
    }
  }

  // The node's own transitions (newest first), after the Cloud's rows.
  function showHistory(transitions) {
    const body = document.getElementById("history-body");
    for (const old of body.querySelectorAll("tr.from-node, tr.empty")) old.remove();
    for (const t of transitions.slice(0, 30)) {
      const tr = el("tr", { class: "from-node alert-" + String(t.status).toLowerCase() });
      const when = el("td", { "data-label": "When" });
      const time = el("time", { datetime: new Date(Number(t.when) * 1000).toISOString() }, localTime(Number(t.when)));
      when.appendChild(time);
      tr.appendChild(when);
      tr.appendChild(el("td", { "data-label": "Alert" }, String(t.name) + " on " + String(t.chart)));
      tr.appendChild(el("td", { "data-label": "From" }, String(t.old_status)));
      const v = t.value === null || t.value === undefined ? "" : " (" + Number(t.value).toFixed(2) + " " + String(t.units || "") + ")";
      tr.appendChild(el("td", { "data-label": "To" }, String(t.status) + v));
      tr.appendChild(el("td", { "data-label": "Where" }, "node"));
      body.appendChild(tr);
    }
  }

  // -- live state and events --------------------------------------------------

  function showEvents(events) {
    const list = document.getElementById("node-events");
    if (!events.length) { list.replaceChildren(el("li", { class: "muted" }, "No events yet.")); return; }
    list.replaceChildren(...events.map((e) => {
      const li = el("li");
      li.appendChild(el("time", { datetime: e.at, title: localTime(e.at) }, window.tetherAgo(e.at)));
      li.appendChild(document.createTextNode(" " + e.kind + (e.state ? " → " + e.state : "") + (e.cause ? ": " + e.cause : "")));
      return li;
    }));
  }

  async function state() {
    try {
      const n = await getJSON(view.dataset.stateUrl);
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
      showEvents(n.events || []);
      if (!reachable && !n.unreachable) { defs = null; refreshAll(); alerts(); }
      reachable = !n.unreachable;
    } catch (err) { /* the next push or poll retries */ }
  }

  // Pushed: the Space's stream says a node changed, then state.json is read
  // again (it is checked against the session each time). Polling only while
  // the stream is down.
  let fallback = null;
  function listen() {
    if (!window.EventSource || !view.dataset.eventsUrl) { fallback = setInterval(state, 5000); return; }
    const es = new EventSource(view.dataset.eventsUrl);
    es.addEventListener("hello", () => { if (fallback) { clearInterval(fallback); fallback = null; } state(); });
    es.addEventListener("nodes", state);
    es.addEventListener("error", () => { if (!fallback) fallback = setInterval(state, 5000); });
  }

  window.addEventListener("resize", () => {
    for (const c of shown) c.plot.setSize({ width: width(c.box), height: 170 });
  });
  refreshAll();
  alerts();
  setInterval(alerts, 5000);
  listen();
})();
