// The Dashboard page: reads /dashboard/data every few seconds and draws its series with uPlot (vendored).
// A static file because the console's CSP allows no inline script; uPlot sizes its elements through
// element.style (CSSOM), which style-src does not restrict, and ships its stylesheet as a file.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") { return; }
  var select = document.getElementById("dashboard-version");
  var status = document.getElementById("dashboard-status");
  var endpoint = root.getAttribute("data-endpoint");
  var every = Number(root.getAttribute("data-refresh-ms")) || 5000;
  var css = getComputedStyle(document.documentElement);
  function color(name) { return css.getPropertyValue(name).trim() || "#888"; }
  var ms = function (v) { return v === null ? null : v * 1000; };
  var mib = function (v) { return v === null ? null : v / 1048576; };
  var same = function (v) { return v; };
  // Each chart: its series (figure name in the data, label, colour, unit conversion).
  var CHARTS = {
    requests: [["rps", "requests/s", "--accent", same]],
    latency: [["p50", "p50 ms", "--ok", ms], ["p95", "p95 ms", "--warn", ms], ["p99", "p99 ms", "--err", ms]],
    errors: [["errors_5xx", "5xx/s", "--err", same], ["errors_4xx", "4xx/s", "--warn", same]],
    instances: [["serving", "serving", "--ok", same], ["starting", "starting", "--warn", same],
                ["stopping", "stopping", "--muted", same]],
    memory: [["memory", "MiB", "--accent", mib]]
  };
  var plots = {};

  function width(figure) { return Math.max(figure.clientWidth - 8, 240); }

  function make(name, figure) {
    var axis = {stroke: color("--muted"), grid: {stroke: color("--line"), width: 1}, ticks: {stroke: color("--line")}};
    var series = [{}];
    CHARTS[name].forEach(function (s) {
      series.push({label: s[1], stroke: color(s[2]), width: 2, spanGaps: false, points: {show: false}});
    });
    var opts = {width: width(figure), height: 180, series: series, axes: [axis, axis],
                scales: {y: {range: function (u, min, max) { return [0, Math.max(max || 0, 1e-9) * 1.1]; }}},
                legend: {live: true}, cursor: {drag: {x: false, y: false}}};
    return new uPlot(opts, [[]].concat(CHARTS[name].map(function () { return []; })), figure);
  }

  // The points drawn (one version's); each refresh asks only for those after the newest (?since=).
  var shown = {version: null, series: null};
  var HOUR = 3600;

  function merge(data) {
    if (data.since === null || shown.version !== data.version || !shown.series) {
      shown = {version: data.version, series: data.series};
      return;
    }
    var series = shown.series;
    Object.keys(series).forEach(function (name) { series[name] = series[name].concat(data.series[name]); });
    var times = series.time, newest = times.length ? times[times.length - 1] : 0, drop = 0;
    while (drop < times.length && times[drop] < newest - HOUR) { drop += 1; }
    if (drop) { Object.keys(series).forEach(function (name) { series[name] = series[name].slice(drop); }); }
  }

  function draw(series) {
    Array.prototype.forEach.call(root.querySelectorAll("figure[data-chart]"), function (figure) {
      var name = figure.getAttribute("data-chart");
      if (!plots[name]) { plots[name] = make(name, figure); }
      var columns = [series.time], drawn = 0;
      CHARTS[name].forEach(function (s) {
        var values = series[s[0]].map(s[3]);
        values.forEach(function (v) { if (v !== null) { drawn += 1; } });
        columns.push(values);
      });
      plots[name].setData(columns);
      figure.setAttribute("data-drawn", String(drawn));  // values plotted: for tests and assistive tools
      // The latest values as text, under the plot: readable without seeing it (and by screen readers).
      var now = figure.querySelector(".now");
      if (!now) {
        now = document.createElement("p");
        now.className = "now";
        figure.appendChild(now);
      }
      now.textContent = "Latest: " + CHARTS[name].map(function (s, i) {
        var values = columns[i + 1], last = null;
        for (var k = values.length - 1; k >= 0 && last === null; k -= 1) { last = values[k]; }
        return s[1] + " " + (last === null ? "–" : (Math.round(last * 100) / 100).toString());
      }).join(", ");
    });
  }

  function versions(list, chosen) {
    var current = Array.prototype.map.call(select.options, function (o) { return o.value; });
    if (current.join("\n") !== list.join("\n")) {
      select.textContent = "";
      list.forEach(function (v) {
        var option = document.createElement("option");
        option.value = v;
        option.textContent = v;
        select.appendChild(option);
      });
    }
    select.value = chosen;
  }

  function say(data) {
    var failing = Object.keys(data.errors || {});
    if (failing.length) {
      status.textContent = "Could not scrape " + failing.map(function (u) { return u + " (" + data.errors[u] + ")"; })
        .join(", ");
      status.className = "notice error";
    } else if (!data.versions.length) {
      status.textContent = data.scrapes ? "No requests to this app yet." : "Waiting for the first scrapes of the metrics…";
      status.className = "empty";
    } else {
      status.textContent = "";
      status.className = "empty";
    }
  }

  var timer = null;
  function refresh() {
    var url = endpoint + "?version=" + encodeURIComponent(select.value || "");
    var times = shown.series && shown.version === select.value ? shown.series.time : [];
    if (times.length) { url += "&since=" + encodeURIComponent(String(times[times.length - 1])); }
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) {
        versions(data.versions, data.version);
        say(data);
        if (data.series) {
          merge(data);
          draw(shown.series);
        }
      })
      .catch(function (err) { status.textContent = "Could not read the dashboard's data: " + err.message; })
      .then(function () {
        clearTimeout(timer);
        timer = setTimeout(refresh, every);
      });
  }
  select.addEventListener("change", refresh);
  window.addEventListener("resize", function () {
    Object.keys(plots).forEach(function (name) {
      var figure = root.querySelector("figure[data-chart='" + name + "']");
      plots[name].setSize({width: width(figure), height: 180});
    });
  });
  refresh();
})();
