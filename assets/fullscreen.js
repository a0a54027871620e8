// Fullscreen toggle for the 3D viewer, and the dark theme switch.
// Loaded in the page <head> by gradio_ui.launch_kwargs(); Gradio renders the page later, so
// everything works through event delegation on `document` and looks elements up when needed.
//   - the "Fullscreen" button (#fullscreen-btn) toggles the class `viewer-fullscreen` on
//     #viewer-wrap, which style.css turns into a fixed, full-window panel;
//   - Escape leaves fullscreen;
//   - after each change a window `resize` event lets the 3D canvas adopt its new size.
(function () {
  "use strict";
  var FS_CLASS = "viewer-fullscreen";

  function forceDark() {
    document.documentElement.classList.add("dark");
    if (document.body) document.body.classList.add("dark");
  }
  forceDark();
  document.addEventListener("DOMContentLoaded", forceDark);

  function wrap() {
    return document.getElementById("viewer-wrap");
  }

  function isFullscreen() {
    var el = wrap();
    return !!el && el.classList.contains(FS_CLASS);
  }

  function nudgeCanvas() {
    window.dispatchEvent(new Event("resize"));
    // once more after the layout settles (the viewer measures its container)
    window.setTimeout(function () { window.dispatchEvent(new Event("resize")); }, 120);
  }

  function setFullscreen(on) {
    var el = wrap();
    if (!el) return;
    el.classList.toggle(FS_CLASS, on);
    document.body.classList.toggle("has-fullscreen-viewer", on);
    var btn = document.getElementById("fullscreen-btn");
    if (btn) {
      btn.setAttribute("aria-pressed", on ? "true" : "false");
      btn.textContent = on ? "✕ Exit fullscreen (Esc)" : "⤢ Fullscreen";
    }
    nudgeCanvas();
  }

  window.dust3rViewer = {
    toggle: function () { setFullscreen(!isFullscreen()); },
    exit: function () { setFullscreen(false); },
    isFullscreen: isFullscreen,
  };

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target && target.closest && target.closest("#fullscreen-btn")) {
      event.preventDefault();
      window.dust3rViewer.toggle();
    }
  }, true);

  document.addEventListener("keydown", function (event) {
    if ((event.key === "Escape" || event.key === "Esc") && isFullscreen()) {
      event.preventDefault();
      setFullscreen(false);
    }
  }, true);
})();
