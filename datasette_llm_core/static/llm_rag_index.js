/* Index page of datasette-llm-rag: follows the latest index job live.
 * The job lives in the state database, so reloading the page picks it up. */
(function () {
  "use strict";
  var box = document.getElementById("llm-rag-job");
  if (!box) return;
  var statusUrl = box.getAttribute("data-status-url");
  var statusText = box.querySelector(".llm-rag-job-status");
  var bar = box.querySelector(".llm-rag-job-progress");
  var job = JSON.parse(box.getAttribute("data-job") || "null");
  var active = function (j) { return j && (j.status === "queued" || j.status === "running"); };

  function show(j) {
    if (!j) return;
    var text = "#" + j.id + ": " + j.status + (j.message ? ": " + j.message : "");
    if (j.total) text += " (" + (j.done || 0) + " of " + j.total + " texts embedded)";
    statusText.textContent = text;
    bar.hidden = false;
    bar.max = j.total || 1;
    bar.value = j.done || 0;
    bar.textContent = (j.done || 0) + " / " + (j.total || "?");
  }
  async function poll() {
    try {
      var response = await fetch(statusUrl, {credentials: "same-origin", headers: {accept: "application/json"}});
      if (!response.ok) return;
      var data = await response.json();
      show(data.job);
      if (active(data.job)) {
        setTimeout(poll, 1000);
      } else if (active(job)) {
        window.location.reload(); /* finished: refresh the table counts */
      }
    } catch (e) {
      setTimeout(poll, 3000);
    }
  }
  if (active(job)) { show(job); setTimeout(poll, 500); }
})();
