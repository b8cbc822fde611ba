/* /ui/lab: every host's facts and models, from the app's lab source. */
"use strict";

(() => {
  const hosts = document.querySelector("#hosts tbody");
  const models = document.querySelector("#lab-models tbody");

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

  async function refresh() {
    const lab = await UI.getJSON("/ui/api/lab");
    UI.fill(hosts, lab.hosts.map((h) => [
      h.name, UI.badge(h.reachable ? "yes" : "no", h.reachable ? "ok" : "failed"), h.revision, h.server,
      h.health ? UI.badge(h.health, h.health === "ok" ? "ok" : "failed") : "", h.engine,
      gb(h.memory_free_gb), gb(h.disk_free_gb), h.problem,
    ]));
    showGateway(lab.hosts);
    UI.fill(models, lab.hosts.flatMap((h) => h.models.map((m) => [h.name, ...UI.modelCells(m)])));
    document.getElementById("lab-updated").textContent = "Updated " + new Date().toLocaleTimeString();
  }

  UI.poll(refresh, 10000);
})();
