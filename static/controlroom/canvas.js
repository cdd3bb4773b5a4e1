/* Canvas: the little the server cannot do. htmx's ws extension keeps the socket; this file
   - subscribes to the pods on the page when the socket opens, handing back the newest server
     timestamp seen (#live-ts) so a reconnect catches up on what changed meanwhile;
   - swaps the tiles the server sends (keyed by id="tile-<id>"), never for an older version;
   - makes room for tiles of sessions launched after the page loaded;
   - on the fleet map, updates a session's cell from its tile frame (the same frames as the tiles);
   - keeps heartbeat ages and the "stranded" look current (running, no heartbeat and no lease for
     STALE_AFTER_S: agents.selectors.is_stranded); keyboard navigation over tiles and cells (Enter
     is the focused link's own); the map's details box on hover and focus. */
(function () {
  "use strict";
  if (window.controlRoomCanvas) return;
  window.controlRoomCanvas = true;

  // Reconnect quickly after a blip or a server restart (the extension's default waits up to 64 s).
  htmx.config.wsReconnectDelay = function (retry) {
    return Math.min(250 * Math.pow(2, retry), 4000) * (0.5 + Math.random() / 2);
  };

  var skew = 0; // server clock minus browser clock, from the page's #live-ts
  var lastOpened = null;

  function byId(id) { return document.getElementById(id); }
  function liveTs() {
    var el = byId("live-ts");
    var ts = el ? parseFloat(el.dataset.ts) : NaN;
    return isFinite(ts) ? ts : null;
  }
  function podIds() {
    return Array.prototype.map.call(document.querySelectorAll("#canvas .pod-group[data-pod-id]"), function (el) {
      return parseInt(el.dataset.podId, 10);
    });
  }
  function setLive(text, state) {
    var el = byId("live-status");
    if (el) { el.textContent = text; el.dataset.state = state; }
  }

  // --- the socket ---------------------------------------------------------------------------
  document.addEventListener("htmx:wsOpen", function (evt) {
    var canvas = byId("canvas");
    var older = !!(canvas && canvas.dataset.older === "1");
    evt.detail.socketWrapper.send(JSON.stringify({ type: "subscribe", pods: podIds(), since: liveTs(), older: older }));
    setLive("live", "open");
  });
  document.addEventListener("htmx:wsClose", function (evt) {
    var code = evt.detail.event && evt.detail.event.code;
    if (code === 4401 || code === 4403) { setLive("not signed in: reload the page", "refused"); return; }
    setLive("reconnecting…", "closed");
    // The extension retries 1006/1011/1012/1013 itself; a server going away (1001) is retried here.
    if (code === 1001 && document.body.contains(evt.target)) {
      setTimeout(evt.detail.socketWrapper.reconnect, 1000);
    }
  });

  function matchesFilters(tile) {
    var canvas = byId("canvas");
    if (!canvas) return false;
    var statuses = (canvas.dataset.filterStatus || "").split(",").filter(Boolean);
    var sto = canvas.dataset.filterSto || "";
    return (!statuses.length || statuses.indexOf(tile.dataset.status) >= 0) && (!sto || sto === tile.dataset.sto);
  }

  // --- live updates -------------------------------------------------------------------------
  // The frame is HTML: tiles (id="tile-<id>") and #live-ts. They are swapped here rather than by
  // htmx's out-of-band machinery: at a hundred updates a second that machinery was most of the
  // page's script time. Each swap dispatches "cr:tileSwap" (detail: id, version) on the new tile.
  document.addEventListener("htmx:wsBeforeMessage", function (evt) {
    var message = evt.detail.message;
    evt.preventDefault();
    if (typeof message !== "string") return;
    if (message.charAt(0) === "{") { // a JSON control frame, not HTML
      try {
        var frame = JSON.parse(message);
        if (frame.type === "error") { setLive("live (" + frame.error + ")", "open"); console.warn("canvas socket:", frame); }
      } catch (e) { console.warn("canvas socket: unreadable frame", e); }
      return;
    }
    var template = document.createElement("template");
    template.innerHTML = message;
    var changed = false;
    Array.prototype.slice.call(template.content.children).forEach(function (next) {
      if (next.id === "live-ts") {
        var shown = byId("live-ts");
        if (shown && parseFloat(next.dataset.ts) > (liveTs() || 0)) shown.dataset.ts = next.dataset.ts;
        return;
      }
      if (!next.classList.contains("tile") || !next.id) return;
      var current = byId(next.id);
      var cell = current ? null : byId("cell-" + next.dataset.sessionId);
      if (cell) { if (updateCell(cell, next)) changed = true; return; }
      if (!current && document.querySelector("#canvas .cells")) {
        var mapGroup = document.querySelector('#canvas .pod-group[data-pod-id="' + next.dataset.podId + '"]');
        if (!mapGroup || !matchesFilters(next)) return;
        cell = document.createElement("a");
        cell.id = "cell-" + next.dataset.sessionId;
        cell.className = "cell";
        cell.dataset.version = "0";
        cell.href = (byId("canvas").dataset.drawerPrefix || "/sessions/") + next.dataset.sessionId + "/";
        mapGroup.querySelector(".cells").appendChild(cell);
        var mapCount = mapGroup.querySelector(".pod-count");
        if (mapCount) mapCount.textContent = mapGroup.querySelectorAll(".cell").length;
        updateCell(cell, next);
        changed = true;
        return;
      }
      if (!current) {
        // A session this page has not seen (launched since): make a slot for it in its pod.
        var group = document.querySelector('#canvas .pod-group[data-pod-id="' + next.dataset.podId + '"]');
        if (!group || !matchesFilters(next)) return;
        current = document.createElement("article");
        current.id = next.id;
        current.className = "tile";
        current.dataset.version = "0";
        group.querySelector(".tiles").appendChild(current);
        var empty = group.querySelector(".empty");
        if (empty) empty.remove();
        var count = group.querySelector(".pod-count");
        if (count) count.textContent = group.querySelectorAll(".tile").length;
        changed = true;
      }
      // never replace a tile with an older (or the same) version
      if (+next.dataset.version <= +current.dataset.version) return;
      if (current.dataset.status !== next.dataset.status) changed = true;
      var hadFocus = current.contains(document.activeElement);
      next.removeAttribute("hx-swap-oob");
      current.replaceWith(next);
      htmx.process(next); // the tile link's hx-get (opens the drawer)
      refreshAge(next, Date.now() / 1000 + skew);
      if (hadFocus) {
        var link = next.querySelector(".tile-link");
        if (link) link.focus({ preventScroll: true });
      }
      markOverlaps(next);
      next.dispatchEvent(new CustomEvent("cr:tileSwap", { bubbles: true, detail: { id: next.id, version: +next.dataset.version } }));
    });
    if (changed) htmx.trigger(document.body, "crChanged");
  });

  // A tile that now overlaps another (same files edited) says so at once; the other tile is only
  // re-rendered at its own next change, so it is marked here until then.
  function markOverlaps(tile) {
    var mine = tile.dataset.sessionId;
    (tile.dataset.overlaps || "").split(" ").filter(Boolean).forEach(function (id) {
      var other = byId("tile-" + id);
      if (!other) return;
      var list = (other.dataset.overlaps || "").split(" ").filter(Boolean);
      if (list.indexOf(mine) >= 0) return;
      list.push(mine);
      other.dataset.overlaps = list.join(" ");
      other.classList.add("overlap");
      var note = other.querySelector(".overlap-note");
      if (!note) {
        note = document.createElement("p");
        note.className = "overlap-note";
        var link = other.querySelector(".tile-link");
        link.insertBefore(note, link.querySelector("footer"));
      }
      note.textContent = "⚠ same files as #" + list.join(", #");
    });
  }

  // --- the fleet map ---------------------------------------------------------------------------
  // A cell takes its face from the session's tile frame: status, stranded, name, STO, activity.
  function updateCell(cell, tile) {
    if (+tile.dataset.version <= +cell.dataset.version) return false;
    var statusChanged = cell.dataset.status !== tile.dataset.status;
    var label = tile.querySelector(".status-label");
    var name = tile.querySelector("h3");
    var activity = tile.querySelector(".activity");
    cell.dataset.version = tile.dataset.version;
    cell.dataset.status = tile.dataset.status;
    cell.dataset.label = label ? label.textContent : tile.dataset.status;
    cell.dataset.name = name ? name.getAttribute("title") || name.textContent : "";
    cell.dataset.sto = tile.dataset.sto || "";
    cell.dataset.activity = activity ? (activity.getAttribute("title") || "") : "";
    cell.dataset.seen = tile.dataset.seen || "";
    cell.dataset.lease = tile.dataset.lease || "";
    cell.className = "cell status-" + tile.dataset.status + (tile.classList.contains("stranded") ? " stranded" : "");
    refreshStranded(cell, Date.now() / 1000 + skew);
    cell.setAttribute("aria-label", cellSummary(cell));
    if (cell === shownCell) showDetails(cell);
    cell.dispatchEvent(new CustomEvent("cr:cellSwap", { bubbles: true, detail: { id: cell.id, version: +cell.dataset.version, status: cell.dataset.status } }));
    return statusChanged;
  }
  function cellSummary(cell) {
    var status = cell.classList.contains("stranded") ? "stranded" : cell.dataset.label;
    return "#" + cell.dataset.sessionId + " " + cell.dataset.name + ": " + status + ", STO " + cell.dataset.sto;
  }
  var shownCell = null;
  function showDetails(cell) {
    var box = byId("cell-details");
    if (!box) return;
    shownCell = cell;
    box.textContent = "";
    var strong = document.createElement("strong");
    strong.textContent = "#" + cell.dataset.sessionId + " " + cell.dataset.name;
    box.appendChild(strong);
    var status = cell.classList.contains("stranded") ? "Stranded (no heartbeat, no lease): open it to recover or cancel" : cell.dataset.label;
    box.appendChild(document.createTextNode(" · " + status + " · STO " + cell.dataset.sto +
      (cell.dataset.activity ? " · " + cell.dataset.activity : "")));
    box.hidden = false;
  }
  function onCell(evt) {
    var cell = evt.target.closest && evt.target.closest("#canvas .cells .cell");
    if (cell) showDetails(cell);
  }
  document.addEventListener("mouseover", onCell);
  document.addEventListener("focusin", onCell);

  // --- heartbeat ages and the stranded look --------------------------------------------------
  function formatAge(seconds) {
    if (seconds < 60) return Math.floor(seconds) + "s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + "h ago";
    return Math.floor(seconds / 86400) + "d ago";
  }
  function staleAfter() {
    var live = byId("live");
    return live ? parseFloat(live.dataset.staleAfter) || 120 : 120;
  }
  // the browser's side of agents.selectors.is_stranded, for a page left open while a worker dies
  function refreshStranded(el, now) {
    var seen = parseFloat(el.dataset.seen), lease = parseFloat(el.dataset.lease);
    if (!isFinite(seen)) return;
    var leased = isFinite(lease) && lease >= now;
    el.classList.toggle("stranded", el.dataset.status === "running" && now - seen > staleAfter() && !leased);
  }
  function refreshAge(tile, now) {
    refreshStranded(tile, now);
    var beat = parseFloat(tile.dataset.heartbeat);
    if (!isFinite(beat)) return;
    var age = Math.max(0, now - beat);
    tile.querySelectorAll("time.age").forEach(function (time) { time.textContent = formatAge(age); });
  }
  function refreshAges() {
    var now = Date.now() / 1000 + skew;
    document.querySelectorAll("#canvas .tile").forEach(function (tile) { refreshAge(tile, now); });
    document.querySelectorAll('#canvas .cell[data-status="running"]').forEach(function (cell) {
      var was = cell.classList.contains("stranded");
      refreshStranded(cell, now);
      if (was !== cell.classList.contains("stranded")) cell.setAttribute("aria-label", cellSummary(cell));
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var ts = liveTs();
    if (ts) skew = ts - Date.now() / 1000;
    refreshAges();
  });
  setInterval(refreshAges, 5000);

  // --- the drawer ----------------------------------------------------------------------------
  function closeDrawer() {
    var drawer = byId("drawer");
    if (!drawer || !drawer.firstChild) return false;
    drawer.innerHTML = "";
    var tile = lastOpened && byId(lastOpened);
    if (tile) (tile.querySelector(".tile-link") || tile).focus();
    return true;
  }
  document.addEventListener("click", function (evt) {
    var target = evt.target;
    if (!target.closest) return;
    if (target.closest(".drawer-close")) { closeDrawer(); return; }
    var tile = target.closest("#canvas .tile, #canvas .cells .cell");
    if (tile) lastOpened = tile.id;
    // a map cell opens its drawer like a tile link (one delegated handler, not a thousand hx-get)
    if (tile && tile.classList.contains("cell") && !evt.ctrlKey && !evt.metaKey && !evt.shiftKey && evt.button === 0) {
      evt.preventDefault();
      htmx.ajax("GET", tile.getAttribute("href"), { target: "#drawer", swap: "innerHTML" });
    }
  });
  document.addEventListener("htmx:afterSwap", function (evt) {
    if (evt.detail.target && evt.detail.target.id === "drawer" && window.matchMedia("(max-width: 899px)").matches) {
      evt.detail.target.focus({ preventScroll: true });
    }
  });

  // --- keyboard --------------------------------------------------------------------------------
  function tiles() { return Array.prototype.slice.call(document.querySelectorAll("#canvas .tile, #canvas .cells .cell")); }
  function focusTile(tile) {
    var link = tile && (tile.classList.contains("cell") ? tile : tile.querySelector(".tile-link"));
    if (link) { link.focus(); tile.scrollIntoView({ block: "nearest" }); }
  }
  function vertical(all, current, down) {
    if (!current) return all[0];
    var here = current.getBoundingClientRect(), best = null, bestRow = null, bestDx = Infinity;
    all.forEach(function (tile) {
      var r = tile.getBoundingClientRect();
      var beyond = down ? r.top >= here.bottom - 1 : r.bottom <= here.top + 1;
      if (!beyond) return;
      var row = down ? r.top : -r.bottom;
      var dx = Math.abs(r.left - here.left);
      if (bestRow === null || row < bestRow - 1 || (Math.abs(row - bestRow) <= 1 && dx < bestDx)) {
        best = tile; bestRow = row; bestDx = dx;
      }
    });
    return best;
  }
  document.addEventListener("keydown", function (evt) {
    if (evt.defaultPrevented || evt.altKey || evt.ctrlKey || evt.metaKey) return;
    var el = evt.target;
    if (el && el.closest && el.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']")) return;
    var key = evt.key;
    if (key === "Escape") { if (closeDrawer()) evt.preventDefault(); return; }
    if (key === "a" || key === "d") {
      var button = document.querySelector('#drawer [data-key="' + (key === "a" ? "approve" : "deny") + '"]');
      if (button) { evt.preventDefault(); button.click(); }
      return;
    }
    var all = tiles();
    if (!all.length) return;
    var active = document.activeElement;
    var current = active && active.closest ? active.closest("#canvas .tile, #canvas .cells .cell") : null;
    var arrows = key.indexOf("Arrow") === 0;
    if (arrows && !current && active !== document.body) return; // arrows scroll elsewhere as usual
    var index = current ? all.indexOf(current) : -1, next = null;
    if (key === "j" || key === "ArrowRight") next = all[Math.min(all.length - 1, index + 1)];
    else if (key === "k" || key === "ArrowLeft") next = all[Math.max(0, index - 1)];
    else if (key === "ArrowDown" || key === "ArrowUp") next = vertical(all, current, key === "ArrowDown");
    if (next) { evt.preventDefault(); focusTile(next); }
  });
})();
