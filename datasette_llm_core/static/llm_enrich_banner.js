/* Datasette 0.65 has no top_table hook: this script shows the enrichment
 * banner (the viewer's unfinished "Extract into new columns" jobs on this
 * table) below the table page's header, and refreshes it while a job runs.
 * 1.0 renders the same markup server-side. The fragment's address comes from
 * this script's own URL; the server escapes everything in it. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var source = new URL(script.src, window.location.href).searchParams.get("banner");
  if (!source || source.charAt(0) !== "/" || source.charAt(1) === "/") return;

  function show(html) {
    var holder = document.querySelector(".llm-enrich-banner-holder");
    if (!holder) {
      holder = document.createElement("div");
      holder.className = "llm-enrich-banner-holder";
      var header = document.querySelector(".page-header");
      if (header && header.parentNode) header.parentNode.insertBefore(holder, header.nextSibling);
      else (document.querySelector(".content") || document.body).prepend(holder);
    }
    holder.innerHTML = html;
    if (holder.querySelector("[data-active='1']")) setTimeout(load, 3000);
  }

  function load() {
    fetch(source, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(show)
      .catch(function () {});
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", load);
  else load();
})();
