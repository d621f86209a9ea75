/* Datasette 0.65 has no top_* page hooks: this script adds the question box
 * (home, database, table pages) or the "Similar rows" link (row pages).
 * Its parameters come from its own URL, set by the server. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var params = new URL(script.src, window.location.href).searchParams;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text) node.textContent = text;
    return node;
  }
  function local(href) {
    return href && href.charAt(0) === "/" && href.charAt(1) !== "/";
  }
  function place(node) {
    var heading = document.querySelector(".content h1, section.content h1, h1");
    // Datasette 0.65 puts the h1 and the actions menu in a flex .page-header:
    // the box goes below that header, not squeezed into it beside the h1.
    var anchor = heading && heading.closest ? (heading.closest(".page-header") || heading) : heading;
    if (anchor && anchor.parentNode) anchor.parentNode.insertBefore(node, anchor.nextSibling);
    else document.body.appendChild(node);
  }
  function build() {
    var ask = params.get("ask");
    var similar = params.get("similar");
    if (local(ask)) {
      var form = el("form", {"class": "llm-rag-box", action: ask, method: "get", role: "search"});
      var table = params.get("table");
      var title = params.get("title") || table;
      form.appendChild(el("label", {"for": "llm-rag-box-q"}, table ? "Ask about " + title : "Ask a question"));
      var dbs = params.getAll("db");
      if (dbs.length > 1) {
        form.appendChild(el("label", {"for": "llm-rag-box-db", "class": "llm-rag-visually-hidden"}, "Database"));
        var select = el("select", {id: "llm-rag-box-db", name: "database"});
        dbs.forEach(function (name) { select.appendChild(el("option", {value: name}, name)); });
        form.appendChild(select);
      } else if (dbs.length === 1) {
        form.appendChild(el("input", {type: "hidden", name: "database", value: dbs[0]}));
      }
      form.appendChild(el("input", {id: "llm-rag-box-q", type: "search", name: "q", required: "required",
        maxlength: "2000", placeholder: "A question, or words to search for"}));
      if (table) form.appendChild(el("input", {type: "hidden", name: "table", value: table}));
      form.appendChild(el("input", {type: "hidden", name: "ask", value: "1"}));
      form.appendChild(el("button", {type: "submit"}, "Ask"));
      place(form);
    } else if (local(similar)) {
      var p = el("p", {"class": "llm-rag-similar-link"});
      p.appendChild(el("a", {href: similar}, "Similar rows"));
      place(p);
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", build);
  else build();
})();
