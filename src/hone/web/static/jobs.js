// A job's page: the loss chart (uPlot) and the status, progress, events and checkpoints follow the job live
// through the page's server-sent event stream, without reloading the page.
(function () {
  "use strict";
  var source = document.getElementById("job-live");
  if (!source) { return; }
  var live = JSON.parse(source.textContent);
  var steps = [], train = [], evals = [];
  var chart = null;
  var chartBox = document.getElementById("loss-chart");
  var seenEvents = {};

  function byId(id) { return document.getElementById(id); }

  function chartWidth() { return Math.max(240, chartBox.clientWidth - 8); }

  function drawChart() {
    if (!window.uPlot) { return; }
    chart = new window.uPlot({
      width: chartWidth(), height: 280, legend: {show: false}, scales: {x: {time: false}},
      axes: [{label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]}, {label: "loss"}],
      series: [
        {label: "step"},
        {label: "training loss", stroke: "#0b5cad", width: 2},
        {label: "eval loss", stroke: "#a40e26", width: 2, spanGaps: true, points: {show: true, size: 6}},
      ],
    }, [steps, train, evals], chartBox);
    window.addEventListener("resize", function () { chart.setSize({width: chartWidth(), height: 280}); });
  }

  // New points (in step order) join the chart; a step already drawn is skipped (a reconnect resends it).
  function addPoints(points) {
    points.forEach(function (point) {
      if (steps.length && point.step <= steps[steps.length - 1]) { return; }
      steps.push(point.step);
      train.push(point.train_loss === undefined ? null : point.train_loss);
      evals.push(point.valid_loss === undefined ? null : point.valid_loss);
    });
    if (chart) { chart.setData([steps, train, evals]); }
    var counter = byId("point-count");
    counter.setAttribute("data-points", String(steps.length));
    counter.textContent = steps.length + (steps.length === 1 ? " point" : " points");
  }

  function showProgress(progress, state) {
    byId("progress-steps").textContent = (progress.step || 0) + " of " + (progress.total_steps || "?");
    byId("progress-rate").textContent = progress.tokens_per_s == null ? "–" : String(progress.tokens_per_s);
    byId("progress-eta").textContent = progress.eta || "–";
    var tokens = (state && state.trained_tokens) || progress.tokens;
    if (tokens) { byId("progress-tokens").textContent = String(tokens); }
  }

  function showState(state) {
    var holder = byId("job-status");
    holder.setAttribute("data-status", state.status);
    var badge = holder.querySelector(".badge");
    badge.className = "badge badge-" + state.status;
    badge.textContent = state.status;
    document.querySelectorAll("#job-actions form[data-action]").forEach(function (form) {
      form.hidden = state.actions.indexOf(form.getAttribute("data-action")) < 0;
    });
    var error = byId("job-error");
    error.hidden = !state.error;
    error.textContent = state.error || "";
    if (state.fine_tuned_model) {
      var code = document.createElement("code");
      code.textContent = state.fine_tuned_model;
      byId("fine-tuned-model").replaceChildren(code);
    }
    if (state.trained_tokens) { byId("progress-tokens").textContent = String(state.trained_tokens); }
    if (state.finished) { byId("progress-eta").textContent = "–"; }
  }

  function cell(text, className) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    td.textContent = text;
    return td;
  }

  function timeCell(iso) {
    var td = document.createElement("td");
    var time = document.createElement("time");
    time.setAttribute("datetime", iso);
    time.textContent = iso.replace("T", " ").slice(0, 19);
    td.appendChild(time);
    return td;
  }

  // New events, oldest first, go on top of the table (it lists the newest first).
  function addEvents(events) {
    var body = byId("event-rows");
    events.forEach(function (event) {
      if (seenEvents[event.id]) { return; }
      seenEvents[event.id] = true;
      var row = document.createElement("tr");
      row.setAttribute("data-id", event.id);
      row.append(timeCell(event.created), cell(event.level), cell(event.message));
      body.insertBefore(row, body.firstChild);
    });
  }

  function loss(value) { return value == null ? "" : value.toFixed(4); }

  function showCheckpoints(rows) {
    var body = byId("checkpoint-rows");
    body.replaceChildren.apply(body, rows.map(function (c) {
      var row = document.createElement("tr");
      var name = document.createElement("td");
      var code = document.createElement("code");
      code.textContent = c.name;
      name.appendChild(code);
      row.append(name, cell(String(c.step), "num"), cell(loss(c.train_loss), "num"), cell(loss(c.valid_loss), "num"));
      return row;
    }));
  }

  function listen() {
    var query = new URLSearchParams();
    if (steps.length) { query.set("after_step", String(steps[steps.length - 1])); }
    if (live.after_event) { query.set("after_event", live.after_event); }
    var stream = new EventSource(live.stream + "?" + query.toString());
    var state = live.state;
    stream.addEventListener("job", function (message) { state = JSON.parse(message.data); showState(state); });
    stream.addEventListener("metrics", function (message) {
      var data = JSON.parse(message.data);
      addPoints(data.points);
      showProgress(data.progress, state);
    });
    stream.addEventListener("events", function (message) { addEvents(JSON.parse(message.data)); });
    stream.addEventListener("checkpoints", function (message) { showCheckpoints(JSON.parse(message.data)); });
    stream.addEventListener("end", function () { stream.close(); });
    stream.addEventListener("failure", function (message) {
      stream.close();
      var error = byId("job-error");
      error.hidden = false;
      error.textContent = "Live updates stopped: " + JSON.parse(message.data).message;
    });
  }

  document.querySelectorAll("#event-rows tr[data-id]").forEach(function (row) {
    seenEvents[row.getAttribute("data-id")] = true;
  });
  drawChart();
  addPoints(live.points);
  if (!live.state.finished) { listen(); }
})();
