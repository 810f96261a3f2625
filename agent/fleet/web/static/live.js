// Live updates without a framework: the page's live region (data-live = its event stream URL)
// is replaced by each "fragment" the server sends. EventSource reconnects by itself.
(function () {
  var region = document.querySelector("[data-live]");
  if (!region || !window.EventSource) return;
  var source = new EventSource(region.getAttribute("data-live"));
  source.addEventListener("fragment", function (e) {
    region.innerHTML = e.data;
    document.body.setAttribute("data-updates", String(Number(document.body.getAttribute("data-updates") || 0) + 1));
  });
  source.addEventListener("open", function () { document.body.setAttribute("data-live-state", "open"); });
  source.addEventListener("error", function () { document.body.setAttribute("data-live-state", "reconnecting"); });
})();
