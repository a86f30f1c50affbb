// The dataset page: live progress (Server-Sent Events), cancel/resume, the sortable and
// filterable table of trajectories, and the aggregate figures. Text goes in via textContent.
(function () {
  "use strict";
  const { $, embedded, el, row, fmt, progress, showError, plot, request } = VR;
  const job = embedded("job-data");
  const base = `/api/jobs/${encodeURIComponent(job.id)}`;
  let rows = [];
  let sortKey = "line";
  let sortDir = 1;

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
    return a;
  };
  const CELLS = [
    (r) => [String(r.line ?? ""), "num"],
    (r) => [r.trajectory_id ?? "", ""],
    (r) => [link(r), "preview"],
    (r) => [String(r.tokens), "num"],
    (r) => [r.agreement_rate === null ? "–" : `${(100 * r.agreement_rate).toFixed(1)}%`, "num"],
    (r) => [r.first_divergence === null ? "none" : String(r.first_divergence), "num"],
    (r) => [fmt(r.reverse_kl_total, 3), "num"],
    (r) => [fmt(r.advantage_total, 3), "num"],
    (r) => [r.correct === null ? "" : r.correct ? "correct" : "wrong", ""],
    (r) => [r.verdict_method ?? "", ""], // how the verdict was reached: given, math-verify, text
    (r) => [r.step === null || r.step === undefined ? "" : String(r.step), ""],
    (r) => [r.teacher_context ?? "privileged", ""], // which text the teacher was given
  ];

  function renderTable() {
    const needle = $("filter").value.trim().toLowerCase();
    const shown = rows
      .filter((r) => !needle || `${r.preview} ${r.trajectory_id ?? ""}`.toLowerCase().includes(needle))
      .sort((a, b) => {
        const x = a[sortKey], y = b[sortKey];
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * sortDir;
      });
    $("trajectories").tBodies[0].replaceChildren(
      ...shown.map((r) => {
        const tr = row(CELLS.map((cell) => cell(r)));
        tr.dataset.analysis = r.analysis_id;
        return tr;
      })
    );
    $("row-count").textContent = `${shown.length} of ${rows.length}`;
  }

  for (const th of document.querySelectorAll("#trajectories th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      sortDir = key === sortKey ? -sortDir : 1;
      sortKey = key;
      document.querySelectorAll("#trajectories th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      renderTable();
    });
  }
  $("filter").addEventListener("input", renderTable);

  // The headline table: one row per measure, one column per group (all, correct, incorrect).
  function renderHeadline(table) {
    $("headline").hidden = table.rows.length === 0;
    const head = document.createElement("tr");
    head.append(el("th", "Measure"), ...table.groups.map((g) => el("th", `${g.name} (n=${g.trajectories})`, "num")));
    $("headline-table").tHead.replaceChildren(head);
    $("headline-table").tBodies[0].replaceChildren(
      ...table.rows.map((r) => {
        const tr = row([r.label, ...table.groups.map((g) => [r.cells[g.name].text, "num"])]);
        tr.dataset.measure = r.measure;
        return tr;
      })
    );
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
      const card = el("div", undefined, "card");
      card.append(div);
      $("figures").append(card);
    }
    return div;
  }

  async function refresh() {
    const [summaries, figures, table, drift, preflight] = await Promise.all([
      request(`${base}/summaries`),
      request(`${base}/figures`),
      request(`${base}/headline`),
      request(`${base}/drift`),
      request(`${base}/preflight`),
    ]);
    rows = summaries;
    renderTable();
    renderHeadline(table);
    renderDrift(drift);
    renderPreflight(preflight);
    for (const [name, figure] of Object.entries(figures)) plot(figureDiv(name), figure);
    document.body.dataset.loaded = String(rows.length);
  }

  $("cancel").addEventListener("click", async () => {
    showState(await request(`${base}/cancel`, { method: "POST" }));
  });
  $("resume").addEventListener("click", async () => {
    showState(await request(`${base}/resume`, { method: "POST" }));
    follow();
  });

  let lastDone = -1;
  let lastRefresh = 0;
  function follow() {
    const source = new EventSource(`${base}/events`);
    source.addEventListener("progress", (e) => {
      const state = JSON.parse(e.data);
      showState(state);
      // Refresh the table and figures every 10 finished lines while running, at most every 5 s
      // (each refresh reads a summary of every line: a large job's would pile up).
      if (state.done - lastDone >= 10 && Date.now() - lastRefresh >= 5000) {
        lastDone = state.done;
        lastRefresh = Date.now();
        refresh();
      }
    });
    source.addEventListener("end", (e) => {
      source.close();
      showState(JSON.parse(e.data));
      refresh();
    });
    // A stream the server refused (too many open) is not retried by the browser: poll instead.
    source.onerror = () => source.readyState === EventSource.CLOSED && setTimeout(poll, 5000);
  }
  async function poll() {
    const state = await request(base).catch(() => null); // gone (deleted): nothing to follow
    if (!state) return;
    showState(state);
    if (state.state === "running" || state.state === "queued") setTimeout(poll, 5000);
    else refresh();
  }
  showState(job);
  if (job.state === "running" || job.state === "queued") follow();
  else refresh();
})();
