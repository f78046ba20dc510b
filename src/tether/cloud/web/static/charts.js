// What the node page and the room overview share: fetching through the Cloud
// (relay or composite), building DOM from node-supplied text with textContent
// only, and uPlot charts whose cursor and zoom are shared by every chart of a
// page. Nothing a node sends is ever parsed as HTML.
(function () {
  "use strict";
  const COLORS = ["#2f6fdf", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6",
                  "#dd4477", "#66aa00", "#b82e2e", "#316395", "#994499", "#22aa99"];

  // Axis labels short enough for the gutter: 250000 -> "250k".
  function compact(v) {
    if (v === null || v === undefined) return "";
    const a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return +(v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return +(v / 1e3).toFixed(1) + "k";
    return +v.toFixed(2);
  }

  // An element with attributes and text: the only way pages build DOM.
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  class FetchError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { const body = await r.json(); msg = body.errorMessage || body.error || msg; } catch (e) { /* not JSON */ }
      throw new FetchError(r.status, msg);
    }
    return r.json();
  }

  // Dark mode follows the system setting: chart strokes read from CSS.
  function axisColor() {
    return getComputedStyle(document.documentElement).getPropertyValue("--fg").trim() || "#1d2430";
  }
  function gridColor() {
    return getComputedStyle(document.documentElement).getPropertyValue("--line").trim() || "#dde1e6";
  }

  // A group of charts sharing the cursor and the zoom. `onZoom(min, max)` is
  // called with the selected seconds when the user drags across any chart.
  function Group(key, onZoom) {
    this.key = key;
    this.onZoom = onZoom;
    this.plots = [];
  }

  Group.prototype.chart = function (target, names, opts) {
    const group = this;
    const axis = { stroke: axisColor(), grid: { stroke: gridColor() }, ticks: { stroke: gridColor() } };
    const plot = new uPlot({
      width: opts.width, height: opts.height || 170,
      cursor: { sync: { key: group.key }, drag: { x: !!group.onZoom, y: false, setScale: false } },
      scales: { x: { time: true, range: opts.range } },
      legend: { live: true },
      series: [{}].concat(names.map((name, i) => ({
        label: name, stroke: (opts.colors || COLORS)[i % COLORS.length], width: opts.strokeWidth || 1.5,
        value: (u, v) => (v === null || v === undefined ? "—" : compact(v)),
      }))),
      axes: [axis, Object.assign({ size: 55, values: (u, splits) => splits.map(compact) }, axis)],
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 4 || !group.onZoom) return;
          const min = u.posToVal(u.select.left, "x");
          const max = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          group.onZoom(Math.floor(min), Math.ceil(max));
        }],
      },
    }, [[]].concat(names.map(() => [])), target);
    this.plots.push(plot);
    return plot;
  };

  Group.prototype.redraw = function () {
    for (const p of this.plots) p.redraw(false, true);
  };

  Group.prototype.clear = function () {
    for (const p of this.plots) p.destroy();
    this.plots.length = 0;
  };

  // "3 min ago" and the local date and time for a title.
  function localTime(iso) {
    const d = typeof iso === "number" ? new Date(iso * 1000) : new Date(iso);
    return isNaN(d) ? "" : d.toLocaleString();
  }

  window.tetherCharts = { COLORS, compact, el, getJSON, FetchError, Group, localTime };
})();
