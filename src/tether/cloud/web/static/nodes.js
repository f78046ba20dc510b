// The Nodes view keeps itself current: every 2 s it asks the Cloud for the
// room's nodes and redraws the table (no reload), so a node appears, goes
// live or turns unreachable by itself.
(function () {
  "use strict";
  const view = document.getElementById("nodes-view");
  if (!view) return;
  const body = document.getElementById("nodes-body");
  const status = document.getElementById("nodes-updated");

  function cell(label, child) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (typeof child === "string") td.textContent = child; else td.appendChild(child);
    return td;
  }

  function row(n) {
    const tr = document.createElement("tr");
    tr.dataset.nodeId = n.id;
    tr.dataset.state = n.state;
    const a = document.createElement("a");
    a.href = n.url;
    a.textContent = n.hostname;
    tr.appendChild(cell("Node", a));
    const st = document.createElement("div");
    const badge = document.createElement("span");
    badge.className = "state state-" + n.state;
    badge.textContent = n.unreachable ? "unreachable" : "live";
    st.appendChild(badge);
    const since = document.createElement("small");
    since.className = "since";
    since.dataset.since = n.state_since;
    since.dataset.state = n.state;
    since.textContent = n.state + " since " + window.tetherAgo(n.state_since);
    st.appendChild(document.createTextNode(" "));
    st.appendChild(since);
    if (n.state_cause) {
      const cause = document.createElement("small");
      cause.className = "cause";
      cause.textContent = n.state_cause;
      st.appendChild(document.createTextNode(" "));
      st.appendChild(cause);
    }
    if (n.duplicate) {
      const dup = document.createElement("small");
      dup.className = "duplicate";
      dup.textContent = n.duplicate;
      st.appendChild(dup);
    }
    tr.appendChild(cell("State", st));
    tr.appendChild(cell("OS", n.os || "—"));
    tr.appendChild(cell("Agent", n.agent_version || "—"));
    tr.appendChild(cell("Rooms", n.rooms.join(", ") || "—"));
    return tr;
  }

  async function poll() {
    try {
      const r = await fetch(view.dataset.poll, { cache: "no-store", credentials: "same-origin" });
      if (r.redirected || r.status === 401) { window.location.reload(); return; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      body.replaceChildren(...data.nodes.map(row));
      for (const li of document.querySelectorAll(".rooms li[data-room-id]")) {
        li.querySelector(".count").textContent = String(data.room_counts[li.dataset.roomId] || 0);
      }
      document.getElementById("empty-room").hidden = data.nodes.length > 0;
      document.getElementById("nodes-table-wrap").hidden = data.nodes.length === 0;
      status.textContent = "Updated " + new Date().toLocaleTimeString() + "; updates itself every 2 seconds.";
      status.classList.remove("bad");
    } catch (err) {
      status.textContent = "Cannot reach the Cloud (" + err.message + "); retrying.";
      status.classList.add("bad");
    }
  }
  setInterval(poll, 2000);
  poll();
})();
