/* Canvas: the little the server cannot do. htmx's ws extension keeps the socket; this file
   - subscribes to the pods on the page when the socket opens, handing back the newest server
     timestamp seen (#live-ts) so a reconnect catches up on what changed meanwhile;
   - swaps the tiles the server sends (keyed by id="tile-<id>"), never for an older version;
   - makes room for tiles of sessions launched after the page loaded;
   - keeps heartbeat ages and the "stale" look current; keyboard navigation (Enter is the
     focused tile link's own). */
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
    evt.detail.socketWrapper.send(JSON.stringify({ type: "subscribe", pods: podIds(), since: liveTs() }));
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
      next.dispatchEvent(new CustomEvent("cr:tileSwap", { bubbles: true, detail: { id: next.id, version: +next.dataset.version } }));
    });
    if (changed) htmx.trigger(document.body, "crChanged");
  });

  // --- heartbeat ages and the stale look -----------------------------------------------------
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
  function refreshAge(tile, now) {
    var beat = parseFloat(tile.dataset.heartbeat);
    if (!isFinite(beat)) return;
    var age = Math.max(0, now - beat);
    var time = tile.querySelector("time.age");
    if (time) time.textContent = formatAge(age);
    tile.classList.toggle("stale", tile.dataset.status === "running" && age > staleAfter());
  }
  function refreshAges() {
    var now = Date.now() / 1000 + skew;
    document.querySelectorAll("#canvas .tile[data-heartbeat]").forEach(function (tile) { refreshAge(tile, now); });
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
    if (tile) tile.querySelector(".tile-link").focus();
    return true;
  }
  document.addEventListener("click", function (evt) {
    var target = evt.target;
    if (!target.closest) return;
    if (target.closest(".drawer-close")) { closeDrawer(); return; }
    var tile = target.closest("#canvas .tile");
    if (tile) lastOpened = tile.id;
  });
  document.addEventListener("htmx:afterSwap", function (evt) {
    if (evt.detail.target && evt.detail.target.id === "drawer" && window.matchMedia("(max-width: 899px)").matches) {
      evt.detail.target.focus({ preventScroll: true });
    }
  });

  // --- keyboard --------------------------------------------------------------------------------
  function tiles() { return Array.prototype.slice.call(document.querySelectorAll("#canvas .tile")); }
  function focusTile(tile) {
    var link = tile && tile.querySelector(".tile-link");
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
    var current = active && active.closest ? active.closest("#canvas .tile") : null;
    var arrows = key.indexOf("Arrow") === 0;
    if (arrows && !current && active !== document.body) return; // arrows scroll elsewhere as usual
    var index = current ? all.indexOf(current) : -1, next = null;
    if (key === "j" || key === "ArrowRight") next = all[Math.min(all.length - 1, index + 1)];
    else if (key === "k" || key === "ArrowLeft") next = all[Math.max(0, index - 1)];
    else if (key === "ArrowDown" || key === "ArrowUp") next = vertical(all, current, key === "ArrowDown");
    if (next) { evt.preventDefault(); focusTile(next); }
  });
})();
