// The dataset page: live progress (Server-Sent Events), cancel/resume, the job's answer, models
// and settings, the sortable (by keyboard too), filterable and groupable table of trajectories
// with a mini KL strip per row, and the aggregate figures beside the tables they explain. While
// the job runs, every part says what is known so far and refreshes as lines land. Text goes in
// via textContent.
(function () {
  "use strict";
  const { $, embedded, el, row, fmt, progress, showError, plot, request } = VR;
  const job = embedded("job-data");
  const base = `/api/jobs/${encodeURIComponent(job.id)}`;
  let rows = [];
  let sortKey = "line";
  let sortDir = 1;
  let stripMax = 2; // the mini strips' fixed scale (nats per token), from /overview
  const COLUMNS = document.querySelectorAll("#trajectories thead th").length;

  function seconds(s) {
    if (s === null || s === undefined) return "";
    return s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`;
  }

  function showState(state) {
    const parts = [`${state.state}: ${state.done + state.failed} of ${state.total} lines`];
    if (state.failed) parts.push(`${state.failed} failed`);
    if (state.tokens_per_second) parts.push(`${state.tokens_per_second.toFixed(0)} tokens/s`);
    if (state.eta_seconds) parts.push(`about ${seconds(state.eta_seconds)} left`);
    const fraction = state.total && (state.done + state.failed) / state.total;
    progress($("job-fill"), $("job-label"), fraction, parts.join(" · "));
    $("cancel").hidden = !(state.state === "running" || state.state === "queued");
    $("resume").hidden = !(state.state === "cancelled" && state.pending > 0);
    document.body.dataset.jobState = state.state;
    showError($("job-error"), state.error); // why the job stopped by itself (e.g. the disk is full)
    showReplicas(state);
    showPending(state);
  }

  // vLLM backend: each replica's health and the failures seen during this run.
  function showReplicas(state) {
    if (!state.replicas) return;
    $("replicas").hidden = false;
    $("replica-rows").replaceChildren(
      ...state.replicas.map((r) =>
        row([r.role, r.url, r.healthy ? "up" : "down", [String(r.requests), "num"], [String(r.errors), "num"], r.last_error || ""])
      )
    );
    const errors = state.replica_errors || [];
    $("replica-errors").hidden = errors.length === 0;
    $("replica-errors").querySelector("summary").textContent =
      `${errors.length} replica error${errors.length === 1 ? "" : "s"} during this run`;
    $("replica-error-list").replaceChildren(
      ...errors.slice(-50).map((e) => {
        const when = new Date(e.at * 1000).toISOString().slice(11, 19);
        return el("li", `${when} ${e.role} ${e.url}: ${e.error}${e.retried ? " (retried)" : " (gave up)"}`);
      })
    );
  }

  const link = (r) => {
    const a = el("a", r.preview || "(empty)");
    a.href = `/analyses/${encodeURIComponent(r.analysis_id)}`;
    a.title = r.preview || "";
    return a;
  };

  // A cell's colour on the fixed scale: white at 0, the KL red at stripMax nats per token and
  // above, sqrt in between (report/tables.py kl_color does the same for /analyses).
  function klColor(value) {
    if (value === null || value === undefined) return "#eef0f3";
    const t = Math.sqrt(Math.min(Math.max(value, 0), stripMax) / stripMax);
    const mix = (c) => Math.round(255 + (c - 255) * t);
    return `rgb(${mix(192)}, ${mix(57)}, ${mix(43)})`;
  }

  // The mini strip: one cell per tenth of the response, its mean reverse KL per token.
  function strip(values) {
    if (!values) return el("span", "no signal", "note");
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    for (const [k, v] of Object.entries({ class: "kl-strip", width: 80, height: 12, viewBox: "0 0 80 12", role: "img" })) {
      svg.setAttribute(k, String(v));
    }
    const text = values.map((v) => (v === null ? "–" : v.toFixed(3)));
    svg.setAttribute("aria-label", `reverse KL by tenth of the response, nats per token: ${text.join(", ")}`);
    values.forEach((v, i) => {
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(8 * i));
      rect.setAttribute("width", "8");
      rect.setAttribute("height", "12");
      rect.setAttribute("fill", klColor(v));
      const title = document.createElementNS(ns, "title");
      title.textContent = `${10 * i}–${10 * i + 10}%: ${v === null ? "–" : `${v.toFixed(3)} nats/token`}`;
      rect.append(title);
      svg.append(rect);
    });
    return svg;
  }

  const pct = (v, digits = 1) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(digits)}%`);
  // Columns 1–12 keep their places (tests and habits read them by position); the new ones follow.
  const CELLS = [
    (r) => [String(r.line ?? ""), "num"],
    (r) => [r.trajectory_id ?? "", ""],
    (r) => [link(r), "preview"],
    (r) => [String(r.tokens), "num"],
    (r) => [pct(r.agreement_rate), "num"],
    (r) => [r.first_divergence === null ? "none" : String(r.first_divergence), "num"],
    (r) => [fmt(r.reverse_kl_total, 3), "num"],
    (r) => [fmt(r.advantage_total, 3), "num"],
    (r) => [r.correct === null ? "" : r.correct ? "correct" : "wrong", ""],
    (r) => [r.verdict_method ?? "", ""], // how the verdict was reached: given, math-verify, text
    (r) => [r.step === null || r.step === undefined ? "" : String(r.step), ""],
    (r) => [r.teacher_context ?? "privileged", ""], // which text the teacher was given
    (r) => [fmt(r.divergences_per_100_tokens, 1), "num"],
    (r) => [pct(r.kl_top_5pct, 0), "num"],
    (r) => [strip(r.kl_strip), "strip-cell"],
  ];

  const compare = (a, b) => {
    const x = a[sortKey], y = b[sortKey];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1; // empty cells last, either way
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sortDir;
  };

  // Steps in order: by number when every step is one (as the drift table orders them).
  function stepOrder(steps) {
    const numeric = steps.every((s) => /^-?\d+$/.test(s));
    return numeric ? steps.sort((a, b) => Number(a) - Number(b)) : steps;
  }

  // A training step's heading row: how its trajectories look together.
  function groupRow(step, members) {
    const tokens = members.reduce((n, r) => n + r.tokens, 0);
    const divergences = members.reduce((n, r) => n + (r.tokens * (r.divergences_per_100_tokens ?? 0)) / 100, 0);
    const agreement = tokens ? 1 - divergences / tokens : null;
    const verdicts = members.filter((r) => r.correct !== null);
    const right = verdicts.filter((r) => r.correct).length;
    const parts = [
      `step ${step}`,
      `${members.length} trajector${members.length === 1 ? "y" : "ies"}`,
      `agreement ${pct(agreement)}`,
      `${tokens ? ((100 * divergences) / tokens).toFixed(1) : "–"} divergences / 100 tokens`,
    ];
    if (verdicts.length) parts.push(`${right} of ${verdicts.length} correct`);
    const tr = document.createElement("tr");
    tr.className = "group";
    const th = el("th", parts.join(" · "));
    th.colSpan = COLUMNS;
    th.scope = "rowgroup";
    tr.append(th);
    return tr;
  }

  function bodyRow(r) {
    const tr = row(CELLS.map((cell) => cell(r)));
    tr.dataset.analysis = r.analysis_id;
    return tr;
  }

  function renderTable() {
    const needle = $("filter").value.trim().toLowerCase();
    const shown = rows
      .filter((r) => !needle || `${r.preview} ${r.trajectory_id ?? ""}`.toLowerCase().includes(needle))
      .sort(compare);
    const hasSteps = rows.some((r) => r.step !== null && r.step !== undefined);
    $("group-label").hidden = !hasSteps;
    const body = $("trajectories").tBodies[0];
    if (rows.length === 0) return; // the pending row stays: what is known so far
    if (hasSteps && $("group-step").checked) {
      const groups = new Map();
      for (const r of shown) {
        const key = r.step === null || r.step === undefined ? "" : String(r.step);
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(r);
      }
      const keys = stepOrder([...groups.keys()].filter((k) => k !== ""));
      if (groups.has("")) keys.push("");
      body.replaceChildren(
        ...keys.flatMap((k) => [groupRow(k === "" ? "none" : k, groups.get(k)), ...groups.get(k).map(bodyRow)])
      );
    } else {
      body.replaceChildren(...shown.map(bodyRow));
    }
    $("row-count").textContent = `${shown.length} of ${rows.length}`;
  }

  for (const th of document.querySelectorAll("#trajectories th[data-key]")) {
    // The heading's button sorts (Tab to it, Enter or Space): again reverses the order.
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.key;
      sortDir = key === sortKey ? -sortDir : 1;
      sortKey = key;
      document.querySelectorAll("#trajectories th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      renderTable();
    });
  }
  document.querySelector('#trajectories th[data-key="line"]').setAttribute("aria-sort", "ascending");
  $("filter").addEventListener("input", renderTable);
  $("group-step").addEventListener("change", renderTable);

  // The first screen: the dataset's answer in a sentence, the models and every setting.
  function renderOverview(o) {
    stripMax = o.kl_strip_max_nats;
    if (o.answer) {
      $("answer").textContent = o.answer;
      delete $("answer").dataset.pending;
    }
    const models = o.models.map((m) => {
      const span = el("span");
      span.append("Student ", el("b", m.student), ", teacher ", el("b", m.teacher));
      if (o.models.length > 1) span.append(` (${m.trajectories} trajectories)`);
      return span;
    });
    $("job-models").replaceChildren(...models.flatMap((m, i) => (i ? [" · ", m] : [m])));
    $("job-settings").replaceChildren(
      ...o.settings.map((s) => {
        const item = el("div", undefined, s.default ? "default" : "");
        const value = el("dd", s.value);
        if (s.default) value.append(" ", el("small", "default"));
        item.append(el("dt", s.name), value);
        return item;
      })
    );
  }

  // What the cards say until the first line is done (never a blank card or an empty table).
  function showPending(state) {
    const text = `${state.done} of ${state.total} lines done`;
    if (rows.length === 0) {
      $("trajectories-pending").textContent = `${text}: rows appear here as lines land.`;
      $("headline-pending").textContent = `${text}: the table and its figures fill in as lines land.`;
    }
  }

  // The headline table: one row per measure, one column per group (all, correct, incorrect).
  // The per-objective and TIP rows ("k1: total", "TIP ...: ...") sit in a table of their own,
  // folded, so that the figures stay beside the rows they show.
  function renderHeadline(table) {
    $("headline-pending").hidden = table.rows.length > 0;
    $("headline-body").hidden = table.rows.length === 0; // no empty table: the pending note says why
    const detail = (r) => r.label.includes(": ") && !/^(thinking|answer): /.test(r.label); // thinking vs answer stay
    const fill = (target, rows) => {
      const head = document.createElement("tr");
      head.append(el("th", "Measure"), ...table.groups.map((g) => el("th", `${g.name} (n=${g.trajectories})`, "num")));
      target.tHead.replaceChildren(head);
      target.tBodies[0].replaceChildren(
        ...rows.map((r) => {
          const tr = row([r.label, ...table.groups.map((g) => [r.cells[g.name].text, "num"])]);
          tr.dataset.measure = r.measure;
          const what = VR.define(r.measure); // its definition, unit and manual page (#28)
          if (what) tr.cells[0].append(" ", what);
          return tr;
        })
      );
    };
    fill($("headline-table"), table.rows.filter((r) => !detail(r)));
    const more = table.rows.filter(detail);
    fill($("headline-more-table"), more);
    $("headline-more").hidden = more.length === 0;
    $("headline-more").querySelector("summary").textContent =
      `Distillation objectives and TIP's quadrants: ${more.length} more rows`;
    $("headline-note").textContent = table.note;
  }

  // The job's preflight (docs/metrics.md, "Preflight"): flagged lines, noise floor vs signal, leak.
  function renderPreflight(p) {
    $("preflight").hidden = p.lines_checked === 0;
    const f = (v, digits) => (v === null ? "–" : v.toFixed(digits));
    const kinds = Object.entries(p.flag_kinds).map(([k, n]) => `${k.replace("_", " ")}: ${n}`).join(", ");
    $("preflight-context").textContent = p.lines_flagged
      ? `⚠ ${p.lines_flagged} of ${p.lines_checked} lines have contexts that differ outside the privileged block (${kinds}).`
      : `✓ In all ${p.lines_checked} lines the contexts differ only in the privileged block.`;
    $("preflight-context").dataset.flagged = String(p.lines_flagged);
    const nf = p.noise_floor_kl_mean;
    $("preflight-noise").textContent = nf.lines
      ? `Noise floor ${f(nf.mean, 3)} nats/token (max ${f(nf.max, 3)}) vs signal ${f(p.signal_kl_mean.mean, 3)} nats/token, over ${nf.lines} lines.`
      : "Noise floor not computed.";
    const leak = p.leak_share;
    $("preflight-leak").textContent = leak.lines
      ? `Leak: ${f(100 * leak.mean, 0)}% of the virtual rollouts' 4-word n-grams are copied from the privileged text on average (max ${f(100 * leak.max, 0)}%, ${leak.lines} lines).`
      : "Leak: no line has privileged text.";
  }

  // Drift across training steps: one row per step (the card stays hidden when no line has one).
  function renderDrift(steps) {
    const pct = (v) => (v === null ? "–" : `${(100 * v).toFixed(1)}%`);
    const num = (v, digits) => (v === null ? "–" : v.toFixed(digits));
    $("drift").hidden = steps.length === 0;
    $("drift-table").tBodies[0].replaceChildren(
      ...steps.map((d) =>
        row([
          String(d.step),
          [String(d.trajectories), "num"],
          [num(d.tokens_mean, 1), "num"],
          [pct(d.agreement_rate), "num"],
          [num(d.reverse_kl_mean, 4), "num"],
          [pct(d.reverse_kl_share_at_divergences), "num"],
          [num(d.first_divergence_median, 1), "num"],
          [d.verdicts ? `${pct(d.correct_share)} (n=${d.verdicts})` : "–", "num"],
          [num(d.score_mean, 3), "num"],
        ])
      )
    );
  }

  // A figure's card: the page has one for each of the usual figures; others (e.g. surface vs
  // fork, only with continuations) get one on first sight.
  function figureDiv(name) {
    let div = $(`fig-${name}`);
    if (!div) {
      div = el("div", undefined, "chart small");
      div.id = `fig-${name}`;
      div.setAttribute("role", "img");
      div.setAttribute("aria-label", name.replace(/_/g, " "));
      const figure = el("div", undefined, "figure");
      figure.append(div);
      $("figures").append(figure);
    }
    return div;
  }

  async function refresh() {
    const [table, figures, headline, drift, preflight, overview] = await Promise.all([
      request(`${base}/table`),
      request(`${base}/figures`),
      request(`${base}/headline`),
      request(`${base}/drift`),
      request(`${base}/preflight`),
      request(`${base}/overview`),
    ]);
    renderOverview(overview);
    rows = table;
    renderTable();
    renderHeadline(headline);
    renderDrift(drift);
    renderPreflight(preflight);
    // Shown before they are drawn: Plotly sizes a plot by its container (0 wide while hidden).
    $("figures").hidden = rows.length === 0;
    if (rows.length) for (const [name, figure] of Object.entries(figures)) plot(figureDiv(name), figure);
    document.body.dataset.loaded = String(rows.length);
  }

  // Refreshes while the job runs: on each progress event that finished a line, at most one
  // every REFRESH_MS (each reads a summary of every line, so a large job's would pile up), the
  // last one always made (a trailing refresh), never two at once.
  const REFRESH_MS = 1500;
  let lastRefresh = 0;
  let inFlight = null;
  let trailing = null;
  function refreshSoon() {
    if (trailing) return;
    const wait = Math.max(0, lastRefresh + REFRESH_MS - Date.now());
    trailing = setTimeout(async () => {
      trailing = null;
      if (inFlight) {
        await inFlight.catch(() => null);
        return refreshSoon();
      }
      lastRefresh = Date.now();
      inFlight = refresh().finally(() => (inFlight = null));
    }, wait);
  }

  $("cancel").addEventListener("click", async () => {
    showState(await request(`${base}/cancel`, { method: "POST" }));
  });
  $("resume").addEventListener("click", async () => {
    showState(await request(`${base}/resume`, { method: "POST" }));
    follow();
  });

  let lastDone = job.done;
  function follow() {
    const source = new EventSource(`${base}/events`);
    source.addEventListener("progress", (e) => {
      const state = JSON.parse(e.data);
      showState(state);
      if (state.done + state.failed !== lastDone) {
        lastDone = state.done + state.failed;
        refreshSoon();
      }
    });
    source.addEventListener("end", (e) => {
      source.close();
      showState(JSON.parse(e.data));
      refreshSoon();
    });
    // A stream the server refused (too many open) is not retried by the browser: poll instead.
    source.onerror = () => source.readyState === EventSource.CLOSED && setTimeout(poll, 5000);
  }
  async function poll() {
    const state = await request(base).catch(() => null); // gone (deleted): nothing to follow
    if (!state) return;
    showState(state);
    if (state.state === "running" || state.state === "queued") {
      if (state.done + state.failed !== lastDone) refreshSoon();
      lastDone = state.done + state.failed;
      setTimeout(poll, 5000);
    } else refreshSoon();
  }
  showState(job);
  refreshSoon(); // what is done so far, at once
  if (job.state === "running" || job.state === "queued") follow();
})();
