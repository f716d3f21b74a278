// hone playground: one prompt to up to three models, each reply streamed in side by side from
// /v1/chat/completions (server-sent events). Model text is only ever set with textContent.
(function () {
  "use strict";

  function part(panel, name) {
    return panel.querySelector("." + name);
  }

  function reset(panel, model) {
    part(panel, "reply-model").textContent = model;
    part(panel, "reply-text").textContent = "";
    part(panel, "reply-text").hidden = false;
    part(panel, "reply-finish").textContent = "Waiting for the first tokens…";
    part(panel, "reply-error").hidden = true;
    part(panel, "reply-error").textContent = "";
    part(panel, "reply-sources").hidden = true;
    part(panel, "sources").textContent = "";
    panel.hidden = false;
  }

  function fail(panel, message) {
    var error = part(panel, "reply-error");
    error.textContent = message;
    error.hidden = false;
    part(panel, "reply-finish").textContent = "";
    var text = part(panel, "reply-text");
    text.hidden = text.textContent === "";  // a refused request has no reply to show
  }

  function showSources(panel, sources) {
    var list = part(panel, "sources");
    sources.forEach(function (source) {
      var item = document.createElement("li");
      var where = document.createElement("strong");
      where.textContent = source.source + ":" + source.line;
      var score = document.createElement("span");
      score.className = "muted";
      score.textContent = " (score " + Number(source.score).toFixed(3) + ") ";
      var text = document.createElement("q");
      text.textContent = source.text;
      item.append(where, score, text);
      list.append(item);
    });
    part(panel, "reply-sources").hidden = sources.length === 0;
  }

  // One SSE event's data: text to append, the finish reason, the sources, or the API's error.
  function handle(panel, data) {
    var chunk = JSON.parse(data);
    if (chunk.error) {
      fail(panel, chunk.error.message);
      return;
    }
    var choice = (chunk.choices || [])[0];
    if (choice && choice.delta && choice.delta.content) {
      part(panel, "reply-text").textContent += choice.delta.content;
      part(panel, "reply-finish").textContent = "Streaming…";
    }
    if (choice && choice.finish_reason) {
      part(panel, "reply-finish").textContent = "Finished: " + choice.finish_reason;
    }
    if (chunk.sources) {
      showSources(panel, chunk.sources);
    }
  }

  async function refusal(response) {
    try {
      return (await response.json()).error.message;
    } catch (ignored) {
      return "The server answered " + response.status + "; try again";
    }
  }

  async function stream(panel, body) {
    var response;
    try {
      response = await window.hone.api("/v1/chat/completions", {method: "POST", json: body});
    } catch (error) {
      fail(panel, "The server could not be reached; try again");
      return;
    }
    if (!response.ok) {
      fail(panel, await refusal(response));
      return;
    }
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var read = await reader.read();
      if (read.done) break;
      buffer += decoder.decode(read.value, {stream: true});
      var events = buffer.split("\n\n");
      buffer = events.pop();
      for (var i = 0; i < events.length; i++) {
        var data = events[i].split("\n").filter(function (line) { return line.startsWith("data: "); })
          .map(function (line) { return line.slice(6); }).join("\n");
        if (data && data !== "[DONE]") handle(panel, data);
      }
    }
  }

  function send(form) {
    var prompt = form.elements["prompt"].value;
    var maxTokens = parseInt(form.elements["max-tokens"].value, 10);
    var index = form.elements["index"].value;
    var button = document.getElementById("send");
    var runs = [];
    document.querySelectorAll("#replies .reply").forEach(function (panel) {
      var n = panel.dataset.column;
      var model = form.elements["model-" + n].value;
      if (!model) {
        panel.hidden = true;
        return;
      }
      var body = {model: model, messages: [{role: "user", content: prompt}], stream: true,
                  temperature: parseFloat(form.elements["temperature-" + n].value)};
      if (maxTokens > 0) body.max_tokens = maxTokens;
      if (index) body.index = index;
      reset(panel, model);
      runs.push(stream(panel, body));
    });
    button.disabled = true;
    Promise.allSettled(runs).then(function () { button.disabled = false; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("playground");
    if (!form) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      send(form);
    });
  });
})();
