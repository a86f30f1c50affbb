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
  // Each chart gets a text alternative (role=img, aria-label) from its own figure: its title, its
  // axes and its series; one the template wrote itself is kept.
  function plot(div, figure) {
    if (!div.hasAttribute("aria-label") || div.dataset.described) {
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", describeFigure(figure));
      div.dataset.described = "1";
    }
    return Plotly.react(div, figure.data, figure.layout, PLOTLY_CONFIG);
  }
  function describeFigure(figure) {
    const layout = figure.layout || {};
    const words = (t) => String((t && (t.text ?? t)) || "").replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
    const axes = Object.keys(layout).filter((k) => /^[xy]axis\d*$/.test(k)).sort().map((k) => words(layout[k].title));
    const series = [...new Set((figure.data || []).map((t) => words(t.name)))];
    return [
      `Chart: ${words(layout.title) || "untitled"}`,
      axes.filter(Boolean).length ? `axes: ${axes.filter(Boolean).join(", ")}` : "",
      series.filter(Boolean).length ? `series: ${series.filter(Boolean).join(", ")}` : "",
    ].filter(Boolean).join("; ");
  }

  // The API's error shape as one sentence. A 422's details each name their field already (the
  // message is the first of them and "(and N more)"): they are said once each, not twice.
  function describe(body) {
    const details = (body.details || []).map((d) => (d.error.includes(d.field) ? d.error : `${d.field}: ${d.error}`));
    return details.length ? details.join("; ") : body.error;
  }

  // An error shown once, where it belongs: each problem the API ties to a field (`details[].field`,
  // or `field`) next to that field of `form` (marked aria-invalid, its message linked by
  // aria-describedby, the first one focused); what names no shown field goes in `box`. Called
  // with no error, it clears them all.
  function showErrors(form, box, error) {
    for (const old of form.querySelectorAll(".field-error")) old.remove();
    for (const field of form.querySelectorAll("[aria-invalid]")) {
      field.removeAttribute("aria-invalid");
      const rest = (field.getAttribute("aria-describedby") || "").split(" ").filter((id) => id && !id.endsWith("-error"));
      if (rest.length) field.setAttribute("aria-describedby", rest.join(" "));
      else field.removeAttribute("aria-describedby");
    }
    if (!error) return showError(box, "");
    const body = error.body || {};
    const problems = body.details && body.details.length ? body.details.map((d) => [d.field, d.error])
      : body.field ? [[body.field, body.error]] : [[null, error.message]];
    const unplaced = [];
    let first = null;
    for (const [name, message] of problems) {
      const input = name && fieldOf(form, name);
      if (!input) {
        unplaced.push(name && !message.includes(name) ? `${name}: ${message}` : message);
        continue;
      }
      const note = el("p", message, "field-error");
      note.id = `${input.id || input.name}-error`;
      input.after(note);
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", `${input.getAttribute("aria-describedby") || ""} ${note.id}`.trim());
      first = first || input;
    }
    showError(box, unplaced.join("; "));
    if (first) first.focus();
  }

  // The shown control of `form` for an API field name ("generation.max_new_tokens" is the
  // max_new_tokens box, "prompt.0.role" the prompt), or null when there is none or it is hidden.
  function fieldOf(form, name) {
    const parts = String(name).split(".");
    for (const key of [name, parts[parts.length - 1], parts[0]]) {
      const found = form.elements.namedItem(key);
      const input = found instanceof RadioNodeList ? found[0] : found;
      if (input && input.getClientRects().length) return input;
    }
    return null;
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
  // task, calls onProgress with each state until then (and onStarted with its id, e.g. for a
  // Cancel button: cancelTask). A cancelled task rejects with an Error whose `cancelled` is true.
  async function runTask(url, body, onProgress, onStarted) {
    const started = await request(url, { json: body });
    if (onStarted) onStarted(started.task_id);
    for (;;) {
      const task = await request(`/api/tasks/${encodeURIComponent(started.task_id)}`);
      if (task.state === "done") return task;
      if (task.state === "error") throw Object.assign(new Error(describe(task.error)), { body: task.error });
      if (task.state === "cancelled") throw Object.assign(new Error("cancelled"), { cancelled: true });
      onProgress(task);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  // POST /api/tasks/{id}/cancel: the task stops at its next step (runTask then rejects).
  const cancelTask = (id) => request(`/api/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });

  // The "?" beside a number a script builds (templates/_define.html makes the same element on
  // the server), from the definitions base.html embeds; null for a key without one.
  const DEFINITIONS = document.getElementById("vr-definitions");
  function definition(key) {
    const known = DEFINITIONS ? JSON.parse(DEFINITIONS.textContent) : { keys: {}, fields: {} };
    if (known.keys[key]) return known.keys[key];
    // an objective's or a TIP quadrant's row, `<name>_<field>`: the field's definition, named for the row
    const field = Object.keys(known.fields).sort((a, b) => b.length - a.length).find((f) => key.endsWith(`_${f}`));
    if (!field || key.length <= field.length + 1) return null;
    const prefix = key.slice(0, -field.length - 1).replace(/_/g, " ");
    return { ...known.fields[field], name: `${prefix}: ${field.replace(/_/g, " ")}` };
  }
  function define(key) {
    const d = definition(key);
    if (!d) return null;
    const details = el("details", undefined, "define");
    details.dataset.define = key;
    const summary = el("summary", "?");
    summary.setAttribute("aria-label", `What is ${d.name}?`);
    summary.title = `What is ${d.name}?`;
    const pop = el("span", undefined, "define-pop");
    pop.setAttribute("role", "note");
    pop.append(el("b", d.name), " ", el("span", d.unit, "define-unit"), ` ${d.definition}`);
    if (!document.body.hasAttribute("data-standalone")) {
      const link = el("a", "In the docs");
      link.href = d.url;
      pop.append(" ", link);
    }
    details.append(summary, pop);
    return details;
  }
  // The pages cite the manual as text (`docs/metrics.md "Preflight"`): each citation becomes a
  // link to that page of the manual the app serves (web/manual.py), at the section's heading
  // (mkdocs' slug of the name; the manual page finds a heading by its words when the name is
  // loose). Not in a one-file download: it has no server. Text stays text (textContent only).
  const CITATION = /docs\/([a-z0-9-]+\.md)(,? "([^"]+)")?/g;
  const slug = (text) =>
    text.normalize("NFKD").replace(/[^\x00-\x7F]/g, "").replace(/[^\w\s-]/g, "").trim().toLowerCase().replace(/[-\s]+/g, "-");
  function linkDocs(root) {
    if (!root || document.body.hasAttribute("data-standalone")) return;
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode: (n) =>
        n.nodeValue.includes("docs/") && !n.parentElement.closest("a, code, pre, script, textarea, style, .manual-page")
          ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_REJECT,
    });
    const found = [];
    while (walker.nextNode()) found.push(walker.currentNode);
    for (const text of found) {
      const parts = [];
      let last = 0;
      for (const m of text.nodeValue.matchAll(CITATION)) {
        parts.push(text.nodeValue.slice(last, m.index));
        const link = el("a", m[0]);
        link.href = `/docs/${m[1]}${m[3] ? `#${slug(m[3])}` : ""}`;
        parts.push(link);
        last = m.index + m[0].length;
      }
      if (!last) continue;
      parts.push(text.nodeValue.slice(last));
      text.replaceWith(...parts);
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => linkDocs(document.body));
  else linkDocs(document.body);

  // One definition open at a time; Escape or a click elsewhere closes it.
  document.addEventListener("toggle", (event) => {
    const opened = event.target;
    if (!(opened instanceof HTMLDetailsElement) || !opened.classList.contains("define") || !opened.open) return;
    for (const other of document.querySelectorAll("details.define[open]")) if (other !== opened) other.open = false;
  }, true);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    for (const open of document.querySelectorAll("details.define[open]")) {
      open.open = false;
      if (open.contains(document.activeElement)) open.querySelector("summary").focus();
    }
  });
  document.addEventListener("click", (event) => {
    for (const open of document.querySelectorAll("details.define[open]")) if (!open.contains(event.target)) open.open = false;
  });

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

  return {
    $, embedded, el, row, visible, fmt, showTooltip, progress, showError, showErrors, plot, request, runTask, cancelTask, define, linkDocs,
  };
})();
