/* /ui/lab: every host's facts and models, from the app's lab source; with a key, its actions. */
"use strict";

(() => {
  const hosts = document.querySelector("#hosts tbody");
  const models = document.querySelector("#lab-models tbody");
  const acting = document.getElementById("hosts").dataset.acting === "yes";
  const said = document.getElementById("lab-action");
  let shown = [];

  function gb(value) {
    return value === null || value === undefined ? "–" : value.toFixed(1) + " GB";
  }

  const gateway = document.querySelector("#gateway tbody");
  const GATEWAY_KIND = { up: "ok", cooling: "loading", drained: "loading" };

  /* What the gateway knows of each host: only the gateway's lab view has it. */
  function showGateway(rows) {
    const seen = rows.filter((h) => h.gateway);
    document.getElementById("gateway-card").hidden = seen.length === 0;
    UI.fill(gateway, seen.map((h) => [
      h.name, UI.badge(h.gateway.state, GATEWAY_KIND[h.gateway.state] || "failed"), h.gateway.priority,
      h.gateway.weight, h.gateway.in_flight, h.gateway.routed, h.gateway.retried, h.gateway.detail,
    ]));
  }

  function say(text, failed) {
    said.textContent = text;
    said.classList.toggle("error", Boolean(failed));
    said.hidden = !text;
  }

  function hostRow(h) {
    const cells = [
      h.name, UI.badge(h.reachable ? "yes" : "no", h.reachable ? "ok" : "failed"), h.revision, h.server,
      h.health ? UI.badge(h.health, h.health === "ok" ? "ok" : "failed") : "", h.engine,
      gb(h.memory_free_gb), gb(h.disk_free_gb), h.problem,
    ];
    if (acting) cells.push(h.reachable ? UI.actionButton("Restart server", { action: "restart", host: h.name }) : "");
    return cells;
  }

  function modelRow(h, m) {
    const cells = [h.name, ...UI.modelCells(m)];
    if (acting) cells.push(UI.modelActions(m, { host: h.name }));
    return cells;
  }

  function show(lab) {
    shown = lab;
    UI.fill(hosts, lab.map(hostRow));
    showGateway(lab);
    const rows = lab.flatMap((h) => h.models.map((m) => [h, m]));
    UI.fill(models, rows.map(([h, m]) => modelRow(h, m)));
    models.querySelectorAll("tr").forEach((tr, i) => {
      const [h, m] = rows[i];
      Object.assign(tr.dataset, { host: h.name, model: m.name, state: m.state });
    });
  }

  async function refresh() {
    show((await UI.getJSON("/ui/api/lab")).hosts);
    document.getElementById("lab-updated").textContent = "Updated " + new Date().toLocaleTimeString();
  }

  /* One action at a time per button; the answer's line is shown and its host's rows redrawn. */
  async function act(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const { host, model, action } = button.dataset;
    const path = "/ui/api/lab/hosts/" + encodeURIComponent(host) +
      (action === "restart" ? "/restart" : "/models/" + encodeURIComponent(model) + "/" + action);
    button.disabled = true;
    say(host + ": " + button.textContent.toLowerCase() + (model ? " " + model : "") + "…");
    try {
      const done = await (await UI.post(path)).json();
      say(done.message, !done.ok);
      show(shown.map((h) => (h.name === done.host.name ? done.host : h)));
    } catch (e) {
      say(e.message, true);
      button.disabled = false;
    }
  }

  if (acting) {
    hosts.addEventListener("click", act);
    models.addEventListener("click", act);
  }
  UI.poll(refresh, 10000);
})();
