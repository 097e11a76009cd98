/* The job page's throughput chart: items/s and WCU/s over time, the throttled share of calls on a
 * second axis. Data: selectors.throughput_series, as [seconds since start, items/s, WCU/s, share];
 * drawn on load (also for a finished job) and redrawn by the page's poller (window.bulkwritesChart). */
(function () {
  "use strict";
  var el = document.getElementById("throughput-chart");
  if (!el || typeof uPlot === "undefined") return;
  var plot = null;

  function columns(history, startedAt) {
    var start = Date.parse(startedAt) / 1000;
    var t = [], items = [], wcu = [], throttled = [];
    history.forEach(function (p) {
      t.push(start + p[0]);
      items.push(p[1]);
      wcu.push(p.length > 2 ? p[2] : null);
      throttled.push(p.length > 3 ? Math.round(p[3] * 1000) / 10 : null);
    });
    return [t, items, wcu, throttled];
  }

  // The chart's own box (a block as wide as the content allows, at most 980 px wide in CSS).
  function width() { return Math.max(320, Math.min(960, Math.floor(el.getBoundingClientRect().width))); }

  function options() {
    var fixed = function (digits) { return function (u, v) { return v == null ? "—" : v.toFixed(digits); }; };
    return {
      width: width(),
      height: 240,
      scales: {
        x: {time: true},
        y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }},
        share: {auto: false, range: [0, 100]},
      },
      series: [
        {},
        {label: "items/s", stroke: "#417690", width: 2, value: fixed(1)},
        {label: "WCU/s", stroke: "#c47f00", width: 1.5, dash: [6, 3], value: fixed(1)},
        {
          label: "throttled calls %", scale: "share", stroke: "rgba(186,33,33,0.85)", width: 1,
          fill: "rgba(186,33,33,0.14)", paths: uPlot.paths.stepped({align: 1}),
          value: function (u, v) { return v == null ? "—" : v + " %"; },
        },
      ],
      axes: [
        {},
        {label: "per second", size: 64},
        {side: 1, scale: "share", label: "throttled %", size: 56, grid: {show: false},
         values: function (u, ticks) { return ticks.map(function (v) { return v + "%"; }); }},
      ],
    };
  }

  function draw(history, startedAt) {
    var empty = document.getElementById("chart-empty");
    if (!history || history.length < 2 || !startedAt) {
      if (!plot && empty) empty.hidden = false;
      return;
    }
    if (empty) empty.hidden = true;
    var data = columns(history, startedAt);
    if (plot) { plot.setData(data); } else { plot = new uPlot(options(), data, el); }
    el.dataset.points = String(history.length);
  }

  // draw: the poller's way in; data: what is drawn, as [times, items/s, WCU/s, throttled %] (tests read it).
  // ticks: the labels uPlot drew under the time axis (on the canvas, so not in the DOM).
  window.bulkwritesChart = {
    draw: draw,
    data: function () { return plot ? plot.data : null; },
    ticks: function () { return plot && plot.axes[0]._values ? plot.axes[0]._values.slice() : []; },
  };
  // The admin's sidebar settles after this script runs, and windows resize: follow the box.
  function fit() { if (plot && Math.abs(plot.width - width()) > 1) plot.setSize({width: width(), height: 240}); }
  if (typeof ResizeObserver !== "undefined") { new ResizeObserver(fit).observe(el); }
  window.addEventListener("resize", fit);
  window.addEventListener("load", fit);
  draw(JSON.parse(document.getElementById("history-data").textContent),
       JSON.parse(document.getElementById("history-started-at").textContent));
})();
