// The room overview: composite charts across every live node of a War Room,
// from the Cloud's composite endpoint (which fans the query out to the nodes
// through the relay, each with its own deadline). A partial answer is drawn
// with the nodes that missed named; every node links to its own page.
// Hostnames are node-supplied: they go in as text only (textContent).
(function () {
  "use strict";
  const view = document.getElementById("room-overview");
  if (!view) return;
  const { el, getJSON, Group, compact } = window.tetherCharts;
  const RANGE = parseInt(view.dataset.range, 10) || 300;
  const POINTS = 60;
  const EACH_UP_TO = 25; // above this many nodes: min / average / max and the busiest
  const BUSIEST = 5;
  const status = document.getElementById("overview-status");
  const group = new Group("room-overview", null);
  const plots = {}; // key -> {plot, names}

  function mean(values) {
    let sum = 0, n = 0;
    for (const v of values) if (v !== null && v !== undefined) { sum += v; n++; }
    return n ? sum / n : null;
  }
  function latest(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
    return null;
  }

  // The series drawn: each node, or the room's band and its busiest nodes.
  function series(res) {
    const nodes = res.nodes;
    if (nodes.length <= EACH_UP_TO) return nodes.map((n) => ({ label: n.hostname, values: n.values }));
    const band = { min: [], avg: [], max: [] };
    for (let i = 0; i < res.time.length; i++) {
      const col = nodes.map((n) => n.values[i]).filter((v) => v !== null && v !== undefined);
      band.min.push(col.length ? Math.min(...col) : null);
      band.avg.push(col.length ? col.reduce((a, b) => a + b, 0) / col.length : null);
      band.max.push(col.length ? Math.max(...col) : null);
    }
    const busiest = nodes.slice().sort((a, b) => (mean(b.values) || 0) - (mean(a.values) || 0)).slice(0, BUSIEST);
    return [{ label: "room minimum", values: band.min }, { label: "room average", values: band.avg },
            { label: "room maximum", values: band.max }]
      .concat(busiest.map((n) => ({ label: n.hostname, values: n.values })));
  }

  function nodeLink(n) {
    const a = el("a", { href: view.dataset.nodeBase + encodeURIComponent(n.id), "data-node-id": n.id }, n.hostname);
    return a;
  }

  function draw(box, key, res) {
    const drawn = series(res);
    const names = drawn.map((s) => s.label);
    const same = plots[key] && plots[key].names.join("\u0000") === names.join("\u0000");
    if (!same) {
      if (plots[key]) plots[key].plot.destroy();
      const target = box.querySelector(".plot");
      target.replaceChildren();
      const plot = group.chart(target, names, {
        width: Math.max(260, box.clientWidth - 8), height: 200, strokeWidth: 1,
        range: () => { const now = Date.now() / 1000; return [now - RANGE, now]; },
      });
      plots[key] = { plot, names };
    }
    plots[key].plot.setData([res.time].concat(drawn.map((s) => s.values)));
    box.dataset.series = JSON.stringify(names);
    box.dataset.drawn = String(res.nodes.length);
    box.dataset.missed = String(res.missed.length);
    const answered = box.querySelector(".answered");
    answered.textContent = res.answered + " of " + res.asked + " live nodes answered in " +
      Math.round(res.elapsed_ms) + " ms" + (res.not_live.length ? "; " + res.not_live.length + " not live" : "") + ".";
    // The nodes that missed, named, each with why.
    const missed = box.querySelector(".missed");
    missed.hidden = !res.missed.length;
    missed.querySelector("ul").replaceChildren(...res.missed.map((m) => {
      const li = el("li");
      li.appendChild(nodeLink(m));
      li.appendChild(document.createTextNode(": " + m.reason));
      return li;
    }));
    // Drill down: the busiest nodes, each a link to its node page.
    const rows = res.nodes.map((n) => ({ n, avg: mean(n.values), last: latest(n.values) }))
      .sort((a, b) => (b.avg || 0) - (a.avg || 0)).slice(0, 10);
    box.querySelector(".top-nodes tbody").replaceChildren(...rows.map(({ n, avg, last }) => {
      const tr = el("tr");
      const td = el("td", { "data-label": "Node" });
      td.appendChild(nodeLink(n));
      tr.appendChild(td);
      tr.appendChild(el("td", { "data-label": "Average" }, avg === null ? "—" : String(compact(avg))));
      tr.appendChild(el("td", { "data-label": "Latest" }, last === null ? "—" : String(compact(last))));
      return tr;
    }));
  }

  async function one(box) {
    const key = box.dataset.composite;
    try {
      const res = await getJSON(view.dataset.composite + "?chart=" + encodeURIComponent(key) +
                                "&after=-" + RANGE + "&points=" + POINTS);
      draw(box, key, res);
      return true;
    } catch (err) {
      box.querySelector(".answered").textContent = "Could not load: " + err.message;
      return false;
    }
  }

  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      const boxes = [...document.querySelectorAll("#composites .composite")];
      const ok = await Promise.all(boxes.map(one));
      status.textContent = ok.every(Boolean) ? "Updated " + new Date().toLocaleTimeString() + "."
        : "Some charts could not be loaded; retrying.";
    } finally {
      busy = false;
    }
  }

  window.addEventListener("resize", () => {
    for (const key of Object.keys(plots)) {
      const box = document.getElementById("composite-" + key);
      plots[key].plot.setSize({ width: Math.max(260, box.clientWidth - 8), height: 200 });
    }
  });
  tick();
  setInterval(tick, RANGE <= 900 ? 5000 : 30000);
})();
