// Shared page behaviour: copy buttons, self-submitting choice forms and
// "since" times that stay current. No inline scripts anywhere (strict CSP).
(function () {
  "use strict";

  function ago(iso) {
    const secs = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (secs < 60) return secs + " s ago";
    if (secs < 3600) return Math.floor(secs / 60) + " min ago";
    if (secs < 86400) return Math.floor(secs / 3600) + " h ago";
    return Math.floor(secs / 86400) + " d ago";
  }
  window.tetherAgo = ago;

  function refreshTimes() {
    for (const el of document.querySelectorAll("[data-since]")) {
      const state = el.dataset.state || el.textContent.split(" ")[0];
      el.textContent = state + " since " + ago(el.dataset.since);
      el.title = new Date(el.dataset.since).toLocaleString();
    }
  }
  window.tetherRefreshTimes = refreshTimes;
  setInterval(refreshTimes, 5000);

  // Dates in the user's locale: <time data-local> shows the local date and
  // time; every <time datetime> gets it as its tooltip (the server can only
  // write UTC or "3 min ago").
  function localDates() {
    for (const t of document.querySelectorAll("time[datetime]")) {
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) continue;
      t.title = d.toLocaleString();
      if (t.hasAttribute("data-local")) t.textContent = d.toLocaleString();
    }
  }
  window.tetherLocalDates = localDates;
  localDates();

  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
        button.setAttribute("aria-live", "polite");
      } catch (err) {
        // Clipboard needs a secure context; selecting the text is the fallback.
        const range = document.createRange();
        range.selectNodeContents(document.getElementById(button.dataset.copy));
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        button.textContent = "Press Ctrl+C";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }

  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    for (const b of form.querySelectorAll(".js-hide")) b.hidden = true;
    form.addEventListener("change", () => form.submit());
  }
})();
