/* The admin's trace page: this document's live events, as they arrive.
 * Follows /ws/subscriptions/<name>/events/ with a filter on the document id (the server
 * sends ids starting with it; only this id is shown). Contract: syncer/live/messages.py.
 * The console keeps no past events: the table starts empty when the page opens. */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("trace-config").textContent);
  var rows = document.querySelector("#trace-events tbody");
  var state = document.getElementById("trace-events-state");
  var MAX_ROWS = 200;
  var delay = 500;

  function cell(tr, text) {
    var td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  function clock(epochSeconds) {
    var d = new Date(epochSeconds * 1000);
    var pad = function (n, w) { return String(n).padStart(w || 2, "0"); };
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
      "." + pad(d.getMilliseconds(), 3);
  }
  function setState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }
  function show(e) {
    var tr = document.createElement("tr");
    tr.dataset.kind = e.kind;
    tr.dataset.op = e.op;
    tr.dataset.position = String(e.position);
    cell(tr, clock(e.commit_time));
    cell(tr, e.kind === "dead_letter" ? "dead letter" : "change");
    cell(tr, e.op);
    cell(tr, e.position_shown);
    cell(tr, e.kind === "dead_letter" ? e.error : e.outcome === "stale" ? "stale (newer version indexed)" : "ok");
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > MAX_ROWS) rows.removeChild(rows.lastChild);
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var path = config.eventsPath.split("/").map(encodeURIComponent).join("/");
    var socket = new WebSocket(scheme + location.host + path);
    setState("connecting", "Connecting…");
    socket.onopen = function () {
      delay = 500;
      socket.send(JSON.stringify({ filter: { op: null, doc_id_prefix: config.docId || null } }));
    };
    socket.onmessage = function (message) {
      var m;
      try { m = JSON.parse(message.data); } catch (err) { return; }
      if (m.kind === "filter") {
        setState("open", "Live.");
      } else if (m.kind === "events") {
        (m.events || []).forEach(function (e) {
          if (e.kind !== "dropped" && e.doc_id === config.docId) show(e);
        });
      }
    };
    socket.onclose = function (event) {
      if (event.code === 4401 || event.code === 4403 || event.code === 4404) {
        setState("refused", { 4401: "Log in again to follow live events.",
          4403: "Live events need the permission to view subscriptions.",
          4404: "No such subscription." }[event.code]);
        return;
      }
      var wait = delay * (0.8 + Math.random() * 0.4);
      delay = Math.min(delay * 2, 10000);
      setState("reconnecting", "Reconnecting in " + Math.ceil(wait / 1000) + " s");
      setTimeout(connect, wait);
    };
  }

  connect();
})();
