// creditd dashboard: draws the usage chart (a stacked bar per day) from the
// JSON block the page carries. Amounts arrive as decimal strings; they are
// turned into whole micro-credits (exact integers) and only their ratio to
// the tallest day sets a bar's height. Labels are the page's strings.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f6feb", "#e8710a", "#1a9c5b", "#b8328f", "#7b61ff", "#c9a400", "#8a94a6"];

  // "12.345" -> 12345000 (micro-credits), exact while below 2^53.
  function micros(text) {
    var s = String(text).trim();
    var neg = s.charAt(0) === "-";
    if (neg) s = s.slice(1);
    var parts = s.split(".");
    var frac = ((parts[1] || "") + "000000").slice(0, 6);
    var n = parseInt(parts[0] || "0", 10) * 1000000 + parseInt(frac, 10);
    return neg ? -n : n;
  }

  // 12345000 -> "12.345" (integer arithmetic only).
  function decimal(m) {
    var neg = m < 0;
    if (neg) m = -m;
    var whole = Math.floor(m / 1000000);
    var frac = String(m % 1000000);
    while (frac.length < 6) frac = "0" + frac;
    frac = frac.replace(/0+$/, "");
    var w = String(whole).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (neg ? "-" : "") + w + (frac ? "." + frac : "");
  }

  // A tick step of 1, 2 or 5 times a power of ten (in micro-credits).
  function niceStep(max, ticks) {
    var raw = Math.max(1, Math.ceil(max / ticks));
    var p = 1;
    while (p * 10 <= raw) p *= 10;
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= raw) return steps[i] * p;
    return 10 * p;
  }

  function el(name, attrs, text) {
    var e = document.createElementNS(SVG, name);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function draw(host, data) {
    var days = data.days || [];
    var series = data.series || [];
    var n = days.length;
    if (!n) return;
    var values = series.map(function (s) { return s.credits.map(micros); });
    var totals = (data.totals || []).map(micros);
    var max = 0;
    for (var d = 0; d < n; d++) max = Math.max(max, totals[d] || 0);
    var W = Math.max(300, Math.min(1200, Math.round(host.clientWidth || 720))), H = W < 500 ? 200 : 240, left = 56, right = 8, top = 10, bottom = 26;
    var plotW = W - left - right, plotH = H - top - bottom;
    var step = niceStep(max || 1000000, 4);
    var yMax = Math.max(step, Math.ceil((max || 1) / step) * step);
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "aria-hidden": "true", focusable: "false" });
    for (var t = 0; t <= yMax; t += step) {
      var y = top + plotH - (t / yMax) * plotH;
      svg.appendChild(el("line", { x1: left, x2: W - right, y1: y, y2: y, "class": "grid" }));
      svg.appendChild(el("text", { x: left - 6, y: y + 4, "text-anchor": "end", "class": "axis" }, decimal(t)));
    }
    var slot = plotW / n, barW = Math.max(2, slot * 0.72);
    for (d = 0; d < n; d++) {
      var x = left + d * slot + (slot - barW) / 2;
      var base = top + plotH;
      var g = el("g", {});
      for (var s = 0; s < series.length; s++) {
        var v = values[s][d];
        if (v <= 0) continue;
        var h = (v / yMax) * plotH;
        base -= h;
        var r = el("rect", { x: x.toFixed(2), y: base.toFixed(2), width: barW.toFixed(2), height: Math.max(0.5, h).toFixed(2),
          fill: COLORS[s % COLORS.length] });
        r.appendChild(el("title", {}, days[d] + " · " + series[s].name + ": " + series[s].credits[d] + " credits"));
        g.appendChild(r);
      }
      svg.appendChild(g);
      var every = W < 500 ? 7 : 5;
      if (d % every === (n - 1) % every) {
        svg.appendChild(el("text", { x: (left + d * slot + slot / 2).toFixed(2), y: H - 8, "text-anchor": "middle", "class": "axis" },
          days[d].slice(5)));
      }
    }
    host.appendChild(svg);
    var legend = document.createElement("ul");
    legend.className = "legend";
    if (!series.length) {
      var none = document.createElement("li");
      none.textContent = "No credits used in the last 30 days.";
      legend.appendChild(none);
    }
    series.forEach(function (s, i) {
      var li = document.createElement("li");
      var sw = el("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true" });
      sw.appendChild(el("rect", { width: 12, height: 12, rx: 2, fill: COLORS[i % COLORS.length] }));
      li.appendChild(sw);
      var total = s.credits.reduce(function (a, c) { return a + micros(c); }, 0);
      li.appendChild(document.createTextNode(s.name + " — " + decimal(total)));
      legend.appendChild(li);
    });
    host.appendChild(legend);
  }

  var host = document.getElementById("usage-chart");
  var block = document.getElementById("usage-chart-data");
  if (host && block) {
    var render = function () {
      while (host.firstChild) host.removeChild(host.firstChild);
      try { draw(host, JSON.parse(block.textContent)); } catch (e) { host.textContent = "The chart could not be drawn."; }
    };
    render();
    // Drawn for the width it has: again when that changes (a phone turned).
    var width = host.clientWidth, timer = null;
    window.addEventListener("resize", function () {
      if (host.clientWidth === width) return;
      width = host.clientWidth;
      clearTimeout(timer);
      timer = setTimeout(render, 100);
    });
  }
})();
