// moat report: the timeline, the filters and paging. Data comes from the JSON block; every
// string is set with textContent, never as markup.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var PAGE = 100, page = 0, view = null, shown = [];
  function $(id) { return document.getElementById(id); }
  function opts(sel, list, skipEmpty) {
    list.forEach(function (v, i) {
      if (skipEmpty && v === "") return;
      var o = document.createElement("option");
      o.value = String(i); o.textContent = v; sel.appendChild(o);
    });
  }
  opts($("f-host"), D.hosts, true);
  opts($("f-grant"), D.grants, true);
  opts($("f-kind"), D.kinds, false);
  var end = D.rows.reduce(function (m, r) { return Math.max(m, r[0]); }, D.end || 1);
  var first = D.rows.reduce(function (m, r) { return Math.min(m, r[0]); }, 0);
  var full = [Math.min(first, D.start || 0), Math.max(end, 1)];
  view = full.slice();
  function keep(r) {
    var h = $("f-host").value, s = $("f-status").value, g = $("f-grant").value, k = $("f-kind").value;
    if (h !== "" && r[2] !== +h) return false;
    if (g !== "" && r[8] !== +g) return false;
    if (k !== "" && r[1] !== +k) return false;
    if (s === "denied") return D.policies[r[9]] !== "" && D.policies[r[9]] !== "allowed";
    if (s === "none") return r[5] === null;
    if (s !== "") return r[5] !== null && String(r[5]).charAt(0) === s;
    return true;
  }
  function clock(t) {
    if (!D.t0) return "-";
    return new Date(D.t0 + t).toISOString().replace("T", " ").replace("Z", "");
  }
  function td(tr, text) { var c = document.createElement("td"); c.textContent = text; tr.appendChild(c); }
  function n(x) { return x === null || x === undefined ? "-" : String(x); }
  function table() {
    var body = $("row-body");
    while (body.firstChild) body.removeChild(body.firstChild);
    var from = page * PAGE, rows = shown.slice(from, from + PAGE);
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      var pol = D.policies[r[9]];
      if (pol !== "" && pol !== "allowed") tr.className = "deny";
      td(tr, r[0] || D.t0 ? clock(r[0]) : "-"); td(tr, D.kinds[r[1]]); td(tr, D.hosts[r[2]]);
      td(tr, (D.methods[r[3]] + " " + r[4]).trim()); td(tr, n(r[5])); td(tr, n(r[6]));
      td(tr, n(r[7])); td(tr, D.grants[r[8]]); td(tr, pol);
      body.appendChild(tr);
    });
    $("row-caption").textContent = shown.length
      ? "Rows " + (from + 1) + " to " + (from + rows.length) + " of " + shown.length +
        (shown.length < D.rows.length ? " (filtered from " + D.rows.length + ")" : "")
      : "No rows match the filters";
    $("p-prev").disabled = page === 0;
    $("p-next").disabled = from + PAGE >= shown.length;
  }
  function el(name, attrs, parent) {
    var e = document.createElementNS(SVG, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function lanes() {
    // One lane per host (most rows first, at most 12), then one per other kind.
    var count = {};
    shown.forEach(function (r) {
      var key = D.kinds[r[1]] === "request" ? "h" + r[2] : "k" + r[1];
      count[key] = (count[key] || 0) + 1;
    });
    var keys = Object.keys(count).sort(function (a, b) { return count[b] - count[a]; });
    var hosts = keys.filter(function (k) { return k[0] === "h"; }).slice(0, 12);
    var other = keys.filter(function (k) { return k[0] === "k"; });
    return hosts.concat(other);
  }
  function draw() {
    var box = $("chart");
    while (box.firstChild) box.removeChild(box.firstChild);
    var L = lanes(), W = 1000, left = 190, lh = 22, top = 24;
    var H = top + Math.max(L.length, 1) * lh + 10;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img" }, box);
    var t = el("title", {}, svg);
    t.textContent = "Timeline of " + shown.length + " rows by host and kind";
    var span = Math.max(view[1] - view[0], 1), scale = (W - left - 10) / span;
    function x(ms) { return left + (ms - view[0]) * scale; }
    for (var i = 0; i <= 4; i++) {
      var ms = view[0] + span * i / 4, tx = x(ms);
      el("line", { x1: tx, x2: tx, y1: 14, y2: H, stroke: "#d0d0d0" }, svg);
      var lab = el("text", { x: Math.min(tx + 2, W - 60), y: 11 }, svg);
      var secs = Math.abs(ms) / 1000;
      lab.textContent = (ms < 0 ? "\u2212" : "+") + secs.toFixed(secs < 10 ? 2 : 0) + "s";
    }
    [[D.start, "#0a6b2a"], [D.end, "#a00000"]].forEach(function (m) {
      if (m[0] === null || m[0] === undefined) return;
      if (m[0] < view[0] || m[0] > view[1]) return;
      el("line", { x1: x(m[0]), x2: x(m[0]), y1: 14, y2: H, stroke: m[1], "stroke-width": 2 }, svg);
    });
    var laneOf = {};
    L.forEach(function (k, i) {
      laneOf[k] = i;
      var y = top + i * lh;
      if (i % 2 === 0) el("rect", { x: 0, y: y, width: W, height: lh, fill: "#f3f5f8" }, svg);
      var name = k[0] === "h" ? D.hosts[+k.slice(1)] : D.kinds[+k.slice(1)];
      var tx = el("text", { x: 4, y: y + 15 }, svg);
      tx.textContent = name.length > 28 ? name.slice(0, 27) + "\u2026" : name;
    });
    shown.forEach(function (r) {
      if (r[0] < view[0] || r[0] > view[1]) return;
      var key = D.kinds[r[1]] === "request" ? "h" + r[2] : "k" + r[1];
      if (!(key in laneOf)) return;
      var y = top + laneOf[key] * lh + 4, pol = D.policies[r[9]];
      var bad = (pol !== "" && pol !== "allowed") || (r[5] !== null && r[5] >= 400);
      var w = Math.max(2, (r[6] || 0) * scale);
      var c = el("rect", { x: x(r[0]), y: y, width: w, height: lh - 8,
        fill: bad ? "#a00000" : D.kinds[r[1]] === "request" ? "#0b5394" : "#6a3d9a" }, svg);
      var tip = el("title", {}, c);
      tip.textContent = clock(r[0]) + " " + D.kinds[r[1]] + " " + D.hosts[r[2]] + " " +
        D.methods[r[3]] + " " + r[4] + " " + n(r[5]) + (pol && pol !== "allowed" ? " denied: " + pol : "");
    });
  }
  function update() {
    shown = D.rows.filter(keep);
    page = 0;
    table(); draw();
  }
  function zoom(f) {
    var mid = (view[0] + view[1]) / 2, half = (view[1] - view[0]) * f / 2;
    view = [Math.max(full[0], mid - half), Math.min(full[1], mid + half)];
    if (view[1] - view[0] < 10) view[1] = view[0] + 10;
    draw();
  }
  function pan(f) {
    var w = view[1] - view[0], d = w * f;
    if (view[0] + d < full[0]) d = full[0] - view[0];
    if (view[1] + d > full[1]) d = full[1] - view[1];
    view = [view[0] + d, view[1] + d];
    draw();
  }
  ["f-host", "f-status", "f-grant", "f-kind"].forEach(function (id) { $(id).addEventListener("change", update); });
  $("z-in").addEventListener("click", function () { zoom(0.5); });
  $("z-out").addEventListener("click", function () { zoom(2); });
  $("z-left").addEventListener("click", function () { pan(-0.5); });
  $("z-right").addEventListener("click", function () { pan(0.5); });
  $("z-all").addEventListener("click", function () { view = full.slice(); draw(); });
  $("p-prev").addEventListener("click", function () { if (page > 0) { page--; table(); } });
  $("p-next").addEventListener("click", function () { if ((page + 1) * PAGE < shown.length) { page++; table(); } });
  update();
  document.documentElement.setAttribute("data-ready", String(D.rows.length));
})();
