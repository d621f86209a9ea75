/* datasette-llm-newsroom: the run page's page viewer (plain JS, no build step).
 *
 * Shows the page of the selected review row (an image as uploaded, or a PDF page
 * rendered by the server) and boxes the row's quote where OCR or the PDF's text
 * layer gave positions. Rows streamed in later bring their page and boxes in the
 * "llm-extract:RowExtracted" events that llm_extract.js re-dispatches.
 */
(function () {
  "use strict";

  function readJSON(node, name) {
    try { return JSON.parse(node.getAttribute(name) || "null"); } catch (e) { return null; }
  }

  function init(viewer) {
    var documents = readJSON(viewer, "data-documents") || [];
    var places = readJSON(viewer, "data-places") || {};
    var byIdx = {};
    documents.forEach(function (d) { byIdx[String(d.idx)] = d; });
    var caption = viewer.querySelector("#llm-page-caption");
    var image = viewer.querySelector("#llm-page-image");
    var boxes = viewer.querySelector("#llm-page-boxes");
    var missing = viewer.querySelector("#llm-page-missing");
    var reading = viewer.querySelector("#llm-reading");
    var current = { doc: null, page: 0, boxes: [] };

    function drawBoxes(list) {
      boxes.textContent = "";
      (list || []).forEach(function (b) {
        var box = document.createElement("div");
        box.className = "llm-quote-box";
        box.style.left = (b[0] * 100) + "%";
        box.style.top = (b[1] * 100) + "%";
        box.style.width = Math.max(0.2, (b[2] - b[0]) * 100) + "%";
        box.style.height = Math.max(0.2, (b[3] - b[1]) * 100) + "%";
        boxes.appendChild(box);
      });
    }

    function show(docIdx, page, quoteBoxes, note) {
      var doc = byIdx[String(docIdx)];
      if (!doc) { return false; }
      page = Math.max(0, Math.min(doc.pages - 1, page || 0));
      current = { doc: doc, page: page, boxes: quoteBoxes || [] };
      var where = doc.name + (doc.kind === "pdf" ? ", page " + (page + 1) + " of " + doc.pages : "");
      if (!doc.kept) {
        image.hidden = true;
        drawBoxes([]);
        missing.hidden = false;
        missing.textContent = "The file is not shown: " + doc.why_not + ".";
        caption.textContent = where;
        return true;
      }
      missing.hidden = true;
      var src = doc.url + page;
      if (image.getAttribute("src") !== src) {
        image.hidden = true;
        drawBoxes([]);
        image.onload = function () { image.hidden = false; drawBoxes(current.boxes); };
        image.setAttribute("src", src);
      } else {
        image.hidden = false;
        drawBoxes(current.boxes);
      }
      image.alt = "Page " + (page + 1) + " of " + doc.name;
      var ocr = doc.ocr_pages && doc.ocr_pages.indexOf(page) >= 0 ? " (text read by OCR)" : "";
      caption.textContent = where + ocr + (note ? " · " + note : "");
      return true;
    }

    function showRow(tr) {
      var idx = tr.getAttribute("data-idx");
      var place = places[idx];
      var docIdx = place ? place.document : tr.getAttribute("data-document");
      if (docIdx === "" || docIdx === null || docIdx === undefined || !byIdx[String(docIdx)]) { return; }
      var label = "row " + (parseInt(idx, 10) + 1);
      if (!place || place.page === null || place.page === undefined) {
        show(docIdx, 0, [], label + ": the quote's page is not known");
      } else if (place.boxes && place.boxes.length) {
        show(docIdx, place.page, place.boxes, label + ": quote marked");
      } else {
        show(docIdx, place.page, [], label + ": quote on this page, its position is not known");
      }
    }

    var grid = document.getElementById("llm-grid-body");
    if (grid) {
      ["focusin", "click"].forEach(function (type) {
        grid.addEventListener(type, function (e) {
          var tr = e.target.closest ? e.target.closest("tr.llm-row") : null;
          if (tr) { showRow(tr); }
        });
      });
    }
    viewer.querySelectorAll("[data-llm-page-step]").forEach(function (button) {
      button.addEventListener("click", function () {
        if (!current.doc) { return; }
        var step = parseInt(button.getAttribute("data-llm-page-step"), 10);
        show(current.doc.idx, current.page + step, [], null);
      });
    });
    var root = viewer.closest("[data-llm-extract]") || document;
    root.addEventListener("llm-extract:RowExtracted", function (e) {
      var data = e.detail || {};
      if (data.quote_page !== null && data.quote_page !== undefined) {
        places[String(data.row)] = { document: data.document, page: data.quote_page, boxes: data.quote_boxes || [] };
      }
    });
    root.addEventListener("llm-extract:PageRead", function (e) {
      var data = e.detail || {};
      var doc = byIdx[String(data.document)];
      var name = doc ? doc.name : "document " + (data.document + 1);
      var how = data.source === "ocr" ? "read by OCR" : data.source === "text" ? "text layer read" :
        data.source === "skipped" ? "not read" : "no text found";
      reading.textContent = "Reading " + name + ": page " + (data.page + 1) + " of " + data.pages + " " + how +
        (data.seconds ? " in " + Number(data.seconds).toFixed(1) + " s" : "") + (data.error ? ". " + data.error : ".");
      if (doc && data.source === "ocr" && doc.ocr_pages.indexOf(data.page) < 0) { doc.ocr_pages.push(data.page); }
    });
    var first = documents.filter(function (d) { return d.kept; })[0] || documents[0];
    if (first) { show(first.idx, 0, [], null); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var viewer = document.getElementById("llm-pages");
    if (viewer) { init(viewer); }
  });
})();
