// "Connect to Cloud": claim this node through /api/v3/claim (docs/api.md).
(function () {
  "use strict";
  const box = document.getElementById("connect");
  const form = document.getElementById("connect-form");
  const result = document.getElementById("connect-result");

  async function refresh() {
    const r = await fetch("/api/v3/claim", { cache: "no-store" });
    if (!r.ok) return;
    const s = await r.json();
    document.getElementById("key-file").textContent = s.key_filename;
    box.hidden = !s.can_be_claimed;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = new URLSearchParams(new FormData(form));
    result.textContent = "connecting…";
    result.className = "";
    try {
      const r = await fetch("/api/v3/claim", { method: "POST", body, cache: "no-store" });
      const s = await r.json();
      result.textContent = s.message;
      result.className = s.success ? "ok" : "bad";
      form.elements.key.value = ""; // single use: the agent made a new one
      if (s.success) form.hidden = true;
    } catch (err) {
      result.textContent = "the agent did not answer: " + err.message;
      result.className = "bad";
    }
  });

  refresh().catch(() => {});
})();
