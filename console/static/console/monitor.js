/* The live monitor page: follows /ws/monitor/ and one subscription's event tail.
 * Message contract: syncer/live/messages.py. No framework, no network beyond our server. */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("monitor-config").textContent);
  var OFFLINE_MS = config.offlineAfter * 1000;
  var WINDOW_S = config.chartSeconds;
  var MAX_ROWS = 500;
  var MAX_HELD = 2000;
  var LABELS = {
    stopped: "Stopped", starting: "Starting", snapshotting: "Snapshotting",
    streaming: "Streaming", caught_up: "Caught up", reconnecting: "Reconnecting",
    sink_unavailable: "Sink unavailable", backpressure: "Backpressure", error: "Error",
    paused: "Paused"
  };

  var baseTitle = document.title;

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function wsUrl(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  }
  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_, k) { return encodeURIComponent(values[k]); });
  }
  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 10) return value.toFixed(1) + " s";
    if (value < 120) return Math.round(value) + " s";
    if (value < 7200) return Math.floor(value / 60) + " m " + Math.round(value % 60) + " s";
    return (value / 3600).toFixed(1) + " h";
  }
  function level(value, warn, bad) {
    if (value === null || value === undefined) return "";
    return value >= bad ? "bad" : value >= warn ? "warn" : "";
  }
  function clock(epochSeconds) {
    var d = new Date(epochSeconds * 1000);
    var pad = function (n, w) { return String(n).padStart(w || 2, "0"); };
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
      "." + pad(d.getMilliseconds(), 3);
  }
  function setPill(node, state, css, text, title) {
    node.dataset.state = state;
    node.className = "pill " + css;
    node.textContent = text;
    if (title !== undefined) node.title = title;
    if (node.id === "worker") {
      document.title = (state === "offline" ? "Worker offline · " : "") + baseTitle;
    }
  }

  /* A websocket that comes back by itself: 0.5 s, 1 s, 2 s ... 10 s between tries. */
  function LiveSocket(path, handlers) {
    this.path = path;
    this.handlers = handlers;
    this.delay = 500;
    this.closed = false;
    this.socket = null;
    this.timer = null;
    this.connect();
  }
  LiveSocket.prototype.connect = function () {
    var self = this;
    if (self.closed) return;
    self.handlers.state("connecting", "Connecting…");
    var socket = new WebSocket(wsUrl(self.path));
    self.socket = socket;
    socket.onopen = function () {
      self.delay = 500;
      self.handlers.state("open", "Live");
      if (self.handlers.open) self.handlers.open(self);
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      self.handlers.message(message);
    };
    socket.onclose = function (event) {
      if (self.socket !== socket || self.closed) return;
      if (event.code === 4401 || event.code === 4403 || event.code === 4404) {
        self.closed = true;
        self.handlers.state("refused", { 4401: "Log in again",
          4403: "Staff with the permission to view subscriptions only",
          4404: "No such subscription" }[event.code]);
        return;
      }
      var wait = self.delay * (0.8 + Math.random() * 0.4);
      self.delay = Math.min(self.delay * 2, 10000);
      // 4429: this user holds too many live streams; one may close, so keep trying.
      var why = event.code === 4429 ? "Too many live tabs open; retrying in " : "Reconnecting in ";
      self.handlers.state("reconnecting", why + Math.ceil(wait / 1000) + " s");
      self.timer = setTimeout(function () { self.connect(); }, wait);
    };
  };
  LiveSocket.prototype.send = function (message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  };
  LiveSocket.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
  };

  /* ---- the subscriptions table ------------------------------------------------- */

  var subs = {};  // name -> {meta, tr, cells, times, lags, chart, seenAt}
  var tbody = document.querySelector("#subscriptions tbody");

  function sparkline(target, width, height, axes) {
    if (typeof uPlot === "undefined") return null;
    var now = Date.now() / 1000;
    return new uPlot({
      width: width, height: height,
      legend: { show: false },
      cursor: { show: axes, drag: { x: false, y: false } },
      select: { show: false },
      scales: {
        x: { time: true, range: function () { var t = Date.now() / 1000; return [t - WINDOW_S, t]; } },
        // From just below 0, so that a caught-up subscription's flat line stays visible.
        y: { range: function (u, min, max) {
          var top = Math.max(1, (max || 0) * 1.15);
          return [-top * 0.06, top];
        } }
      },
      axes: axes ? [
        { stroke: "#667085", grid: { stroke: "#eef0f3" }, ticks: { show: false }, size: 24,
          space: 70, values: function (u, vals) {
            return vals.map(function (v) { return clock(v).slice(0, 8); });
          } },
        { stroke: "#667085", grid: { stroke: "#eef0f3" }, ticks: { show: false }, size: 44,
          values: function (u, vals) { return vals.map(function (v) { return v + " s"; }); } }
      ] : [{ show: false }, { show: false }],
      series: [{}, { label: "lag (s)", stroke: "#2f6fde", fill: "rgba(47,111,222,.12)", width: 1.5,
        spanGaps: false, points: { show: false } }]
    }, [[now - WINDOW_S, now], [null, null]], target);
  }

  function addRow(name, meta) {
    var empty = tbody.querySelector("tr.empty");
    if (empty) empty.remove();
    var tr = el("tr", { "data-subscription": name, tabindex: "0" });
    tr.innerHTML =
      '<td class="name"></td><td><span class="badge" data-field="status"></span>' +
      '<div class="sub msg" data-field="message"></div></td>' +
      '<td class="num" data-field="lag">–</td><td class="num" data-field="staleness">–</td>' +
      '<td class="num" data-field="throughput">–</td><td class="num" data-field="buffer">–</td>' +
      '<td class="num" data-field="dead_letters"></td><td class="num" data-field="verified">–</td>' +
      '<td class="num" data-field="live_subscriptions">–</td><td class="mono" data-field="checkpoint">–</td>' +
      '<td class="chart" data-field="chart"></td><td class="num" data-field="age">–</td>';
    tr.querySelector(".name").appendChild(el("span", {}, name));
    var rows = Array.prototype.slice.call(tbody.querySelectorAll("tr[data-subscription]"));
    var after = rows.filter(function (r) { return r.dataset.subscription > name; })[0];
    tbody.insertBefore(tr, after || null);
    return register(tr, meta || { name: name, dead_letters: 0, dead_letters_url: null });
  }

  function register(tr, meta) {
    var cells = {};
    tr.querySelectorAll("[data-field]").forEach(function (c) { cells[c.dataset.field] = c; });
    var sub = { meta: meta, tr: tr, cells: cells, times: [], lags: [], seenAt: null, chart: null };
    sub.chart = sparkline(cells.chart, 210, 30, false);
    subs[meta.name] = sub;
    tr.addEventListener("click", function (e) {
      if (e.target.closest("a")) return;
      select(meta.name);
    });
    tr.addEventListener("keydown", function (e) { if (e.key === "Enter") select(meta.name); });
    if (meta.lag !== null && meta.lag !== undefined) pushLag(sub, Date.now() / 1000, meta.lag);
    return sub;
  }

  function pushLag(sub, at, lag) {
    sub.times.push(at);
    sub.lags.push(lag === undefined ? null : lag);
    var cutoff = Date.now() / 1000 - WINDOW_S - 5;
    while (sub.times.length && sub.times[0] < cutoff) { sub.times.shift(); sub.lags.shift(); }
  }

  function setBadge(cell, status, message) {
    cell.className = "badge badge-" + status;
    cell.dataset.status = status;
    cell.textContent = LABELS[status] || status.replace(/_/g, " ");
    cell.title = message || "";
  }

  function deadLetterLink(meta, docId) {
    if (!meta.dead_letters_url) return "/admin/syncer/deadletter/?q=" + encodeURIComponent(docId);
    return meta.dead_letters_url + (docId ? "&q=" + encodeURIComponent(docId) : "");
  }

  // The last verification of the index against its source: how many documents differed.
  function showVerification(cell, name, v) {
    cell.textContent = "";
    if (!v) { cell.textContent = v === null ? "never" : "–"; return; }
    var text, cls = "";
    if (v.running) { text = "running"; }
    else if (v.failed) { text = "failed"; cls = "bad"; }
    else if (v.finished_at === undefined) { text = "–"; }
    else {
      var left = Math.max(0, v.drifted - (v.repaired || 0));
      text = v.drifted + " differ" + (v.repaired ? ", " + v.repaired + " repaired" : "");
      cls = left > 0 ? "bad" : "";
    }
    var link = el("a", { href: "/admin/syncer/subscription/verifications/?subscription=" +
      encodeURIComponent(name) }, text);
    link.className = cls;
    if (v.finished_at) {
      link.title = "last ended " + new Date(v.finished_at * 1000).toLocaleString() + ": " +
        v.checked + " checked";
    }
    cell.appendChild(link);
  }

  function onSnapshot(s) {
    var sub = subs[s.subscription] || addRow(s.subscription);
    var c = sub.cells;
    sub.seenAt = Date.now();
    setBadge(c.status, s.status, s.message);
    c.message.textContent = s.message || "";
    c.message.title = s.message || "";
    c.lag.textContent = seconds(s.lag);
    c.lag.className = "num " + level(s.lag, 10, 60);
    c.staleness.textContent = seconds(s.staleness);
    c.staleness.className = "num " + level(s.staleness, 30, 300);
    c.throughput.textContent = (s.throughput || 0).toFixed(1) + "/s";
    c.buffer.textContent = String(s.buffer) + (s.backpressure ? " ⏸" : "");
    c.buffer.className = "num" + (s.backpressure ? " warn" : "");
    c.buffer.title = s.backpressure ? "Backpressure: the worker stopped reading the source" : "";
    c.dead_letters.textContent = "";
    var dl = el("a", { href: deadLetterLink(sub.meta, "") }, String(s.dead_letters));
    if (s.dead_letters > 0) dl.className = "bad";
    c.dead_letters.appendChild(dl);
    showVerification(c.verified, s.subscription, s.verification);
    // Absent from an older worker's snapshot: unknown, not zero.
    c.live_subscriptions.textContent =
      s.live_subscriptions === undefined ? "–" : String(s.live_subscriptions);
    c.checkpoint.textContent = s.checkpoint_shown || "–";
    c.checkpoint.title = s.checkpoint === null ? "" : "position " + s.checkpoint;
    c.checkpoint.dataset.checkpoint = s.checkpoint === null ? "" : String(s.checkpoint);
    c.age.dataset.worker = s.worker;
    c.age.title = "from worker " + s.worker;
    pushLag(sub, Date.now() / 1000, s.lag);
  }

  /* ---- workers: a heartbeat a second; none for 3 s means offline -------------- */

  var workers = {};  // worker id -> {seenAt, subscriptions}
  var monitorOpenAt = null;
  var connPill = $("conn");
  var workerPill = $("worker");

  function onHeartbeat(h) {
    workers[h.worker] = { seenAt: Date.now(), subscriptions: h.subscriptions || [],
      published: h.published, dropped: h.dropped };
  }

  function refreshWorkers() {
    var now = Date.now();
    if (monitorOpenAt === null) {
      setPill(workerPill, "unknown", "pill-wait", "Worker: no connection", "");
      return;
    }
    var online = Object.keys(workers).filter(function (id) {
      return now - workers[id].seenAt <= OFFLINE_MS;
    });
    if (online.length) {
      var names = online.map(function (id) {
        var w = workers[id];
        return id + " (" + w.subscriptions.join(", ") + "; " + w.published + " events sent, " +
          w.dropped + " summarised)";
      });
      setPill(workerPill, "online", "pill-ok",
        online.length === 1 ? "Worker online" : online.length + " workers online", names.join("\n"));
    } else if (now - monitorOpenAt <= OFFLINE_MS) {
      setPill(workerPill, "waiting", "pill-wait", "Waiting for worker…", "");
    } else {
      var last = Object.keys(workers).map(function (id) { return workers[id].seenAt; });
      var since = last.length ? Math.round((now - Math.max.apply(null, last)) / 1000) : null;
      setPill(workerPill, "offline", "pill-bad", "Worker offline",
        since === null ? "No heartbeat since the page connected" : "Last heartbeat " + since + " s ago");
    }
  }

  function refreshRows() {
    var now = Date.now();
    Object.keys(subs).forEach(function (name) {
      var sub = subs[name];
      if (sub.seenAt === null) return;
      var age = (now - sub.seenAt) / 1000;
      sub.cells.age.textContent = age < 1 ? "now" : Math.floor(age) + " s ago";
      var stale = age * 1000 > OFFLINE_MS;
      sub.tr.classList.toggle("stale", stale);
      sub.cells.age.className = "num" + (stale ? " bad" : "");
      sub.cells.age.title = stale ? "No snapshot for " + Math.floor(age) + " s: the values are old"
        : "from worker " + (sub.cells.age.dataset.worker || "?");
      if (sub.chart) sub.chart.setData([sub.times, sub.lags]);
    });
    if (detailChart && selected && subs[selected]) {
      detailChart.setData([subs[selected].times, subs[selected].lags]);
    }
  }

  new LiveSocket(config.monitorPath, {
    state: function (state, text) {
      if (state === "open") monitorOpenAt = Date.now();
      else monitorOpenAt = null;
      setPill(connPill, state, state === "open" ? "pill-ok" : state === "refused" ? "pill-bad" : "pill-wait",
        state === "open" ? "Connected" : text);
      if (state === "refused") connPill.innerHTML = '<a href="/admin/login/?next=/console/">' + text + "</a>";
      refreshWorkers();
    },
    message: function (m) {
      if (m.kind === "snapshot") onSnapshot(m);
      else if (m.kind === "heartbeat") onHeartbeat(m);
    }
  });

  /* ---- the event tail of the selected subscription ---------------------------- */

  var selected = null;
  var tail = null;
  var paused = false;
  var held = [];
  var dropped = 0;
  var detailChart = null;
  var rowsBody = $("tail-rows");
  var form = $("tail-filter");
  var tailPill = $("tail-conn");
  var pauseButton = $("tail-pause");

  function currentFilter() {
    return {
      op: form.elements.op.value || null,
      doc_id_prefix: form.elements.doc_id_prefix.value.trim() || null
    };
  }

  function matches(tr, filter) {
    if (tr.classList.contains("dropped")) return true;
    if (filter.op && tr.dataset.op !== filter.op) return false;
    if (filter.doc_id_prefix && tr.dataset.doc.indexOf(filter.doc_id_prefix) !== 0) return false;
    return true;
  }

  function applyFilter() {
    var filter = currentFilter();
    rowsBody.querySelectorAll("tr").forEach(function (tr) { tr.hidden = !matches(tr, filter); });
    if (tail) tail.send({ filter: filter });
    countRows();
  }

  function countRows() {
    $("tail-count").textContent = rowsBody.querySelectorAll("tr:not([hidden]):not(.dropped)").length;
    $("tail-held").textContent = held.length;
    $("tail-dropped").textContent = dropped;
  }

  function eventRow(name, e) {
    var meta = subs[name] ? subs[name].meta : { name: name };
    if (e.kind === "dropped") {
      var d = el("tr", { class: "dropped fresh" });
      d.appendChild(el("td", { colspan: "7" },
        e.dropped + " events not shown: the worker's rate limit for live events was reached"));
      return d;
    }
    var tr = el("tr", { class: e.kind + " fresh", "data-op": e.op, "data-doc": e.doc_id,
      "data-position": String(e.position) });
    tr.appendChild(el("td", { class: "mono" }, clock(e.commit_time)));
    tr.appendChild(el("td", { class: "op-" + e.op }, e.op));
    var docCell = el("td", { class: "mono doc" });
    var link;
    if (e.kind === "dead_letter") {
      link = el("a", { href: deadLetterLink(meta, e.doc_id), title: "Open its dead letter" }, e.doc_id);
    } else {
      // Its trace (the row now, the document as indexed, its dead letter) in a new tab.
      link = el("a", { href: fill(config.tracePath, { name: name, id: e.doc_id }), target: "_blank",
        title: "Trace it: the source row now against the document in the index" }, e.doc_id);
    }
    docCell.appendChild(link);
    tr.appendChild(docCell);
    tr.appendChild(el("td", { class: "mono", title: "position " + e.position }, e.position_shown));
    tr.appendChild(el("td", { class: "num" },
      e.kind === "change" ? Math.round(e.latency_ms) + " ms" : "–"));
    tr.appendChild(el("td", { class: "num" }, String(e.batch)));
    var outcome = el("td", { class: "outcome" });
    if (e.kind === "dead_letter") {
      outcome.textContent = "dead letter: " + e.error;
    } else if (e.outcome === "stale") {
      outcome.appendChild(el("span", { class: "stale-outcome",
        title: "OpenSearch already held a newer version" }, "stale (newer version indexed)"));
    } else {
      outcome.textContent = "ok";
    }
    tr.appendChild(outcome);
    return tr;
  }

  function show(name, events) {
    var filter = currentFilter();
    events.forEach(function (e) {
      if (e.kind === "dropped") dropped += e.dropped;
      var tr = eventRow(name, e);
      tr.hidden = !matches(tr, filter);
      rowsBody.insertBefore(tr, rowsBody.firstChild);  // newest first
    });
    while (rowsBody.children.length > MAX_ROWS) rowsBody.removeChild(rowsBody.lastChild);
    countRows();
  }

  function select(name) {
    if (selected === name) return;
    if (tail) tail.close();
    Object.keys(subs).forEach(function (n) { subs[n].tr.classList.toggle("selected", n === name); });
    selected = name;
    held = [];
    dropped = 0;
    rowsBody.textContent = "";
    $("tail").hidden = false;
    $("tail-name").textContent = name;
    history.replaceState(null, "", "#" + encodeURIComponent(name));
    if (!detailChart) {
      var box = $("detail-chart");
      detailChart = sparkline(box, Math.max(300, box.clientWidth), 130, true);
    }
    tail = new LiveSocket(fill(config.eventsPath, { name: name }), {
      state: function (state, text) {
        delete tailPill.dataset.filterOp;
        delete tailPill.dataset.filterDocIdPrefix;
        setPill(tailPill, state, state === "open" ? "pill-ok" : state === "refused" ? "pill-bad" : "pill-wait", text);
      },
      open: function (socket) {
        // Always: the server's answer also says the socket has joined the events group.
        socket.send({ filter: currentFilter() });
      },
      message: function (m) {
        if (m.kind === "events" && m.subscription === selected) {
          if (paused) {
            held = held.concat(m.events).slice(-MAX_HELD);
            countRows();
          } else {
            show(name, m.events);
          }
        } else if (m.kind === "filter") {
          // What the server filters on now (the page's own filter may still be in flight).
          tailPill.dataset.filterOp = m.filter.op || "";
          tailPill.dataset.filterDocIdPrefix = m.filter.doc_id_prefix || "";
          tailPill.title = "Filter on the server: op " + (m.filter.op || "any") +
            ", document id " + (m.filter.doc_id_prefix ? "starting with " + m.filter.doc_id_prefix : "any");
        }
      }
    });
    countRows();
    refreshRows();
  }

  pauseButton.addEventListener("click", function () {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.classList.toggle("active", paused);
    pauseButton.dataset.paused = paused ? "true" : "false";
    if (!paused && held.length) {
      var events = held;
      held = [];
      show(selected, events);
    }
    countRows();
  });
  $("tail-clear").addEventListener("click", function () {
    rowsBody.textContent = "";
    held = [];
    dropped = 0;
    countRows();
  });
  var debounce = null;
  form.addEventListener("input", function () {
    clearTimeout(debounce);
    debounce = setTimeout(applyFilter, 250);
  });
  form.addEventListener("submit", function (e) { e.preventDefault(); applyFilter(); });

  /* ---- start ------------------------------------------------------------------ */

  config.subscriptions.forEach(function (meta) {
    var tr = tbody.querySelector('tr[data-subscription="' + CSS.escape(meta.name) + '"]');
    if (tr) register(tr, meta);
  });
  setInterval(function () { refreshWorkers(); refreshRows(); }, 500);
  var wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted && subs[wanted]) select(wanted);
  else if (config.subscriptions.length === 1) select(config.subscriptions[0].name);
})();
