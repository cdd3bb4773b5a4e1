/* Behaviour every page shares, kept out of the HTML: the Content-Security-Policy
   (controlroom/settings.py, CONTENT_SECURITY_POLICY) allows scripts from this site only, no
   inline script, no eval (so no hx-on attributes) and no inline style attributes.
   - data-swap-errors="400 403 …" on an element: an htmx answer with one of these statuses, to a
     request made inside it, is swapped in like a success (a form re-rendered with its errors, a
     refusal shown where the button was) instead of being dropped as an error;
   - data-width="<percent>" / data-height-px="<px>": sizes the server computed (a budget meter, a
     placeholder of folded lines), applied through the CSSOM, which the policy allows. */
(function () {
  "use strict";

  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.target;
    var holder = target && target.closest ? target.closest("[data-swap-errors]") : null;
    if (!holder) return;
    var statuses = holder.dataset.swapErrors.split(/[\s,]+/).filter(Boolean).map(Number);
    if (statuses.indexOf(event.detail.xhr.status) >= 0) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  function applySizes(root) {
    if (!root || !root.querySelectorAll) return;
    var sized = Array.prototype.slice.call(root.querySelectorAll("[data-width], [data-height-px]"));
    if (root.matches && root.matches("[data-width], [data-height-px]")) sized.push(root);
    sized.forEach(function (el) {
      var width = parseFloat(el.dataset.width);
      if (isFinite(width)) el.style.width = Math.max(0, Math.min(width, 100)) + "%";
      var height = parseFloat(el.dataset.heightPx);
      if (isFinite(height)) el.style.height = Math.max(0, height) + "px";
    });
  }

  if (window.htmx) {
    htmx.onLoad(applySizes); // the page, and everything htmx swaps in later
  } else {
    document.addEventListener("DOMContentLoaded", function () { applySizes(document.body); });
  }
})();
