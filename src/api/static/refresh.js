// Refreshes the rules table and the health line every few seconds without
// reloading the page, so scroll and focus stay where they are. The page is
// complete without it.
(function () {
  "use strict";
  var rules = document.getElementById("rules");
  var health = document.getElementById("health");
  if (!rules || !health) { return; }
  var filter = rules.getAttribute("data-filter");
  var file = rules.getAttribute("data-file");
  var q = (filter ? "&state=" + encodeURIComponent(filter) : "") +
    (file ? "&file=" + encodeURIComponent(file) : "");
  function busy() {
    var a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "BUTTON");
  }
  function load(part, el) {
    return fetch("/?part=" + part + q, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { el.innerHTML = html; });
  }
  setInterval(function () {
    if (document.hidden || busy()) { return; }
    load("rules", rules).catch(function () {});
    load("health", health).catch(function () {});
  }, 3000);
})();
