// The page of `landcover serve`: models, jobs with live progress, and a map of a job's imagery and classes.
// Everything it uses is served by the service itself (Leaflet is bundled): it works without the internet.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var state = { selected: null, job: null, imagery: null, classes: null, pointTimer: null, pointSeq: 0 };
  var map = L.map("map", { zoomControl: true, attributionControl: false }).setView([20, 0], 2);

  var tokenInput = $("token");
  tokenInput.value = localStorage.getItem("landcover-token") || "";
  tokenInput.addEventListener("change", function () { localStorage.setItem("landcover-token", tokenInput.value); });

  function api(method, path, body) {
    var opts = { method: method, headers: {} };
    if (tokenInput.value) { opts.headers["Authorization"] = "Bearer " + tokenInput.value; }
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(path, opts).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { throw new Error(data.error || ("HTTP " + r.status)); }
        return data;
      });
    });
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  function renderModels(models) {
    var ul = $("models"), select = $("submit-model"), chosen = select.value;
    ul.textContent = "";
    select.textContent = "";
    if (!models.length) { ul.appendChild(el("li", { "class": "muted" }, "no model installed")); }
    models.forEach(function (m) {
      var li = el("li", { "data-model": m.name });
      li.appendChild(el("b", {}, m.name));
      var bands = m.bands.names && m.bands.names.length ? m.bands.names.join(", ") : m.bands.extract_bands.join(", ");
      li.appendChild(el("div", { "class": "muted" }, m.classes.length + " classes · bands " + bands +
        (m.cell_size ? " · cell " + m.cell_size[0] : "")));
      ul.appendChild(li);
      select.appendChild(el("option", { value: m.name }, m.name));
    });
    if (chosen) { select.value = chosen; }
  }

  function renderJobs(jobs) {
    var ul = $("jobs");
    ul.textContent = "";
    if (!jobs.length) { ul.appendChild(el("li", { "class": "muted" }, "no job yet")); }
    jobs.forEach(function (j) {
      var li = el("li", { "data-job": j.id, "class": j.id === state.selected ? "selected" : "" });
      li.appendChild(el("span", {}, "#" + j.id + " " + j.model + " · "));
      li.appendChild(el("span", { "class": "state " + j.state }, j.state));
      var p = j.progress;
      if (j.state === "running" || (j.state === "queued" && p.blocks_total)) {
        var bar = el("div", { "class": "bar" }), fill = el("div", {});
        fill.style.width = (p.blocks_total ? 100 * p.blocks_done / p.blocks_total : 0) + "%";
        bar.appendChild(fill);
        li.appendChild(bar);
        li.appendChild(el("div", { "class": "muted progress" }, p.blocks_done + " / " + p.blocks_total + " blocks · " +
          p.mp_per_s.toFixed(2) + " MP/s"));
      }
      if (j.state === "failed" && j.error) { li.appendChild(el("div", { "class": "error" }, j.error)); }
      if (j.state === "finished") {
        var show = el("button", {}, "Show");
        show.addEventListener("click", function () { location.hash = "job=" + j.id; });
        li.appendChild(show);
      }
      if (j.state === "queued" || j.state === "running") {
        var cancel = el("button", {}, "Cancel");
        cancel.addEventListener("click", function () {
          api("POST", "/api/jobs/" + j.id + "/cancel").then(refresh, function (e) { alert(e.message); });
        });
        li.appendChild(cancel);
      }
      ul.appendChild(li);
    });
  }

  function refresh() {
    return Promise.all([api("GET", "/api/models"), api("GET", "/api/jobs?limit=50")]).then(function (r) {
      renderModels(r[0].models);
      renderJobs(r[1].jobs);
      var wanted = jobFromHash();
      if (wanted && wanted !== state.selected) {
        var job = r[1].jobs.filter(function (j) { return j.id === wanted && j.state === "finished"; })[0];
        if (job) { showJob(job); }
      }
    }).catch(function (e) { $("jobs").textContent = "service unreachable: " + e.message; });
  }

  function jobFromHash() {
    var m = /job=(\d+)/.exec(location.hash);
    return m ? parseInt(m[1], 10) : null;
  }

  function opacity() { return $("opacity").value / 100; }

  function showJob(job) {
    state.selected = job.id;
    state.job = job;
    api("GET", "/api/jobs/" + job.id + "/tilejson.json").then(function (tj) {
      if (state.imagery) { map.removeLayer(state.imagery); }
      if (state.classes) { map.removeLayer(state.classes); }
      var b = tj.bounds, bounds = L.latLngBounds([b[1], b[0]], [b[3], b[2]]);
      var opts = { bounds: bounds, maxNativeZoom: tj.maxzoom, maxZoom: tj.maxzoom + 4, tileSize: 256 };
      state.imagery = L.tileLayer("/api/jobs/" + job.id + "/imagery/{z}/{x}/{y}.png", opts);
      state.classes = L.tileLayer(tj.tiles[0].replace(/^https?:\/\/[^/]+/, ""),
        L.extend({ opacity: opacity(), className: "lc-classes" }, opts));
      if ($("show-imagery").checked) { state.imagery.addTo(map); }
      if ($("show-classes").checked) { state.classes.addTo(map); }
      map.fitBounds(bounds, { paddingTopRight: [240, 10] });  // clear of the panel
      renderPanel(job);
    });
  }

  function renderPanel(job) {
    $("panel").classList.remove("hidden");
    $("panel-title").textContent = "Job " + job.id + " · " + job.model;
    var legend = $("legend");
    legend.textContent = "";
    job.classes.forEach(function (c) {
      var li = el("li", { "data-value": c.value }), sw = el("span", { "class": "swatch" });
      sw.style.background = "rgb(" + c.color.join(",") + ")";
      li.appendChild(sw);
      li.appendChild(el("span", { "class": "legend-name" }, c.name));
      legend.appendChild(li);
    });
    var links = $("links");
    links.textContent = "";
    [["COG", "/cog"], ["TileJSON", "/tilejson.json"], ["WMTS", "/WMTSCapabilities.xml"]].forEach(function (l) {
      links.appendChild(el("a", { href: "/api/jobs/" + job.id + l[1] }, l[0]));
    });
  }

  $("opacity").addEventListener("input", function () { if (state.classes) { state.classes.setOpacity(opacity()); } });
  $("show-imagery").addEventListener("change", function (e) {
    if (state.imagery) { if (e.target.checked) { state.imagery.addTo(map); } else { map.removeLayer(state.imagery); } }
  });
  $("show-classes").addEventListener("change", function (e) {
    if (state.classes) { if (e.target.checked) { state.classes.addTo(map); } else { map.removeLayer(state.classes); } }
  });

  // The class under the cursor: asked of the service (the COG's value there), at most every 150 ms.
  map.on("mousemove", function (e) {
    if (!state.job) { return; }
    clearTimeout(state.pointTimer);
    state.pointTimer = setTimeout(function () {
      var seq = ++state.pointSeq, ll = e.latlng.wrap();
      api("GET", "/api/jobs/" + state.job.id + "/point?lon=" + ll.lng + "&lat=" + ll.lat).then(function (p) {
        if (seq !== state.pointSeq) { return; }
        $("cursor").textContent = p.value === null ? "no data" : "Class: " + p.name + " (" + p.value + ")";
      });
    }, 150);
  });

  $("submit").addEventListener("submit", function (e) {
    e.preventDefault();
    var out = $("submit-result");
    api("POST", "/api/jobs", { model: $("submit-model").value, imagery: $("submit-imagery").value }).then(
      function (j) { out.className = "muted"; out.textContent = "job " + j.id + " queued"; refresh(); },
      function (err) { out.className = "error"; out.textContent = err.message; });
  });

  window.landcoverServe = { map: map, state: state };  // for scripts and tests
  window.addEventListener("hashchange", function () { state.selected = null; refresh(); });
  refresh();
  setInterval(refresh, 1000);
})();
