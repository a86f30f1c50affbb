// What every page script shares (loaded first by base.html, inlined first into the one-file
// downloads): finding and making elements, how tokens and numbers are shown, the tooltip,
// progress bars, Plotly's options, JSON requests and background tasks. Text from the server or
// the models only ever reaches the DOM through textContent.
window.VR = (function () {
  "use strict";
  const $ = (id) => document.getElementById(id);

  // The JSON a page embeds in a script element of type application/json with this id.
  const embedded = (id) => JSON.parse($(id).textContent);

  // A new element; `text` goes in as text, never as markup.
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  // A table row: each cell is text, a node, or [text or node, class].
  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const [content, cls] = Array.isArray(cell) ? cell : [cell, ""];
      const td = el("td", undefined, cls);
      if (content instanceof Node) td.append(content);
      else td.textContent = content;
      tr.append(td);
    }
    return tr;
  }

  // A token as the strips show it (as the server's show_token does): whitespace made visible.
  const visible = (t) => (t === "" ? "∅" : t.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "␍"));
  const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

  // Show `nodes` in `tooltip`, under `anchor`, kept inside the window.
  function showTooltip(tooltip, anchor, nodes) {
    tooltip.replaceChildren(...nodes);
    tooltip.hidden = false;
    const rect = anchor.getBoundingClientRect();
    const right = window.scrollX + document.documentElement.clientWidth - tooltip.offsetWidth - 8;
    tooltip.style.left = `${Math.max(8, Math.min(window.scrollX + rect.left, right))}px`;
    tooltip.style.top = `${window.scrollY + rect.bottom + 6}px`;
  }

  // A progress bar (.progress > .bar > .fill, and a label): `fraction` of it filled.
  function progress(fill, label, fraction, text) {
    fill.style.width = `${Math.round(100 * Math.min(1, Math.max(0, fraction || 0)))}%`;
    if (text !== undefined) label.textContent = text;
  }

  // An error box (role=alert): shown with the message, or hidden when there is none.
  function showError(box, message) {
    box.textContent = message || "";
    box.hidden = !message;
  }

  // Draw, or redraw, a figure the server built (plotly.io's JSON) with the app's options.
  const PLOTLY_CONFIG = { displaylogo: false, responsive: true };
  const plot = (div, figure) => Plotly.react(div, figure.data, figure.layout, PLOTLY_CONFIG);

  // The API's error shape as one sentence: its message and, for a 422, the fields.
  function describe(body) {
    const details = (body.details || []).map((d) => `${d.field}: ${d.error}`).join("; ");
    return body.error + (details && !body.error.includes(details) ? ` (${details})` : "");
  }

  // fetch, then the JSON body; rejects with an Error whose message is the server's (a clear
  // sentence, never a stack trace). `init.json`: a body to send as JSON.
  async function request(url, init = {}) {
    const options = { ...init };
    if (init.json !== undefined) {
      options.method = init.method || "POST";
      options.headers = { "content-type": "application/json", ...init.headers };
      options.body = JSON.stringify(init.json);
      delete options.json;
    }
    let response;
    try {
      response = await fetch(url, options);
    } catch (e) {
      throw new Error(`the server could not be reached: ${e}`);
    }
    const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw Object.assign(new Error(describe(body)), { body });
    return body;
  }

  // Background tasks (POST .../tasks, then GET /api/tasks/{id}): resolves with the finished
  // task, calls onProgress with each state until then.
  async function runTask(url, body, onProgress) {
    const started = await request(url, { json: body });
    for (;;) {
      const task = await request(`/api/tasks/${encodeURIComponent(started.task_id)}`);
      if (task.state === "done") return task;
      if (task.state === "error") throw new Error(task.error.error);
      onProgress(task);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  // A button with data-delete (the analysis and job pages): asks first, then deletes and goes
  // to data-next. Its error (e.g. the token has expired) is shown in an alert.
  for (const button of document.querySelectorAll("button[data-delete]")) {
    button.addEventListener("click", async () => {
      if (!window.confirm(button.dataset.confirm)) return;
      try {
        await request(button.dataset.delete, { method: "DELETE" });
        window.location.assign(button.dataset.next);
      } catch (e) {
        window.alert(e.message);
      }
    });
  }

  return { $, embedded, el, row, visible, fmt, showTooltip, progress, showError, plot, request, runTask };
})();
