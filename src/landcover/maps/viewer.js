/* landcover map viewer: a compact canvas viewer for one classified raster over optional imagery.
 * Part of the landcover package (Apache-2.0). No dependencies; works offline from a single HTML file.
 * Data comes from <script id="lc-data" type="application/json">: grid (zlib-compressed class indices,
 * 0 = no data, i = classes[i - 1]), affine transform, classes, imagery data URI, opacity.
 */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("lc-data").textContent);
  var W = data.grid.width, H = data.grid.height;
  var A = data.pixel_aspect || 1;  /* ground height / width of a grid cell: cells are drawn scale x scale*A */
  var canvas = document.getElementById("lc-canvas");
  var ctx = canvas.getContext("2d");
  var readout = document.getElementById("lc-readout");
  var coords = document.getElementById("lc-coords");
  var state = {scale: 1, tx: 0, ty: 0, showImagery: true, showClasses: true, opacity: data.opacity};
  var grid = null, imagery = null;
  var classCanvas = document.createElement("canvas");
  classCanvas.width = W;
  classCanvas.height = H;

  function inflate(b64) {
    var bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (buf) { return new Uint8Array(buf); });
  }

  function paintClasses() {
    var img = classCanvas.getContext("2d").createImageData(W, H), px = img.data;
    var lut = [[0, 0, 0, 0]].concat(data.classes.map(function (c) { return c.color.concat([255]); }));
    for (var i = 0; i < grid.length; i++) {
      var c = lut[grid[i]] || lut[0], o = i * 4;
      px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2]; px[o + 3] = c[3];
    }
    classCanvas.getContext("2d").putImageData(img, 0, 0);
  }

  function resize() {
    var box = canvas.parentElement.getBoundingClientRect();
    canvas.width = Math.max(1, Math.floor(box.width));
    canvas.height = Math.max(1, Math.floor(box.height));
  }

  function fit() {
    state.scale = Math.min(canvas.width / W, canvas.height / (H * A));
    state.tx = (canvas.width - W * state.scale) / 2;
    state.ty = (canvas.height - H * A * state.scale) / 2;
    draw();
  }

  function draw() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    var w = W * state.scale, h = H * A * state.scale;
    if (imagery && state.showImagery) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(imagery, state.tx, state.ty, w, h);
    }
    if (grid && state.showClasses && state.opacity > 0) {
      ctx.globalAlpha = state.opacity;
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(classCanvas, state.tx, state.ty, w, h);
      ctx.globalAlpha = 1;
    }
    drawScale();
  }

  function niceLength(target) {
    var e = Math.pow(10, Math.floor(Math.log10(target)));
    return [5, 2, 1].map(function (m) { return m * e; }).find(function (v) { return v <= target; }) || e;
  }

  function drawScale() {
    var t = data.transform;
    var metresPerPx = Math.hypot(t[0], t[3]) * data.metres_per_unit / state.scale;
    if (!isFinite(metresPerPx) || metresPerPx <= 0) return;
    var metres = niceLength(metresPerPx * 120);
    document.getElementById("lc-scale-bar").style.width = (metres / metresPerPx) + "px";
    var unit = data.crs ? (metres >= 1000 ? (metres / 1000) + " km" : metres + " m") : metres + " units";
    document.getElementById("lc-scale-label").textContent = unit;
  }

  function zoomAt(factor, x, y) {
    var s = Math.min(Math.max(state.scale * factor, 0.02), 256);
    factor = s / state.scale;
    state.tx = x - (x - state.tx) * factor;
    state.ty = y - (y - state.ty) * factor;
    state.scale = s;
    draw();
  }

  function cellAt(x, y) {
    var fx = (x - state.tx) / state.scale, fy = (y - state.ty) / (state.scale * A);
    return {col: Math.floor(fx), row: Math.floor(fy), fx: fx, fy: fy};
  }

  function classAt(col, row) {
    if (!grid || col < 0 || row < 0 || col >= W || row >= H) return null;
    var i = grid[row * W + col];
    return i ? data.classes[i - 1] : null;
  }

  function showCursor(x, y) {
    var cell = cellAt(x, y), t = data.transform;
    if (cell.col < 0 || cell.row < 0 || cell.col >= W || cell.row >= H) {
      readout.textContent = "outside the map";
      coords.textContent = "";
      return;
    }
    var c = classAt(cell.col, cell.row);
    readout.textContent = c ? c.name + " (value " + c.value + ")" : "no data";
    var mx = t[2] + cell.fx * t[0] + cell.fy * t[1], my = t[5] + cell.fx * t[3] + cell.fy * t[4];
    coords.textContent = "x " + mx.toFixed(2) + ", y " + my.toFixed(2) + (data.crs ? " (" + data.crs + ")" : "");
  }

  function local(ev) {
    var r = canvas.getBoundingClientRect();
    return {x: ev.clientX - r.left, y: ev.clientY - r.top};
  }

  var drag = null;
  canvas.addEventListener("pointerdown", function (ev) {
    drag = {p: local(ev), tx: state.tx, ty: state.ty};
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointermove", function (ev) {
    var p = local(ev);
    if (drag) {
      state.tx = drag.tx + p.x - drag.p.x;
      state.ty = drag.ty + p.y - drag.p.y;
      draw();
    }
    showCursor(p.x, p.y);
  });
  canvas.addEventListener("pointerup", function () { drag = null; });
  canvas.addEventListener("pointerleave", function () { if (!drag) readout.textContent = "move the mouse over the map"; });
  canvas.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var p = local(ev);
    zoomAt(ev.deltaY < 0 ? 1.25 : 0.8, p.x, p.y);
  }, {passive: false});
  canvas.addEventListener("keydown", function (ev) {
    if (ev.key === "+" || ev.key === "=") zoomAt(1.25, canvas.width / 2, canvas.height / 2);
    else if (ev.key === "-") zoomAt(0.8, canvas.width / 2, canvas.height / 2);
    else if (ev.key === "0") fit();
  });
  document.getElementById("lc-zoom-in").addEventListener("click", function () {
    zoomAt(1.5, canvas.width / 2, canvas.height / 2);
  });
  document.getElementById("lc-zoom-out").addEventListener("click", function () {
    zoomAt(1 / 1.5, canvas.width / 2, canvas.height / 2);
  });
  document.getElementById("lc-fit").addEventListener("click", fit);
  var imageryToggle = document.getElementById("lc-toggle-imagery");
  if (imageryToggle) {
    imageryToggle.addEventListener("change", function () { state.showImagery = imageryToggle.checked; draw(); });
  }
  var classToggle = document.getElementById("lc-toggle-classes");
  classToggle.addEventListener("change", function () { state.showClasses = classToggle.checked; draw(); });
  var slider = document.getElementById("lc-opacity");
  slider.addEventListener("input", function () {
    state.opacity = slider.value / 100;
    document.getElementById("lc-opacity-value").textContent = slider.value + "%";
    draw();
  });
  window.addEventListener("resize", function () { resize(); draw(); });

  var loadImagery = new Promise(function (resolve, reject) {
    if (!data.imagery) { resolve(null); return; }
    var img = new Image();
    img.onload = function () { resolve(img); };
    img.onerror = function () { reject(new Error("imagery could not be decoded")); };
    img.src = data.imagery;
  });

  var ready = Promise.all([inflate(data.grid.data), loadImagery]).then(function (parts) {
    grid = parts[0];
    imagery = parts[1];
    if (grid.length !== W * H) throw new Error("class grid has " + grid.length + " cells, expected " + W * H);
    paintClasses();
    resize();
    fit();
    document.body.setAttribute("data-ready", "true");
  });

  /* A small API for scripts and tests: where a grid cell is on screen, which class it holds. */
  window.landcoverMap = {
    ready: ready,
    state: state,
    draw: draw,
    fit: fit,
    classAt: classAt,
    toScreen: function (col, row) {
      return {x: state.tx + (col + 0.5) * state.scale, y: state.ty + (row + 0.5) * state.scale * A};
    }
  };
})();
