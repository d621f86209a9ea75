/* Ask page of datasette-llm-rag: streams a cited answer into the page.
 * Model text is only ever put into the page with textContent; citation
 * links are built from numbers the server validated, pointing at row URLs
 * the server sent (site-relative paths only). */
(function () {
  "use strict";
  var form = document.getElementById("llm-rag-form");
  if (!form) return;
  var config = JSON.parse(form.getAttribute("data-config") || "{}");
  var section = document.getElementById("llm-rag-answer");
  var textBox = section.querySelector(".llm-rag-answer-text");
  var statusBox = section.querySelector(".llm-rag-status");
  var metaBox = section.querySelector(".llm-rag-meta");
  var citedList = section.querySelector(".llm-rag-cited");
  var feedback = section.querySelector(".llm-rag-feedback");
  var results = document.getElementById("llm-rag-results");
  var answerId = null;
  var rowsByN = {};

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function localHref(href) {
    return typeof href === "string" && href.charAt(0) === "/" && href.charAt(1) !== "/" && href.indexOf("\\") === -1;
  }
  /* Rows arrive described by the server: label (the row's title or label
   * column), table_title (the table's metadata title), relevance (words) and
   * relevance_detail (the numbers, shown on hover only). */
  function rowName(row) {
    return row.label || row.title || ("Row " + row.pk);
  }
  /* Links out of an answer open in a new tab, so the answer stays on this page. */
  function newTab(a) {
    a.target = "_blank";
    a.rel = "noopener";
    return a;
  }
  function rowLink(row, keepAnswer) {
    var label = rowName(row);
    if (!localHref(row.url)) return el("span", label);
    var a = el("a", label);
    a.href = row.url;
    return keepAnswer ? newTab(a) : a;
  }
  function rowItem(row, numbered) {
    var li = el("li");
    if (numbered) li.appendChild(el("span", "[" + row.n + "] ", "llm-rag-num"));
    li.appendChild(rowLink(row));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", "in " + (row.table_title || row.table), "llm-rag-source"));
    li.appendChild(document.createTextNode(" "));
    var score = el("span", row.relevance || "", "llm-rag-score");
    if (row.relevance_detail) score.title = row.relevance_detail;
    li.appendChild(score);
    if (row.stale) {
      li.appendChild(document.createTextNode(" "));
      var stale = el("span", "changed since the index was refreshed", "llm-rag-stale");
      stale.title = "Matched on the text indexed before the row changed; shown as it is now.";
      li.appendChild(stale);
    }
    li.appendChild(el("p", String(row.snippet || row.text || "").slice(0, 400), "llm-rag-snippet"));
    return li;
  }
  function showRows(rows, heading, numbered) {
    results.textContent = "";
    results.appendChild(el("h2", heading));
    if (!rows.length) {
      results.appendChild(el("p", "No rows matched."));
      return;
    }
    /* Strong matches first; weaker ones after their own heading. */
    var strong = rows.filter(function (row) { return row.relevant !== false; });
    var weak = rows.filter(function (row) { return row.relevant === false; });
    if (strong.length) {
      var ol = el("ol", null, "llm-rag-hits");
      strong.forEach(function (row) { ol.appendChild(rowItem(row, numbered)); });
      results.appendChild(ol);
    } else {
      results.appendChild(el("p", "No row is a close match for this question."));
    }
    if (weak.length) {
      results.appendChild(el("h3", "Weaker matches", "llm-rag-weak-heading"));
      results.appendChild(el("p", "These rows are less similar to the question: check that they are about the same thing.", "llm-rag-note"));
      var weakList = el("ol", null, "llm-rag-hits llm-rag-weak");
      weak.forEach(function (row) { weakList.appendChild(rowItem(row, numbered)); });
      results.appendChild(weakList);
    }
  }
  function renderBlocks(blocks) {
    textBox.textContent = "";
    var list = null;
    blocks.forEach(function (block) {
      var node;
      if (block.type === "li") {
        if (!list) { list = el("ul"); textBox.appendChild(list); }
        node = el("li");
        list.appendChild(node);
      } else {
        list = null;
        node = el("p");
        textBox.appendChild(node);
      }
      block.runs.forEach(function (run) {
        if (run.type === "cite") {
          var row = rowsByN[run.n];
          var label = "[" + Number(run.n) + "]";
          if (row && localHref(row.url)) {
            var a = newTab(el("a", label, "llm-rag-cite"));
            a.href = row.url;
            a.title = rowName(row) + " (" + (row.table_title || row.table) + ")";
            node.appendChild(a);
          } else {
            node.appendChild(el("span", label, "llm-rag-cite"));
          }
        } else if (run.type === "strong") {
          node.appendChild(el("strong", run.text));
        } else {
          node.appendChild(document.createTextNode(run.text));
        }
      });
    });
  }
  function showCited(rows) {
    citedList.textContent = "";
    rows.forEach(function (row) {
      var li = el("li");
      li.value = row.n;
      li.appendChild(rowLink(row, true));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", "in " + (row.table_title || row.table), "llm-rag-source"));
      li.appendChild(el("p", String(row.snippet || row.text || "").slice(0, 400), "llm-rag-snippet"));
      citedList.appendChild(li);
    });
  }
  function handle(eventName, data) {
    if (eventName === "sources") {
      rowsByN = {};
      data.rows.forEach(function (row) { rowsByN[row.n] = row; });
      showRows(data.rows, data.mode === "answer" ? "Rows given to the model" : "Matching rows",
               data.mode === "answer");
      if (data.mode === "answer") statusBox.textContent = "Writing the answer…";
    } else if (eventName === "delta") {
      textBox.appendChild(document.createTextNode(data.text));
    } else if (eventName === "done") {
      answerId = data.answer_id;
      renderBlocks(data.blocks);
      showCited(data.cited_rows);
      statusBox.textContent = data.dropped && data.dropped.length ?
        "Removed citations that did not match a retrieved row: " + data.dropped.join(", ") : "";
      metaBox.textContent = (data.cached ? "From the cache: written earlier for the same question and rows, no new model call. " : "") +
        "Model " + data.model + ", prompt " + data.prompt_version + ". Check every cited row before using this answer. ";
      if (localHref(data.permalink)) {
        var link = el("a", "Permalink to this answer", "llm-rag-permalink");
        link.href = data.permalink;
        metaBox.appendChild(link);
      }
      if (data.notice && data.notice.kind === "uncited") {
        // Nothing backs this answer: say so, and offer the rows as plain search results.
        section.classList.add("llm-rag-uncited");
        statusBox.textContent = data.notice.message;
        showRows(data.search_rows || [], "Search results (the answer cites none of them)", false);
      }
      feedback.hidden = false;
    } else if (eventName === "notice") {
      statusBox.textContent = data.message;
      if (data.kind === "limit") section.classList.add("llm-rag-limited");
    } else if (eventName === "error") {
      section.classList.add("llm-rag-failed");
      statusBox.textContent = "Failed: " + data.message;
      if (data.partial) {
        textBox.textContent = data.partial;
        textBox.appendChild(el("p", "(answer incomplete: the model failed part way)", "llm-rag-incomplete"));
      }
    }
  }
  function parseEvents(buffer, onEvent) {
    var parts = buffer.split("\n\n");
    var rest = parts.pop();
    parts.forEach(function (chunk) {
      var name = "message", data = "";
      chunk.split("\n").forEach(function (line) {
        if (line.indexOf("event: ") === 0) name = line.slice(7);
        else if (line.indexOf("data: ") === 0) data += line.slice(6);
      });
      if (data) onEvent(name, JSON.parse(data));
    });
    return rest;
  }
  function selectedTables() {
    return Array.prototype.map.call(form.querySelectorAll("input[name=table]:checked"), function (i) { return i.value; });
  }
  function headers() {
    var h = {"content-type": "application/json", "accept": "text/event-stream"};
    if (config.csrftoken) h["x-csrftoken"] = config.csrftoken;
    return h;
  }
  async function ask(question) {
    section.hidden = false;
    section.classList.remove("llm-rag-failed");
    textBox.textContent = "";
    citedList.textContent = "";
    metaBox.textContent = "";
    feedback.hidden = true;
    statusBox.textContent = "Searching…";
    section.setAttribute("aria-busy", "true"); /* read the answer once, not every piece */
    try {
      var response = await fetch(config.ask, {
        method: "POST", credentials: "same-origin", headers: headers(),
        body: JSON.stringify({q: question, tables: selectedTables(), stream: true})
      });
      if (!response.ok || !response.body) {
        var problem = {};
        try { problem = await response.json(); } catch (e) { /* not JSON */ }
        handle("error", {message: problem.error || ("HTTP " + response.status)});
        return;
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      for (;;) {
        var step = await reader.read();
        if (step.done) break;
        buffer = parseEvents(buffer + decoder.decode(step.value, {stream: true}), handle);
      }
      parseEvents(buffer + "\n\n", handle);
    } catch (err) {
      handle("error", {message: "connection lost (" + err.message + ")"});
    } finally {
      section.setAttribute("aria-busy", "false");
    }
  }
  form.addEventListener("submit", function (ev) {
    if (!config.answers) return; /* search only: the server renders results */
    ev.preventDefault();
    var q = form.querySelector("textarea[name=q]").value.trim();
    if (!q) return;
    ask(q);
  });
  feedback.addEventListener("click", async function (ev) {
    var button = ev.target.closest("button[data-rating]");
    if (!button || !answerId) return;
    var note = feedback.querySelector(".llm-rag-feedback-status");
    var h = {"content-type": "application/json"};
    if (config.csrftoken) h["x-csrftoken"] = config.csrftoken;
    var response = await fetch(config.feedback, {
      method: "POST", credentials: "same-origin", headers: h,
      body: JSON.stringify({answer_id: answerId, rating: button.getAttribute("data-rating"),
        comment: document.getElementById("llm-rag-comment").value})
    });
    note.textContent = response.ok ? "Thank you: feedback saved." : "Feedback could not be saved.";
  });
  /* Arriving from a question box on another page of this site: answer at once
   * (the server decides, from the browser's Sec-Fetch-Site header). */
  var initial = form.querySelector("textarea[name=q]").value.trim();
  if (config.autostart && initial) ask(initial);
})();
