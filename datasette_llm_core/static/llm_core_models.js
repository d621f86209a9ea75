// The models page: "Test" buttons post their form with fetch and show the
// result next to the button. Without JavaScript the form posts and the page
// comes back with the result at the top.
(function () {
  "use strict";
  function show(output, ok, text) {
    output.textContent = text;
    output.className = "llm-core-result " + (ok ? "llm-core-result-ok" : "llm-core-result-error");
  }
  function describe(result) {
    if (result.ok) {
      return "OK in " + result.latency_ms + " ms: " + (result.output || "(empty answer)");
    }
    var where = result.error_class || "error";
    if (result.status) { where += ", HTTP " + result.status; }
    return "Failed (" + where + "): " + (result.error || "no message");
  }
  document.querySelectorAll("form.llm-core-test").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button");
      var output = form.querySelector(".llm-core-result");
      button.disabled = true;
      show(output, true, "Testing…");
      fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Accept": "application/json",
                  "Content-Type": "application/x-www-form-urlencoded"},
        body: new URLSearchParams(new FormData(form)).toString()
      }).then(function (response) {
        return response.json().catch(function () {
          return {ok: false, error_class: "http", status: response.status,
                  error: "The server answered " + response.status + " without a result."};
        });
      }).then(function (result) {
        show(output, !!result.ok, describe(result));
      }).catch(function (error) {
        show(output, false, "Failed: could not reach the server (" + error + ")");
      }).finally(function () {
        button.disabled = false;
      });
    });
  });
})();
