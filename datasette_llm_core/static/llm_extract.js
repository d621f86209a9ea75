/* datasette-llm-newsroom: extraction pages (plain JS, no build step).
 *
 * Model output is only ever put into the page with textContent or input
 * values, never as HTML.
 */
(function () {
  "use strict";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function display(value) {
    if (value === null || value === undefined) { return ""; }
    if (value === true) { return "true"; }
    if (value === false) { return "false"; }
    return String(value);
  }

  function readJSON(root, name) {
    try { return JSON.parse(root.getAttribute(name) || "null"); } catch (e) { return null; }
  }

  /* ---------------------------------------------------------------- start page */

  function initTemplateDelete(root) {
    var select = root.querySelector("#llm-template");
    var button = root.querySelector('[data-llm-action="delete-template"]');
    var status = root.querySelector("#llm-template-status");
    if (!select || !button) { return; }
    function update() {
      var option = select.options[select.selectedIndex];
      button.hidden = !(option && option.getAttribute("data-delete-url"));
    }
    select.addEventListener("change", update);
    update();
    button.addEventListener("click", function () {
      var option = select.options[select.selectedIndex];
      var url = option && option.getAttribute("data-delete-url");
      if (!url || !window.confirm("Delete the template “" + option.textContent + "”?")) { return; }
      fetch(url, {method: "POST", credentials: "same-origin", headers: {"content-type": "application/json"},
                  body: "{}"})
        .then(function (r) { return r.json(); })
        .then(function (info) {
          if (!info.ok) { if (status) { status.textContent = info.error; } return; }
          option.remove();
          update();
          if (status) { status.textContent = "Template deleted."; }
        })
        .catch(function () { if (status) { status.textContent = "The template could not be deleted."; } });
    });
  }

  function initStart(root) {
    initTemplateDelete(root);
    var form = root.querySelector("#llm-extract-form");
    var tbody = root.querySelector("#llm-columns tbody");
    var addButton = root.querySelector('[data-llm-action="add-column"]');
    if (addButton && tbody) {
      addButton.addEventListener("click", function () {
        var rows = tbody.querySelectorAll("tr.llm-column-row");
        var last = rows[rows.length - 1];
        if (!last) { return; }
        var next = 0;
        rows.forEach(function (r) { next = Math.max(next, parseInt(r.getAttribute("data-index"), 10) + 1); });
        var clone = last.cloneNode(true);
        clone.setAttribute("data-index", String(next));
        clone.querySelectorAll("[id], [for], [name]").forEach(function (node) {
          ["id", "for", "name"].forEach(function (attr) {
            var v = node.getAttribute(attr);
            if (v) { node.setAttribute(attr, v.replace(/^col-\d+-/, "col-" + next + "-")); }
          });
          if (node.tagName === "INPUT" && node.type === "text") { node.value = ""; }
          if (node.tagName === "INPUT" && node.type === "checkbox") { node.checked = false; }
          if (node.tagName === "SELECT") { node.selectedIndex = 0; }
        });
        tbody.appendChild(clone);
        var first = clone.querySelector('input[type="text"]');
        if (first) { first.focus(); }
      });
    }
    var estimateButton = root.querySelector('[data-llm-action="estimate"]');
    var result = root.querySelector("#llm-estimate-result");
    if (estimateButton && form && result) {
      estimateButton.addEventListener("click", function () {
        var data = new FormData(form);
        result.textContent = "Estimating…";
        fetch(root.getAttribute("data-estimate-url"), {
          method: "POST", body: data, credentials: "same-origin",
          headers: { "x-csrftoken": root.getAttribute("data-csrftoken") || "" }
        }).then(function (r) { return r.json(); }).then(function (info) {
          if (!info.ok) { result.textContent = info.error; result.className = "llm-estimate-result llm-error"; return; }
          result.className = "llm-estimate-result";
          var text = "About " + (info.input_tokens + info.output_tokens).toLocaleString() + " tokens in " +
            info.chunks + " request(s) to " + info.model_id;
          text += info.cost === null ? " (this model has no price configured)." : ", roughly $" + info.cost.toFixed(4) + ".";
          if (info.ocr_pages) { text += " " + info.ocr_pages + " scanned page(s) are read by local OCR first (free)."; }
          result.textContent = text;
        }).catch(function () { result.textContent = "The estimate could not be fetched."; });
      });
    }
    var files = root.querySelector("#llm-files");
    var modelSelect = root.querySelector("#llm-model");
    function checkModel() {
      if (!files || !modelSelect) { return; }
      var option = modelSelect.options[modelSelect.selectedIndex];
      var needsImages = false;
      // a text model reads scans through local OCR unless the scan itself is to be sent
      var readAs = root.querySelector("#llm-read-as");
      var sendScan = readAs && (readAs.value === "vision" || readAs.value === "both");
      Array.prototype.forEach.call(files.files || [], function (f) { if (sendScan && /^image\//.test(f.type)) { needsImages = true; } });
      Array.prototype.forEach.call(modelSelect.options, function (o) {
        o.disabled = needsImages && o.getAttribute("data-images") !== "1";
      });
      if (option && option.disabled) {
        var ok = Array.prototype.find.call(modelSelect.options, function (o) { return !o.disabled; });
        if (ok) { modelSelect.value = ok.value; }
      }
    }
    if (files) { files.addEventListener("change", checkModel); }
    var readAsSelect = root.querySelector("#llm-read-as");
    if (readAsSelect) { readAsSelect.addEventListener("change", checkModel); }
  }

  /* ---------------------------------------------------------------- run page */

  function highlight(row) {
    document.querySelectorAll(".llm-row-selected").forEach(function (r) { r.classList.remove("llm-row-selected"); });
    row.classList.add("llm-row-selected");
    document.querySelectorAll("pre.llm-source").forEach(function (pre) {
      if (pre.hasAttribute("data-original")) { pre.textContent = pre.getAttribute("data-original"); }
    });
    var doc = row.getAttribute("data-document");
    var start = parseInt(row.getAttribute("data-quote-start"), 10);
    var end = parseInt(row.getAttribute("data-quote-end"), 10);
    if (doc === "" || isNaN(start) || isNaN(end)) { return; }
    var pre = document.getElementById("llm-source-" + doc);
    if (!pre) { return; }
    var text = pre.getAttribute("data-original");
    if (text === null) { text = pre.textContent; pre.setAttribute("data-original", text); }
    // The server counts characters (code points); JavaScript strings count UTF-16
    // units, which differ after any character outside the BMP (emoji, rare scripts).
    if (!pre.llmChars) { pre.llmChars = Array.from(text); }
    var chars = pre.llmChars;
    pre.textContent = "";
    pre.appendChild(document.createTextNode(chars.slice(0, start).join("")));
    var mark = el("mark", {}, chars.slice(start, end).join(""));
    pre.appendChild(mark);
    pre.appendChild(document.createTextNode(chars.slice(end).join("")));
    // Scroll the source panel only: moving the page under the pointer would
    // make a click on the row's Accept/Reject controls land somewhere else.
    pre.scrollTop = Math.max(0, mark.offsetTop - pre.clientHeight / 3);
  }

  /* Controls per column type: keep in step with datasette_llm_extract/review.py. */
  var ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;

  function control(column, value, id) {
    var type = column.type || "text";
    var text = display(value);
    var node;
    if (type === "boolean" || type === "choice") {
      var options = type === "boolean" ? [["", "(blank)"], ["true", "Yes"], ["false", "No"]]
        : [["", "(blank)"]].concat((column.choices || []).map(function (c) { return [c, c]; }));
      if (!options.some(function (o) { return o[0] === text; })) { options.push([text, text + " (not allowed)"]); }
      node = el("select", { id: id, name: id, "class": "llm-value" });
      options.forEach(function (o) {
        var option = el("option", { value: o[0] }, o[1]);
        option.selected = o[0] === text;
        node.appendChild(option);
      });
    } else if (type === "date") {
      var valid = text === "" || (ISO_DATE.test(text) && !isNaN(Date.parse(text + "T00:00:00Z")));
      node = el("input", { type: valid ? "date" : "text", id: id, name: id, "class": "llm-value" });
      if (!valid) { node.setAttribute("placeholder", "YYYY-MM-DD"); }
      node.value = text;
    } else if (type === "integer" || type === "number") {
      node = el("input", { type: "text", id: id, name: id, "class": "llm-value",
                           inputmode: type === "integer" ? "numeric" : "decimal" });
      node.value = text;
    } else {
      node = el("textarea", { id: id, name: id, rows: "1", "class": "llm-value" });
      node.value = text;
    }
    return node;
  }

  function was(kind, label, value) {
    var p = el("p", { "class": "llm-was llm-was-" + kind }, label + " ");
    p.appendChild(el("del", {}, value === "" ? "(blank)" : value));
    return p;
  }

  function bindRow(row) {
    row.addEventListener("focusin", function () { highlight(row); });
    row.addEventListener("click", function () { highlight(row); });
  }

  function buildRow(root, data, columns) {
    var idx = data.row;
    var reasking = !!data.reask_pending;
    var tr = el("tr", {
      "class": "llm-row" + (data.valid ? "" : " llm-row-invalid") + (data.duplicate ? " llm-row-duplicate" : "") +
        (reasking ? " llm-row-reasking" : ""),
      "data-idx": String(idx), "data-document": data.document === null ? "" : String(data.document),
      "data-valid": data.valid ? "1" : "0", "data-duplicate": data.duplicate ? (data.duplicate_reason || "run") : "",
      "data-quote-start": data.quote_span ? String(data.quote_span[0]) : "",
      "data-quote-end": data.quote_span ? String(data.quote_span[1]) : "", "tabindex": "0"
    });
    tr.appendChild(el("th", { scope: "row", "class": "llm-rownum" }, "Row " + (idx + 1)));
    var decision = el("td", { "class": "llm-decision" });
    var fs = el("fieldset");
    fs.appendChild(el("legend", { "class": "llm-visually-hidden" }, "Decision for row " + (idx + 1)));
    [["accept", "Accept"], ["reject", "Reject"], ["pending", "Undecided"]].forEach(function (pair) {
      var id = "row-" + idx + "-" + pair[0];
      var input = el("input", { type: "radio", id: id, name: "row-" + idx + "-decision", value: pair[0] });
      input.checked = pair[0] === "pending";  // every row starts undecided
      fs.appendChild(input);
      fs.appendChild(el("label", { "for": id }, pair[1]));
    });
    decision.appendChild(fs);
    tr.appendChild(decision);
    var values = data.values || {};
    columns.forEach(function (column, n) {
      var td = el("td", { "class": "llm-cell llm-cell-" + (column.type || "text"), "data-column": column.name });
      var id = "row-" + idx + "-col-" + n;
      td.appendChild(el("label", { "for": id, "class": "llm-cell-label" }, column.name));
      td.appendChild(control(column, values[column.name], id));
      if (data.replaced && display(data.replaced[column.name]) !== display(values[column.name])) {
        td.appendChild(was("reask", "Corrected by re-ask; was", display(data.replaced[column.name])));
      }
      tr.appendChild(td);
    });
    var quote = el("td", { "class": "llm-quote" });
    quote.appendChild(el("span", { "class": "llm-cell-label" }, "Source quote"));
    quote.appendChild(document.createTextNode(" "));
    quote.appendChild(el("span", { "class": "llm-quote-text" }, data.source_quote || ""));
    tr.appendChild(quote);
    var checks = el("td", { "class": "llm-checks" });
    var errors = (data.errors || []).join("; ");
    if (reasking) {
      checks.appendChild(el("p", { "class": "llm-flag llm-flag-reasking" }, "Invalid: " + errors + ". Asking the model to correct it…"));
    } else if (!data.valid) {
      checks.appendChild(el("p", { "class": "llm-flag llm-flag-invalid" }, "Invalid: " + errors));
    }
    if (data.replaced) {
      checks.appendChild(el("p", { "class": "llm-flag llm-flag-reasked" }, "Corrected by re-ask: check the changed values."));
    }
    if (data.duplicate) {
      checks.appendChild(el("p", { "class": "llm-flag" },
        data.duplicate_reason === "table" ? "Duplicate: already in the table" : "Duplicate of an earlier row"));
    }
    if (data.quote_checked !== false && data.source_quote && !data.quote_found) {
      checks.appendChild(el("p", { "class": "llm-flag" }, "Quote not found in the source: check carefully"));
    }
    tr.appendChild(checks);
    tr.querySelectorAll(".llm-value").forEach(function (node) { node.setAttribute("data-initial", node.value); });
    bindRow(tr);
    return tr;
  }

  /* A correction replaces its row in place, keeping what the reviewer already did to it. */
  function replaceRow(old, fresh) {
    var decided = old.querySelector('input[type=radio]:checked');
    if (decided) {
      var same = fresh.querySelector('input[type=radio][value="' + decided.value + '"]');
      if (same) { same.checked = true; }
    }
    old.querySelectorAll(".llm-value").forEach(function (node) {
      if (node.value === node.getAttribute("data-initial")) { return; }
      var twin = fresh.querySelector("#" + CSS.escape(node.id));
      if (twin && twin.tagName === node.tagName) { twin.value = node.value; }
    });
    var focused = old.contains(document.activeElement) ? document.activeElement.id || "row" : null;
    old.replaceWith(fresh);
    if (focused === "row") { fresh.focus(); } else if (focused) {
      var again = document.getElementById(focused);
      if (again) { again.focus(); }
    }
  }

  /* ------------------------------------------------------- review: counts, bulk, keyboard */

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#llm-grid-body tr.llm-row")); }

  function decisionOf(row) {
    var checked = row.querySelector('input[type=radio]:checked');
    return checked ? checked.value : null;
  }

  function decide(row, value) {
    var radio = row.querySelector('input[type=radio][value="' + value + '"]');
    if (radio) { radio.checked = true; }
  }

  function updateCounts(root) {
    var out = root.querySelector("#llm-undecided");
    var insert = root.querySelector("#llm-insert");
    var editable = rows().filter(function (r) { return decisionOf(r) !== null; });
    var undecided = editable.filter(function (r) { return decisionOf(r) === "pending"; }).length;
    var accepted = editable.filter(function (r) { return decisionOf(r) === "accept"; }).length;
    if (out) { out.textContent = undecided + " row(s) undecided"; }
    if (insert) { insert.textContent = (insert.getAttribute("data-label") || "Insert the accepted rows") + " (" + accepted + ")"; }
  }

  function moveTo(row) {
    if (!row) { return; }
    row.focus();
    row.scrollIntoView({ block: "nearest" });
  }

  var TEXT_ENTRY = /^(TEXTAREA|SELECT)$/;

  function initReview(root) {
    var form = root.querySelector("#llm-review-form");
    if (!form) { return; }
    var bulk = root.querySelector("#llm-bulk");
    if (bulk) {
      bulk.hidden = false;
      bulk.addEventListener("click", function (e) {
        var action = e.target.getAttribute("data-llm-bulk");
        if (!action) { return; }
        rows().forEach(function (row) {
          if (decisionOf(row) === null) { return; }
          if (action === "reject-all") { decide(row, "reject"); return; }
          if (row.getAttribute("data-valid") === "1" && !row.getAttribute("data-duplicate") &&
              !row.classList.contains("llm-row-reasking")) { decide(row, "accept"); }
        });
        updateCounts(root);
      });
    }
    form.addEventListener("change", function () { updateCounts(root); });
    form.addEventListener("keydown", function (e) {
      var target = e.target;
      var row = target.closest ? target.closest("tr.llm-row") : null;
      if (!row || e.ctrlKey || e.metaKey || e.altKey) { return; }
      var typing = TEXT_ENTRY.test(target.tagName) || (target.tagName === "INPUT" && target.type !== "radio");
      if (typing) {
        if (e.key === "Escape") { e.preventDefault(); row.focus(); }
        return;
      }
      var list = rows();
      var at = list.indexOf(row);
      var key = e.key;
      // arrow keys move between rows from the row itself (on a radio they pick the decision)
      var arrows = target === row;
      if (key === "j" || (arrows && key === "ArrowDown")) { e.preventDefault(); moveTo(list[at + 1]); }
      else if (key === "k" || (arrows && key === "ArrowUp")) { e.preventDefault(); moveTo(list[at - 1]); }
      else if (key === "a" || key === "r" || key === "u") {
        if (decisionOf(row) === null) { return; }
        e.preventDefault();
        decide(row, { a: "accept", r: "reject", u: "pending" }[key]);
        updateCounts(root);
        if (key !== "u") { moveTo(list[at + 1] || row); }
      } else if (key === "e") {
        var field = row.querySelector(".llm-value");
        if (field) { e.preventDefault(); field.focus(); }
      }
    });
    form.querySelectorAll("textarea.llm-value").forEach(function (t) { t.setAttribute("data-initial", t.value); });
    updateCounts(root);
  }

  /* Text boxes grow with their value: CSS field-sizing where the browser has it, else here. */
  var SIZES_ITSELF = !!(window.CSS && CSS.supports && CSS.supports("field-sizing", "content"));

  function grow(area) {
    if (SIZES_ITSELF || area.tagName !== "TEXTAREA") { return; }
    area.style.height = "auto";
    area.style.height = (area.scrollHeight + 2) + "px";
  }

  /* The review grid (llm_extract_grid.html): the run page's and the enrichment job page's. */
  function initGrid(root) {
    if (!SIZES_ITSELF) {
      root.addEventListener("input", function (e) { grow(e.target); });
      new MutationObserver(function () { root.querySelectorAll("textarea.llm-value").forEach(grow); })
        .observe(root, { childList: true, subtree: true });
      root.querySelectorAll("textarea.llm-value").forEach(grow);
    }
    document.querySelectorAll("tr.llm-row").forEach(bindRow);
    document.querySelectorAll(".llm-value").forEach(function (n) { n.setAttribute("data-initial", n.value); });
    initReview(root);
  }

  function initRun(root) {
    initGrid(root);
    if (root.getAttribute("data-active") !== "1" || !window.EventSource) { return; }
    var columns = readJSON(root, "data-columns") || [];
    var body = root.querySelector("#llm-grid-body");
    var status = root.querySelector("#llm-status");
    var state = root.querySelector("#llm-state");
    var runError = root.querySelector("#llm-run-error");
    var progress = root.querySelector("#llm-progress");
    var count = root.querySelector("#llm-row-count");
    var log = root.querySelector("#llm-chunk-log");
    var insert = root.querySelector("#llm-insert");
    var total = parseInt(progress.getAttribute("data-total"), 10) || 0;
    var done = parseInt(progress.getAttribute("data-done"), 10) || 0;
    var failed = parseInt(progress.getAttribute("data-failed"), 10) || 0;

    function showProgress() {
      progress.querySelector(".llm-progress-text").textContent =
        done + " of " + total + " part(s) done" + (failed ? ", " + failed + " failed" : "");
      var bar = progress.querySelector("progress");
      bar.max = total || 1;
      bar.value = done + failed;
    }

    var url = root.getAttribute("data-events-url") + "?after=" + encodeURIComponent(root.getAttribute("data-last-seq") || "0");
    var source = new EventSource(url);
    // other scripts of the page (llm_extract_pages.js) follow these through DOM events
    ["RowExtracted", "PageRead", "DocumentRead"].forEach(function (type) {
      source.addEventListener(type, function (e) {
        root.dispatchEvent(new CustomEvent("llm-extract:" + type, { detail: JSON.parse(e.data) }));
      });
    });
    source.addEventListener("RunStarted", function (e) {
      var data = JSON.parse(e.data);
      total = done + failed + (data.chunks_total || 0);
      status.textContent = "running";
      showProgress();
    });
    source.addEventListener("RowExtracted", function (e) {
      var data = JSON.parse(e.data);
      if (body.querySelector('tr[data-idx="' + data.row + '"]')) { return; }
      var empty = document.getElementById("llm-empty");
      if (empty) { empty.remove(); }
      body.appendChild(buildRow(root, data, columns));
      count.textContent = String(body.querySelectorAll("tr.llm-row").length);
      updateCounts(root);
    });
    source.addEventListener("RowCorrected", function (e) {
      var data = JSON.parse(e.data);
      var old = body.querySelector('tr[data-idx="' + data.row + '"]');
      var fresh = buildRow(root, data, columns);
      if (old) { replaceRow(old, fresh); } else { body.appendChild(fresh); }
      updateCounts(root);
    });
    source.addEventListener("ChunkDone", function () { done += 1; showProgress(); });
    source.addEventListener("ChunkFailed", function (e) {
      var data = JSON.parse(e.data);
      failed += 1;
      showProgress();
      log.appendChild(el("li", { "class": "llm-error" },
        "Part " + ((data.chunk || {}).index + 1) + " of " + ((data.chunk || {}).document_name || "the document") + " failed: " + data.error));
    });
    source.addEventListener("RunFinished", function (e) {
      var data = JSON.parse(e.data);
      var usage = data.usage || {};
      root.querySelector("#llm-usage").textContent = (usage.input_tokens || 0) + " in / " + (usage.output_tokens || 0) +
        " out" + (data.cost === null || data.cost === undefined ? "" : " · $" + Number(data.cost).toFixed(4));
    });
    source.addEventListener("RunStatus", function (e) {
      var data = JSON.parse(e.data);
      status.textContent = data.status;
      status.className = "llm-status llm-status-" + data.status;
      runError.textContent = data.error || "";
      if (data.status === "running" || data.status === "pending") { return; }
      source.close();
      if (data.status === "done") {
        if (insert) { insert.disabled = false; }
        if (state) {
          var n = body.querySelectorAll("tr.llm-row").length;
          state.textContent = n ? "awaiting review: " + n + " row(s)" : "done: no rows found";
        }
        var cancel = document.getElementById("llm-cancel-form");
        if (cancel) { cancel.remove(); }
      } else {
        window.location.reload();  // shows resume / discard choices
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll('[data-llm-extract="start"]').forEach(initStart);
    document.querySelectorAll('[data-llm-extract="run"]').forEach(initRun);
    document.querySelectorAll('[data-llm-extract="review"]').forEach(initGrid);
  });
})();
