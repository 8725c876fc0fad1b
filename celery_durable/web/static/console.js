// celery_durable console: confirmations, "select all", and self-refresh. No framework.
(function () {
  "use strict";

  // Ask before an action; the server asks again (a confirmation page) without this script.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (!question) return;
    var submitter = event.submitter;
    if (submitter && submitter.name === "action") question = submitter.value + ": " + question;
    if (!window.confirm(question)) { event.preventDefault(); return; }
    var confirmField = form.querySelector("input[name=confirm]");
    if (confirmField) confirmField.value = "yes";
  });

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.classList || !box.classList.contains("select-all")) return;
    var form = box.closest("form");
    form.querySelectorAll("input[name=ids]").forEach(function (b) { b.checked = box.checked; });
  });

  // While someone types or selects, a refresh would lose their input: wait.
  function busy() {
    var active = document.activeElement;
    if (active && active.form && !active.form.classList.contains("filters") &&
        (active.tagName === "INPUT" || active.tagName === "TEXTAREA")) return true;
    if (document.querySelector("input[name=ids]:checked")) return true;
    var typed = Array.prototype.some.call(
      document.querySelectorAll("form:not(.filters) input[type=text], form:not(.filters) input:not([type]), form:not(.filters) textarea"),
      function (field) { return field.value !== ""; });
    if (typed) return true;
    return Array.prototype.some.call(document.querySelectorAll("[data-refresh] details[open]"),
      function () { return true; });
  }

  var seconds = parseInt(document.body.getAttribute("data-refresh-seconds") || "0", 10);
  function refresh() {
    if (document.hidden || busy()) { schedule(); return; }
    fetch(window.location.href, { headers: { "X-Console-Refresh": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-refresh][id]").forEach(function (region) {
          var next = fresh.getElementById(region.id);
          if (next && next.innerHTML !== region.innerHTML) region.innerHTML = next.innerHTML;
        });
        seconds = parseInt(fresh.body.getAttribute("data-refresh-seconds") || "0", 10);
      })
      .catch(function () { /* the next round tries again */ })
      .then(schedule);
  }
  function schedule() { if (seconds > 0) window.setTimeout(refresh, seconds * 1000); }
  schedule();
})();
