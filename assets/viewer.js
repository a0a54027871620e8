// The 3D viewer's camera: kept across display changes, framed on the bulk of a new model.
// Gradio's Model3D (Babylon.js) re-frames the camera on every new file, so each display change
// used to throw away the user's orbit and zoom, and the framing used the full bounding box, so a
// few stray far points made the model a dot. This script finds the viewer's Babylon scene through
// Babylon's EngineStore module (loaded by the page itself) and
//   - while nothing is loading, remembers the camera (alpha, beta, radius, target);
//   - when the model changes within the same job (a display change), puts that camera back,
//     unless the model's size changed more than 2x (a known distance put it in metres): then the
//     new model is framed as a new one;
//   - when a new job's model arrives, frames the central 96% of its points (2nd-98th percentile
//     per axis) when that is much tighter than the full bounds.
// window.studioViewer.camera() reads the camera (tests use it). Without the EngineStore module
// (another Gradio build) it does nothing and Gradio's own behaviour stays.
(function () {
  "use strict";
  var JOB_RE = /\d{8}-\d{6}-[0-9a-f]{8}/;
  var RESTORE_MS = 3000;
  var MAX_SAMPLES = 20000;
  var st = { store: null, loading: null, saved: null, sig: "", job: null, until: 0, to: null, size: 0 };

  try { performance.setResourceTimingBufferSize(4000); } catch (e) { /* old browsers */ }

  function findStoreUrl() {
    var urls = [];
    document.querySelectorAll("link[rel=modulepreload], script[src]").forEach(function (el) {
      urls.push(el.href || el.src);
    });
    performance.getEntriesByType("resource").forEach(function (e) { urls.push(e.name); });
    for (var i = 0; i < urls.length; i++) {
      if (/\/engineStore-[\w-]+\.js(\?|$)/.test(urls[i] || "")) return urls[i];
    }
    return null;
  }

  function loadStore() {
    if (st.store || st.loading) return;
    var url = findStoreUrl();
    if (!url) return;
    st.loading = import(url).then(function (mod) {
      Object.keys(mod).forEach(function (k) {
        if (mod[k] && Array.isArray(mod[k].Instances)) st.store = mod[k];
      });
    }).catch(function () { /* leave Gradio's behaviour */ }).then(function () { st.loading = null; });
  }

  function scene() {
    var canvas = document.querySelector("#viewer canvas");
    if (!st.store || !canvas) return null;
    var engines = st.store.Instances || [];
    for (var i = engines.length - 1; i >= 0; i--) {
      var e = engines[i];
      if (e.getRenderingCanvas && e.getRenderingCanvas() === canvas && e.scenes && e.scenes.length) {
        return e.scenes[e.scenes.length - 1];
      }
    }
    return null;
  }

  function arcCamera(sc) {
    var c = sc && sc.activeCamera;
    return c && typeof c.alpha === "number" && c.target ? c : null;
  }

  function read(c) {
    return { alpha: c.alpha, beta: c.beta, radius: c.radius, target: [c.target.x, c.target.y, c.target.z] };
  }

  function apply(c, s) {
    if (c.stopInterpolation) c.stopInterpolation();
    var t = c.target.clone();
    t.x = s.target[0]; t.y = s.target[1]; t.z = s.target[2];
    c.setTarget(t);
    c.alpha = s.alpha; c.beta = s.beta; c.radius = s.radius;
  }

  function isCamera(m) {
    var name = (m.name || "") + " " + (m.parent ? m.parent.name || "" : "");
    return name.indexOf("camera_") >= 0;
  }

  function modelMeshes(sc) {
    return sc.meshes.filter(function (m) { return m.getTotalVertices && m.getTotalVertices() > 0; });
  }

  // The page labels the viewer "3D model · <job id>" (the served file's URL does not say).
  function currentJob() {
    var label = document.querySelector("#viewer [data-testid=block-label]");
    var m = label && JOB_RE.exec(label.textContent || "");
    return m ? m[0] : null;
  }

  function quantile(sorted, q) { return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]; }

  // The central 96% of the model's points: their box (lo, hi), its diagonal (core) and the full
  // diagonal (full); null for fewer than 16 points.
  function pointStats(meshes) {
    var xs = [], ys = [], zs = [];
    var total = 0;
    meshes.forEach(function (m) { if (!isCamera(m)) total += m.getTotalVertices(); });
    var step = Math.max(1, Math.floor(total / MAX_SAMPLES));
    meshes.forEach(function (m) {
      if (isCamera(m)) return;
      var pos = m.getVerticesData && m.getVerticesData("position");
      if (!pos) return;
      var w = m.computeWorldMatrix(true).m;
      for (var i = 0; i < pos.length / 3; i += step) {
        var x = pos[3 * i], y = pos[3 * i + 1], z = pos[3 * i + 2];
        xs.push(x * w[0] + y * w[4] + z * w[8] + w[12]);
        ys.push(x * w[1] + y * w[5] + z * w[9] + w[13]);
        zs.push(x * w[2] + y * w[6] + z * w[10] + w[14]);
      }
    });
    if (xs.length < 16) return null;
    var num = function (a, b) { return a - b; };
    xs.sort(num); ys.sort(num); zs.sort(num);
    var lo = [quantile(xs, 0.02), quantile(ys, 0.02), quantile(zs, 0.02)];
    var hi = [quantile(xs, 0.98), quantile(ys, 0.98), quantile(zs, 0.98)];
    var core = Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
    var full = Math.hypot(xs[xs.length - 1] - xs[0], ys[ys.length - 1] - ys[0], zs[zs.length - 1] - zs[0]);
    return { lo: lo, hi: hi, core: core, full: full };
  }

  // A camera looking at the middle of the central 96% from the default angle; null when there are
  // no stray points worth ignoring (Gradio's own framing is then right).
  function robustFrame(stats) {
    if (!stats || !(stats.core > 0) || stats.core > 0.7 * stats.full) return null;
    var lo = stats.lo, hi = stats.hi;
    return {
      alpha: Math.PI / 2, beta: Math.PI / 2.4, radius: stats.core * 1.1,
      target: [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2],
    };
  }

  // Two model sizes close enough for the same camera (unknown sizes count as close).
  function similarSize(a, b) { return !(a > 0 && b > 0) || (b / a < 2 && a / b < 2); }

  function tick() {
    loadStore();
    var sc = scene();
    var c = arcCamera(sc);
    if (!c) return;
    var meshes = modelMeshes(sc);
    var sig = meshes.map(function (m) { return m.uniqueId; }).join(",");
    if (!sig) return;  // a model is loading: keep the remembered camera
    var now = Date.now();
    if (sig !== st.sig) {
      var job = currentJob();
      if (window.studioViewerDebug) console.log("viewer: model", sig, "job", job, "was", st.job);
      var stats = pointStats(meshes);
      var size = stats ? stats.core : 0;
      var same = st.sig !== "" && job !== null && job === st.job && similarSize(st.size, size);
      st.to = same ? st.saved : robustFrame(stats);
      st.size = size;
      st.until = now + RESTORE_MS;
      st.sig = sig;
      st.job = job;
    }
    if (st.to && now < st.until) {
      apply(c, st.to);
      return;
    }
    st.to = null;
    st.saved = read(c);
  }

  // the user's own camera moves end a restore early
  ["pointerdown", "wheel", "keydown"].forEach(function (type) {
    document.addEventListener(type, function (event) {
      if (event.target && event.target.closest && event.target.closest("#viewer")) st.until = 0;
    }, true);
  });

  window.setInterval(tick, 100);
  window.studioViewer = {
    camera: function () { var c = arcCamera(scene()); return c ? read(c) : null; },
    settled: function () { return !!arcCamera(scene()) && !st.to && st.sig !== ""; },
    signature: function () { return st.sig; },
  };
})();
