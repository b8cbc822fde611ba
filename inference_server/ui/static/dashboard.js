/* /ui/: this server's models (with load / pin / unload), load charts and recent requests. */
"use strict";

(() => {
  const charts = {};
  const WINDOW_S = 300; // the charts show the last five minutes, as the server keeps them
  let newest = Date.now() / 1000;
  const modelsBody = document.querySelector("#models tbody");
  const requestsBody = document.querySelector("#requests tbody");

  modelsBody.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    button.disabled = true;
    try {
      const path = "/ui/api/models/" + encodeURIComponent(button.dataset.model) + "/" + button.dataset.action;
      await UI.post(path);
      await refresh();
    } catch (e) {
      UI.showError(e.message);
      button.disabled = false;
    }
  });

  function chart(id, series, data) {
    const element = document.getElementById(id);
    const width = Math.max(element.clientWidth, 200);
    if (!charts[id]) {
      charts[id] = new uPlot({
        width,
        height: 140,
        legend: { show: false },
        scales: {
          x: { time: true, range: () => [newest - WINDOW_S, newest] },
          y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] },
        },
        axes: [{ size: 30 }, { size: 40 }],
        series: [{}, ...series.map(([label, stroke, points]) => ({ label, stroke, width: 2, points }))],
      }, data, element);
    } else {
      if (charts[id].width !== width) charts[id].setSize({ width, height: 140 });
      charts[id].setData(data);
    }
    // What the chart shows at most, for a reader that cannot see the canvas (and for the tests).
    element.dataset.max = Math.max(0, ...data.slice(1).flat().filter((v) => v !== null));
  }

  function last(values) {
    for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
    return null;
  }

  function showLoad(history, used, budget) {
    const t = history.map((s) => s.at);
    if (t.length) newest = t[t.length - 1];
    const tokens = history.map((s) => s.tokens_per_s);
    const flight = history.map((s) => s.in_flight);
    const queue = history.map((s) => s.queue_depth);
    const ttft = history.map((s) => s.ttft_s);
    document.getElementById("stat-tokens").textContent = history.length ? tokens[tokens.length - 1].toFixed(1) : "–";
    document.getElementById("stat-flight").textContent = history.length ? flight[flight.length - 1] : "–";
    document.getElementById("stat-queue").textContent = history.length ? queue[queue.length - 1] : "–";
    const lastTtft = last(ttft);
    document.getElementById("stat-ttft").textContent = lastTtft === null ? "–" : UI.seconds(lastTtft);
    document.getElementById("stat-memory").textContent = UI.bytes(used) + " / " + UI.bytes(budget);
    chart("chart-tokens", [["tokens/s", "#2f7ed8"]], [t, tokens]);
    chart("chart-flight", [["in flight", "#2f7ed8"], ["queued", "#d8792f"]], [t, flight, queue]);
    // Always points: a TTFT sample between idle (null) ones is a lone point, with no line to draw.
    chart("chart-ttft", [["TTFT s", "#3a9a5b", { show: true, size: 5 }]], [t, ttft]);
  }

  function showRequests(requests, promptText) {
    document.querySelectorAll(".prompt-col").forEach((th) => { th.hidden = !promptText; });
    document.getElementById("no-requests").hidden = requests.length > 0;
    UI.fill(requestsBody, requests.map((r) => {
      const cells = [
        new Date(r.at * 1000).toLocaleTimeString(), r.model, r.prompt_tokens, r.completion_tokens,
        UI.seconds(r.duration_s), UI.badge(r.status, ["stop", "length", "tool_calls", "stop_sequence"].includes(r.status) ? "ok" : "failed"),
      ];
      if (promptText) cells.push(r.prompt);
      return cells;
    }));
  }

  async function refresh() {
    const state = await UI.getJSON("/ui/api/state");
    UI.fill(modelsBody, state.models.map((m) => [...UI.modelCells(m), UI.modelActions(m)]));
    modelsBody.querySelectorAll("tr").forEach((tr, i) => { tr.dataset.model = state.models[i].name; tr.dataset.state = state.models[i].state; });
    showLoad(state.history, state.used_bytes, state.memory_budget_bytes);
    showRequests(state.requests, state.prompt_text);
  }

  UI.poll(refresh, 2000);
})();
