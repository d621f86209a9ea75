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

  function initStart(root) {
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
    pre.textContent = "";
    pre.appendChild(document.createTextNode(text.slice(0, start)));
    var mark = el("mark", {}, text.slice(start, end));
    pre.appendChild(mark);
    pre.appendChild(document.createTextNode(text.slice(end)));
    // Scroll the source panel only: moving the page under the pointer would
    // make a click on the row's Accept/Reject controls land somewhere else.
    pre.scrollTop = Math.max(0, mark.offsetTop - pre.clientHeight / 3);
  }

  function bindRow(row) {
    row.addEventListener("focusin", function () { highlight(row); });
    row.addEventListener("click", function () { highlight(row); });
  }

  function buildRow(root, data, columns) {
    var idx = data.row;
    var tr = el("tr", {
      "class": "llm-row" + (data.valid ? "" : " llm-row-invalid") + (data.duplicate ? " llm-row-duplicate" : ""),
      "data-idx": String(idx), "data-document": data.document === null ? "" : String(data.document),
      "data-quote-start": data.quote_span ? String(data.quote_span[0]) : "",
      "data-quote-end": data.quote_span ? String(data.quote_span[1]) : "", "tabindex": "0"
    });
    tr.appendChild(el("th", { scope: "row" }, idx + 1));
    var decision = el("td", { "class": "llm-decision" });
    var fs = el("fieldset");
    fs.appendChild(el("legend", { "class": "llm-visually-hidden" }, "Decision for row " + (idx + 1)));
    var initial = data.valid && !data.duplicate ? "accept" : "pending";
    [["accept", "Accept"], ["reject", "Reject"], ["pending", "Undecided"]].forEach(function (pair) {
      var id = "row-" + idx + "-" + pair[0];
      var input = el("input", { type: "radio", id: id, name: "row-" + idx + "-decision", value: pair[0] });
      input.checked = pair[0] === initial;
      fs.appendChild(input);
      fs.appendChild(el("label", { "for": id }, pair[1]));
    });
    decision.appendChild(fs);
    tr.appendChild(decision);
    columns.forEach(function (name, n) {
      var td = el("td");
      var id = "row-" + idx + "-col-" + n;
      td.appendChild(el("label", { "for": id, "class": "llm-visually-hidden" }, "Row " + (idx + 1) + " " + name));
      var input = el("input", { type: "text", id: id, name: id });
      input.value = display((data.values || {})[name]);
      td.appendChild(input);
      tr.appendChild(td);
    });
    tr.appendChild(el("td", { "class": "llm-quote" }, data.source_quote || ""));
    var checks = el("td", { "class": "llm-checks" });
    if (!data.valid) { checks.appendChild(el("p", { "class": "llm-flag llm-flag-invalid" }, "Invalid: " + (data.errors || []).join("; "))); }
    if (data.duplicate) {
      checks.appendChild(el("p", { "class": "llm-flag" },
        data.duplicate_reason === "table" ? "Duplicate: already in the table" : "Duplicate of an earlier row"));
    }
    if (data.quote_checked !== false && data.source_quote && !data.quote_found) {
      checks.appendChild(el("p", { "class": "llm-flag" }, "Quote not found in the source: check carefully"));
    }
    tr.appendChild(checks);
    bindRow(tr);
    return tr;
  }

  function initRun(root) {
    document.querySelectorAll("tr.llm-row").forEach(bindRow);
    if (root.getAttribute("data-active") !== "1" || !window.EventSource) { return; }
    var columns = readJSON(root, "data-columns") || [];
    var body = root.querySelector("#llm-grid-body");
    var status = root.querySelector("#llm-status");
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
  });
})();
