(function () {
  var NS = "http://www.w3.org/2000/svg";
  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, attrs) {
    var t = el("text", Object.assign({x: x, y: y, "font-size": 11, fill: "#333"}, attrs || {}), parent);
    t.textContent = s;
    return t;
  }
  function fmt(v) {
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 1e4 || a < 1e-3) return v.toExponential(0);
    return String(+v.toPrecision(3));
  }
  function niceTicks(lo, hi, n, integer) {
    if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    if (integer) step = Math.max(1, Math.round(step));
    var ticks = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
    return ticks;
  }
  function title(svg, W, s) { text(svg, W / 2, 16, s, {"text-anchor": "middle", "font-size": 13, "font-weight": 600}); }
  function legend(svg, items, x, y) {
    items.forEach(function (it, i) {
      var yy = y + i * 15;
      el("line", {x1: x, y1: yy, x2: x + 18, y2: yy, stroke: it.color, "stroke-width": 2.5, "stroke-dasharray": it.dash || ""}, svg);
      text(svg, x + 23, yy + 4, it.name, {"font-size": 10.5});
    });
  }
  function lineChart(div, spec) {
    var W = 560, legendH = 15 * spec.series.length + 6, H = 300 + legendH, m = {l: 58, r: 24, t: 26, b: 40 + legendH};
    var svg = el("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img"}, div);
    title(svg, W, spec.title);
    var xs = [], ys = [];
    spec.series.forEach(function (s) {
      s.points.forEach(function (p, i) {
        xs.push(p[0]); ys.push(p[1]);
        if (s.err) { ys.push(p[1] - s.err[i]); ys.push(p[1] + s.err[i]); }
      });
      (s.band || []).forEach(function (b) { ys.push(b[1]); ys.push(b[2]); });
    });
    var tx = spec.xlog ? function (v) { return Math.log10(v); } : function (v) { return v; };
    var xlo = Math.min.apply(null, xs.map(tx)), xhi = Math.max.apply(null, xs.map(tx));
    var ylo = Math.min.apply(null, ys), yhi = Math.max.apply(null, ys);
    if (xhi === xlo) { xhi += 0.5; xlo -= 0.5; }
    if (yhi === ylo) { yhi += Math.abs(yhi) * 0.1 + 0.1; ylo -= Math.abs(ylo) * 0.1 + 0.1; }
    var pad = (yhi - ylo) * 0.05; ylo -= pad; yhi += pad;
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    function X(v) { return m.l + (tx(v) - xlo) / (xhi - xlo) * pw; }
    function Y(v) { return m.t + (1 - (v - ylo) / (yhi - ylo)) * ph; }
    var yt = niceTicks(ylo, yhi, 5);
    yt.forEach(function (v) {
      el("line", {x1: m.l, x2: m.l + pw, y1: Y(v), y2: Y(v), stroke: "#eee"}, svg);
      text(svg, m.l - 5, Y(v) + 4, fmt(v), {"text-anchor": "end"});
    });
    var xt = spec.xlog ? (function () { var t = []; for (var e = Math.floor(xlo); e <= Math.ceil(xhi); e++) { [1, 3].forEach(function (k) { var v = k * Math.pow(10, e); if (Math.log10(v) >= xlo - 1e-9 && Math.log10(v) <= xhi + 1e-9) t.push(v); }); } return t; })()
                       : niceTicks(xlo, xhi, 6, spec.xint);
    xt.forEach(function (v) {
      el("line", {x1: X(v), x2: X(v), y1: m.t, y2: m.t + ph, stroke: "#f3f3f3"}, svg);
      text(svg, X(v), m.t + ph + 14, fmt(v), {"text-anchor": "middle"});
    });
    el("rect", {x: m.l, y: m.t, width: pw, height: ph, fill: "none", stroke: "#999"}, svg);
    text(svg, m.l + pw / 2, m.t + ph + 30, spec.xlabel + (spec.xlog ? " (log scale)" : ""), {"text-anchor": "middle"});
    var yl = text(svg, 13, m.t + ph / 2, spec.ylabel, {"text-anchor": "middle", transform: "rotate(-90 13 " + (m.t + ph / 2) + ")"});
    var marks = 0;
    spec.series.forEach(function (s) {
      if (s.band && s.band.length) {
        var up = s.band.map(function (b) { return X(b[0]) + "," + Y(b[2]); });
        var down = s.band.slice().reverse().map(function (b) { return X(b[0]) + "," + Y(b[1]); });
        el("polygon", {points: up.concat(down).join(" "), fill: s.color, "fill-opacity": 0.15, stroke: "none", "data-mark": 1}, svg);
        marks++;
      }
      if (s.points.length > 1) {
        var d = s.points.map(function (p, i) { return (i ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1); }).join("");
        el("path", {d: d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || "", "data-mark": 1}, svg);
        marks++;
      }
      s.points.forEach(function (p, i) {
        if (s.err) {
          el("line", {x1: X(p[0]), x2: X(p[0]), y1: Y(p[1] - s.err[i]), y2: Y(p[1] + s.err[i]), stroke: s.color, "stroke-width": 1.5}, svg);
          [p[1] - s.err[i], p[1] + s.err[i]].forEach(function (v) {
            el("line", {x1: X(p[0]) - 4, x2: X(p[0]) + 4, y1: Y(v), y2: Y(v), stroke: s.color, "stroke-width": 1.5}, svg);
          });
        }
        var c = el("circle", {cx: X(p[0]), cy: Y(p[1]), r: s.points.length > 40 ? 1.6 : 3, fill: s.color, "data-mark": 1}, svg);
        el("title", {}, c).textContent = s.name + "\n" + spec.xlabel + " " + fmt(p[0]) + ": " + fmt(p[1]) + (s.err ? " ± " + fmt(s.err[i]) : "");
        marks++;
      });
    });
    legend(svg, spec.series, m.l, m.t + ph + 44);
    return marks;
  }
  function barChart(div, spec) {
    var n = spec.categories.length, W = 760, rowH = 30, m = {l: 210, r: 56, t: 26, b: 36};
    var legendRows = Math.ceil(spec.stacks.length / 4), H = m.t + n * rowH + m.b + legendRows * 16;
    var svg = el("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img"}, div);
    title(svg, W, spec.title);
    var totals = spec.categories.map(function (_, i) { return spec.stacks.reduce(function (a, s) { return a + s.values[i]; }, 0); });
    var hi = Math.max.apply(null, totals.concat([1e-9])), pw = W - m.l - m.r;
    function X(v) { return m.l + v / hi * pw; }
    niceTicks(0, hi, 6).forEach(function (v) {
      if (v > hi * 1.0001) return;
      el("line", {x1: X(v), x2: X(v), y1: m.t, y2: m.t + n * rowH, stroke: "#eee"}, svg);
      text(svg, X(v), m.t + n * rowH + 13, fmt(v), {"text-anchor": "middle"});
    });
    text(svg, m.l + pw / 2, m.t + n * rowH + 27, spec.xlabel, {"text-anchor": "middle"});
    var marks = 0;
    spec.categories.forEach(function (cat, i) {
      var y = m.t + i * rowH + 5, x = 0;
      text(svg, m.l - 6, y + 14, cat.length > 32 ? cat.slice(0, 31) + "…" : cat, {"text-anchor": "end"});
      spec.stacks.forEach(function (s) {
        var v = s.values[i];
        if (!(v > 0)) return;
        var r = el("rect", {x: X(x), y: y, width: Math.max(X(x + v) - X(x), 0.5), height: rowH - 10, fill: s.color, "data-mark": 1}, svg);
        el("title", {}, r).textContent = cat + "\n" + s.name + ": " + fmt(v) + " " + spec.xlabel;
        x += v; marks++;
      });
      text(svg, X(x) + 4, y + 14, fmt(totals[i]), {"font-size": 10});
    });
    spec.stacks.forEach(function (s, i) {
      var lx = m.l + (i % 4) * 135, ly = m.t + n * rowH + m.b + Math.floor(i / 4) * 16;
      el("rect", {x: lx, y: ly - 8, width: 11, height: 11, fill: s.color}, svg);
      text(svg, lx + 15, ly + 2, s.name, {"font-size": 10.5});
    });
    return marks;
  }
  var charts = JSON.parse(document.getElementById("chart-data").textContent);
  document.querySelectorAll(".plot").forEach(function (div) {
    var spec = charts[+div.getAttribute("data-chart")];
    var marks = spec.kind === "bar" ? barChart(div, spec) : lineChart(div, spec);
    div.setAttribute("data-drawn", String(marks));
  });
})();
