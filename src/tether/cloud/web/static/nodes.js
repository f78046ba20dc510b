// The Nodes view: search, filters, sort and paging are done by the Cloud
// (nodes.json answers one page); the room's event stream (Server-Sent
// Events) says when something changed and the page shown is fetched again,
// so a node appears, goes live or turns unreachable within a second, without
// a reload. Node-supplied text is only ever set as textContent.
(function () {
  "use strict";
  const view = document.getElementById("nodes-view");
  if (!view) return;
  const body = document.getElementById("nodes-body");
  const status = document.getElementById("nodes-updated");
  const form = document.getElementById("nodes-filter");
  const search = document.getElementById("nodes-search");
  const pageInfo = document.getElementById("page-info");
  const prev = document.getElementById("page-prev");
  const next = document.getElementById("page-next");

  const start = new URLSearchParams(window.location.search);
  const sortState = {
    sort: start.get("sort") || "name",
    order: start.get("order") || "asc",
    page: parseInt(start.get("page") || "1", 10) || 1,
    perPage: start.get("per_page") || "",
  };
  let pages = parseInt(document.getElementById("nodes-pager").dataset.pages, 10) || 1;

  for (const b of form.querySelectorAll(".js-hide")) b.hidden = true;

  function params() {
    const p = new URLSearchParams();
    const q = search.value.trim();
    if (q) p.set("q", q);
    for (const [name, id] of [["state", "filter-state"], ["os", "filter-os"], ["agent_version", "filter-agent"],
                              ["room", "filter-room"], ["severity", "filter-severity"]]) {
      const v = document.getElementById(id).value;
      if (v) p.set(name, v);
    }
    for (const input of form.querySelectorAll("input.filter-label")) { // repeated: all must hold
      const v = input.value.trim();
      if (v) p.append("label", v);
    }
    if (sortState.sort !== "name") p.set("sort", sortState.sort);
    if (sortState.order !== "asc") p.set("order", sortState.order);
    if (sortState.page > 1) p.set("page", String(sortState.page));
    if (sortState.perPage) p.set("per_page", sortState.perPage);
    return p;
  }

  function when(iso) {
    const secs = Math.round((Date.parse(iso) - Date.now()) / 1000);
    if (secs <= 0) return window.tetherAgo(iso) + " (overdue)";
    if (secs < 60) return "in " + secs + " s";
    if (secs < 3600) return "in " + Math.round(secs / 60) + " min";
    return "in " + Math.round(secs / 3600) + " h";
  }

  function refreshTimes() {
    for (const el of view.querySelectorAll("[data-ago]")) {
      el.textContent = window.tetherAgo(el.dataset.ago);
      el.title = new Date(el.dataset.ago).toLocaleString();
    }
    for (const el of view.querySelectorAll("[data-when]")) {
      el.textContent = when(el.dataset.when);
      el.title = new Date(el.dataset.when).toLocaleString();
    }
    window.tetherRefreshTimes();
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function cell(label, ...children) {
    const td = document.createElement("td");
    td.dataset.label = label;
    for (const c of children) {
      if (typeof c === "string") td.appendChild(document.createTextNode(c)); else td.appendChild(c);
    }
    return td;
  }

  function row(n) {
    const tr = document.createElement("tr");
    tr.dataset.nodeId = n.id;
    tr.dataset.state = n.state;
    const a = el("a", "", n.hostname);
    a.href = n.url;
    a.title = n.host_details;
    const name = cell("Node", a);
    if (n.short_id) {
      const suffix = el("small", "node-suffix", "#" + n.short_id);
      suffix.title = n.host_details;
      name.append(" ", suffix);
    }
    if (n.via) name.append(" ", el("small", "via", "via " + n.via)); // a child (text only)
    tr.appendChild(name);
    const st = cell("State", el("span", "state state-" + n.state, n.unreachable ? "unreachable" : "live"));
    if (n.state_cause) st.append(" ", el("small", "cause", n.state_cause));
    if (n.duplicate) st.append(el("small", "duplicate", n.duplicate));
    tr.appendChild(st);
    const sev = n.alert_severity || "clear";
    tr.appendChild(cell("Alerts", el("span", "severity severity-" + sev, sev === "clear" ? "—" : sev)));
    const since = el("small", "since", n.state + " since " + window.tetherAgo(n.state_since));
    since.dataset.since = n.state_since;
    since.dataset.state = n.state;
    tr.appendChild(cell("Since", since));
    let seen = "never";
    if (n.last_seen_at) {
      seen = el("span", "ago", window.tetherAgo(n.last_seen_at));
      seen.dataset.ago = n.last_seen_at;
    }
    tr.appendChild(cell("Last seen", seen));
    tr.appendChild(cell("Connected from", n.last_address || "—"));
    let back = "—";
    if (n.expected_back_at) {
      back = el("span", "when", when(n.expected_back_at));
      back.dataset.when = n.expected_back_at;
    }
    const backCell = cell("Expected back", back);
    if (n.planned) backCell.append(" ", el("small", "planned", n.planned));
    tr.appendChild(backCell);
    tr.appendChild(cell("OS", n.os || "—"));
    tr.appendChild(cell("Agent", n.agent_version || "—"));
    tr.appendChild(cell("Rooms", n.rooms.join(", ") || "—"));
    return tr;
  }

  function fillFacet(id, values) {
    const select = document.getElementById(id);
    const chosen = select.value;
    const options = [el("option", "", "any")];
    options[0].value = "";
    let found = false;
    for (const f of values) {
      const o = el("option", "", f.value + " (" + f.count + ")");
      o.value = f.value;
      if (f.value === chosen) { o.selected = true; found = true; }
      options.push(o);
    }
    if (chosen && !found) { // keep a choice that matches nothing now
      const o = el("option", "", chosen + " (0)");
      o.value = chosen;
      o.selected = true;
      options.push(o);
    }
    select.replaceChildren(...options);
  }

  function showSort() {
    for (const th of view.querySelectorAll("th[data-sort]")) {
      const on = th.dataset.sort === sortState.sort;
      if (on) th.setAttribute("aria-sort", sortState.order === "asc" ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function draw(data) {
    body.replaceChildren(...data.nodes.map(row));
    pages = data.pages;
    sortState.page = data.page;
    const first = (data.page - 1) * data.per_page;
    pageInfo.textContent = data.total
      ? (first + 1) + "–" + (first + data.nodes.length) + " of " + data.total
      : "0 of 0";
    prev.hidden = data.page <= 1;
    next.hidden = data.page >= data.pages;
    if (data.facets) { // sent only when asked for (facets=1)
      fillFacet("filter-os", data.facets.os);
      fillFacet("filter-agent", data.facets.agent_version);
    }
    showSort();
    for (const li of document.querySelectorAll(".rooms li[data-room-id]")) {
      li.querySelector(".count").textContent = String(data.room_counts[li.dataset.roomId] || 0);
    }
    document.getElementById("empty-room").hidden = data.room_has_nodes;
    document.getElementById("nodes-table-wrap").hidden = !data.room_has_nodes;
    document.getElementById("nodes-none").hidden = data.nodes.length > 0 || !data.room_has_nodes;
    refreshTimes();
  }

  // One fetch at a time; a change meanwhile fetches once more afterwards.
  // `withFacets` also asks for the filter menus' values (a scan of the whole
  // room on the Cloud): on (re)connecting and when a filter changes, not on
  // every push.
  let loading = false;
  let again = false;
  let againFacets = false;
  async function load(withFacets) {
    if (loading) { again = true; againFacets = againFacets || !!withFacets; return; }
    loading = true;
    const p = params();
    const qs = p.toString();
    if (withFacets) p.set("facets", "1");
    try {
      const r = await fetch(view.dataset.nodes + "?" + p.toString(), { cache: "no-store", credentials: "same-origin" });
      if (r.redirected || r.status === 401) { window.location.reload(); return; }
      if (!r.ok) {
        let msg = "HTTP " + r.status;
        try { msg = (await r.json()).errorMessage || msg; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      draw(await r.json());
      const url = window.location.pathname + (qs ? "?" + qs : "");
      if (url !== window.location.pathname + window.location.search) window.history.replaceState(null, "", url);
      status.textContent = "Live: updated " + new Date().toLocaleTimeString() + ".";
      status.classList.remove("bad");
    } catch (err) {
      status.textContent = "Cannot load the nodes (" + err.message + ").";
      status.classList.add("bad");
    } finally {
      loading = false;
      if (again) {
        const f = againFacets;
        again = false;
        againFacets = false;
        load(f);
      }
    }
  }

  // Typed filters (search, labels) are fetched 250 ms after the last key.
  let typing = null;
  const typed = (e) => e.target === search || e.target.classList.contains("filter-label");
  form.addEventListener("input", (e) => {
    if (!typed(e)) return;
    clearTimeout(typing);
    typing = setTimeout(() => { sortState.page = 1; load(); }, 250);
  });
  form.addEventListener("change", (e) => {
    if (typed(e)) return;
    sortState.page = 1;
    load(true);
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); sortState.page = 1; load(); });
  for (const th of view.querySelectorAll("th[data-sort]")) {
    th.querySelector("a").addEventListener("click", (e) => {
      e.preventDefault();
      const key = th.dataset.sort;
      sortState.order = sortState.sort === key && sortState.order === "asc" ? "desc" : "asc";
      sortState.sort = key;
      sortState.page = 1;
      load();
    });
  }
  prev.addEventListener("click", (e) => { e.preventDefault(); sortState.page = Math.max(1, sortState.page - 1); load(); });
  next.addEventListener("click", (e) => { e.preventDefault(); sortState.page = Math.min(pages, sortState.page + 1); load(); });

  // The live stream: EventSource reconnects by itself after a dropped
  // connection; a refused one (429: too many tabs) is tried again later.
  let source = null;
  function listen() {
    source = new EventSource(view.dataset.events);
    source.addEventListener("hello", () => { load(true); }); // (re)connected: catch up
    source.addEventListener("nodes", () => { load(); });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        status.textContent = "Live updates paused (too many open views, or the Cloud is away); retrying in 10 s.";
        status.classList.add("bad");
        setTimeout(listen, 10000);
      } else {
        status.textContent = "Reconnecting to the Cloud for live updates…";
      }
    });
  }
  window.addEventListener("pagehide", () => { if (source) source.close(); });
  listen();
  refreshTimes();
  setInterval(refreshTimes, 5000);
})();
