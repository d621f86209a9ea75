/* Datasette 0.65 has no top_database hook: this script adds the visible
 * "Extract data into a new table" button below the database page's header
 * (1.0 renders the same markup server-side). Its target comes from its own
 * URL, set by the server only for people allowed to extract there. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var target = new URL(script.src, window.location.href).searchParams.get("new");
  if (!target || target.charAt(0) !== "/" || target.charAt(1) === "/") return;

  function build() {
    if (document.querySelector(".llm-newsroom-action")) return;
    var p = document.createElement("p");
    p.className = "llm-newsroom-action";
    var a = document.createElement("a");
    a.className = "llm-newsroom-button";
    a.href = target;
    a.textContent = "Extract data into a new table";
    var hint = document.createElement("span");
    hint.className = "llm-newsroom-hint";
    hint.textContent = "Define columns, paste text or add images and PDFs, and review what the model extracts.";
    p.appendChild(a);
    p.appendChild(document.createTextNode(" "));
    p.appendChild(hint);
    var header = document.querySelector(".page-header");
    if (header && header.parentNode) header.parentNode.insertBefore(p, header.nextSibling);
    else (document.querySelector(".content") || document.body).appendChild(p);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", build);
  else build();
})();
