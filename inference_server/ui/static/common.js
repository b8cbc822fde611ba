/* What every dashboard page shares: fetching with the CSRF token, formatting, table rows, polling. */
"use strict";

const UI = (() => {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const errorLine = document.getElementById("error");

  function showError(text) {
    errorLine.textContent = text;
    errorLine.hidden = !text;
  }

  async function failure(response) {
    if (response.status === 401) {
      location.assign("/ui/login?next=" + encodeURIComponent(location.pathname));
    }
    try {
      const body = await response.json();
      return new Error(body.error && body.error.message ? body.error.message : response.statusText);
    } catch (e) {
      return new Error(response.status + " " + response.statusText);
    }
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { accept: "application/json" } });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  /* An action: a POST with the page's CSRF token; resolves to the response (its body unread). */
  async function post(path, body, signal) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    if (!response.ok) throw await failure(response);
    return response;
  }

  function bytes(n) {
    if (!n) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return n.toFixed(n >= 10 || i === 0 ? 0 : 1) + " " + units[i];
  }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function cell(content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = content === null || content === undefined ? "" : String(content);
    return td;
  }

  /* The rows, each cell labelled with its column's heading (a phone shows rows as labelled cards). */
  function fill(tbody, rows) {
    const labels = [...tbody.closest("table").querySelectorAll("thead th")].map((th) => th.textContent);
    tbody.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      tr.append(...cells.map((content, i) => {
        const td = cell(content);
        td.dataset.label = labels[i] || "";
        return td;
      }));
      return tr;
    }));
  }

  function badge(text, kind) {
    const span = document.createElement("span");
    span.className = "badge " + (kind || text);
    span.textContent = text;
    return span;
  }

  /* The cells of one model row, in the shape GET /admin/models gives (shared by both views). */
  function modelCells(m) {
    const name = document.createElement("span");
    name.className = "model-name";
    name.append(m.name);
    if (m.default) name.append(" ", badge("default"));
    if (m.pinned) name.append(" ", badge("pinned"));
    let idle = "–";
    if (m.idle_s !== null && m.idle_s !== undefined) {
      idle = "idle " + seconds(m.idle_s);
      if (m.expires_in_s !== null && m.expires_in_s !== undefined) idle += " · unloads in " + seconds(m.expires_in_s);
      else if (m.pinned) idle += " · pinned";
      else idle += " · kept";
    } else if (m.state === "loaded") {
      idle = "busy";
    }
    const resident = m.state === "loaded" ? bytes(m.resident_bytes || m.footprint_bytes) : "–";
    return [name, badge(m.state), resident, m.context_size, m.active_requests + " / " + m.slots, idle];
  }

  /* A button that says what it does in data-* (`data` e.g. {action: "load", model: "smollm2"}). */
  function actionButton(label, data) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    Object.assign(button.dataset, data);
    return button;
  }

  /* Load / Pin / Unload for one model row, as its state allows (`where` adds e.g. {host: "a"}). */
  function modelActions(m, where) {
    const span = document.createElement("span");
    span.className = "actions";
    const data = (action) => ({ ...where, action, model: m.name });
    if (m.state === "unloaded") span.append(actionButton("Load", data("load")));
    if (!m.pinned && m.state !== "unloading") span.append(actionButton("Pin", data("pin")));
    if (m.state === "loaded" || m.state === "loading") span.append(actionButton("Unload", data("unload")));
    return span;
  }

  /* Calls `work` now and again `every` ms after each run ends; a failure is shown, not thrown. */
  function poll(work, every) {
    const run = async () => {
      try {
        await work();
        showError("");
      } catch (e) {
        showError(e.message);
      }
      setTimeout(run, every);
    };
    run();
  }

  return { getJSON, post, bytes, seconds, fill, badge, modelCells, actionButton, modelActions, poll, showError };
})();
