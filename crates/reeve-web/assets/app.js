// reeve dashboard: live refresh of <main>, actions through the JSON API,
// and keyboard shortcuts. No framework, no build step.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var flash = document.getElementById("flash");
  var busy = false;

  function say(html, kind) {
    flash.className = kind || "";
    flash.innerHTML = html;
  }
  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  // Live refresh: the server answers only <main> for X-Reeve-Partial.
  function refresh() {
    if (busy || document.hidden) return Promise.resolve();
    var active = document.activeElement;
    if (active && main.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName)) return Promise.resolve();
    busy = true;
    return fetch(location.href, { headers: { "X-Reeve-Partial": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var focusedKey = active && active.dataset ? active.dataset.post : null;
        main.innerHTML = html;
        if (focusedKey) {
          var again = main.querySelector('[data-post="' + CSS.escape(focusedKey) + '"]');
          if (again) again.focus();
        }
        if (main.querySelector("[data-live-stop]")) stopLive();
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  var timer = null;
  function stopLive() { if (timer) { clearInterval(timer); timer = null; } }
  var every = parseInt(main.getAttribute("data-live") || "0", 10);
  if (every > 0) timer = setInterval(refresh, every);

  // Actions: <button data-post=URL data-body=JSON data-confirm=TEXT>.
  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: body || "{}"
    }).then(function (r) {
      return r.text().then(function (t) {
        var json = null;
        try { json = t ? JSON.parse(t) : null; } catch (e) { json = null; }
        return { status: r.status, json: json };
      });
    });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest ? ev.target.closest("button[data-post]") : null;
    if (!b) return;
    ev.preventDefault();
    var question = b.getAttribute("data-confirm");
    if (question && !window.confirm(question)) return;
    var url = b.getAttribute("data-post");
    var body = b.getAttribute("data-body") || "{}";
    b.disabled = true;
    post(url, body).then(function (res) {
      b.disabled = false;
      if (res.status >= 200 && res.status < 300) {
        var what = b.textContent.trim();
        var job = res.json && res.json.job ? " (job #" + res.json.job.id + ")" : "";
        say(escapeHtml(what) + ": done" + escapeHtml(job) + ".", "ok");
        return refresh();
      }
      var j = res.json || {};
      if (res.status === 429 && j.error === "capacity_full") {
        var force = JSON.parse(body);
        force.force = true;
        var cap = j.scope === "queue" ? "Queue " + escapeHtml(j.queue) + "'s cap" : "The global cap";
        say(
          "<span id=\"eta\">" + cap + " is full: running " + escapeHtml(j.running) +
          " of " + escapeHtml(j.limit) + "; a slot is expected in about <strong>" + escapeHtml(j.slot_eta_seconds) +
          " s</strong>.</span> <button type=\"button\" class=\"act danger\" id=\"force\" data-post=\"" + escapeHtml(url) +
          "\" data-body=\"" + escapeHtml(JSON.stringify(force)) +
          "\" data-confirm=\"Force this run past the full cap? It is recorded in the audit log.\">Force run</button>",
          "error"
        );
        var f = document.getElementById("force");
        if (f) f.focus();
        return;
      }
      say(escapeHtml((j.error ? j.error + ": " : "") + (j.message || ("HTTP " + res.status))), "error");
    }).catch(function (e) {
      b.disabled = false;
      say("The daemon did not answer: " + escapeHtml(e), "error");
    });
  });

  // Keyboard: 1–7 switch pages, r refreshes, Escape clears the message.
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target;
    if (t && /INPUT|SELECT|TEXTAREA/.test(t.tagName)) return;
    if (ev.key === "Escape") { say("", ""); return; }
    if (ev.key === "r") { refresh(); return; }
    var link = document.querySelector('header nav a[data-key="' + ev.key + '"]');
    if (link) { location.href = link.getAttribute("href"); }
  });
})();
