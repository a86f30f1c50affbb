// The job page's comparison for a pedagogical job: the student alone, OPD's view of its own
// rollout and the pedagogical rollout, from /api/jobs/{id}/comparison (the headline rows, the
// figures and one row per line, as report.html shows them). Read when the page opens and
// whenever job.js refreshes (body[data-loaded]) or the job's state changes. The page loads this
// script only for pedagogical jobs. Text goes in via textContent.
(function () {
  "use strict";
  const { $, embedded, el, row, fmt, plot, request } = VR;
  const job = embedded("job-data");
  const url = `/api/jobs/${encodeURIComponent(job.id)}/comparison`;

  const verdict = (v) => (v === null || v === undefined ? "–" : v ? "correct" : "wrong");
  const count = (v) => (v === null || v === undefined ? "–" : String(v));

  function analysisLink(r) {
    if (!r.analysis_id) return "";
    const a = el("a", "OPD analysis");
    a.href = `/analyses/${encodeURIComponent(r.analysis_id)}`;
    return a;
  }

  function figureDiv(name) {
    let div = $(`fig-comparison-${name}`);
    if (!div) {
      div = el("div", undefined, "chart small");
      div.id = `fig-comparison-${name}`;
      const card = el("div", undefined, "card");
      card.append(div);
      $("comparison-figures").append(card);
    }
    return div;
  }

  async function load() {
    let body;
    try {
      body = await request(url);
    } catch (e) {
      return; // not readable now (e.g. the job was deleted): the section stays as it was
    }
    $("comparison-headline").tBodies[0].replaceChildren(
      ...body.headlines.map((h) => {
        const tr = row([h.label, [h.text, "num"]]);
        tr.dataset.measure = h.key;
        return tr;
      })
    );
    $("comparison-rows").tBodies[0].replaceChildren(
      ...body.rows.map((r) => {
        const tr = row([
          [count(r.line), "num"],
          r.id,
          verdict(r.student_correct),
          [String(r.opd_divergences), "num"],
          [fmt(r.opd_reverse_kl_total), "num"],
          verdict(r.pedagogical_correct),
          [String(r.interventions), "num"],
          [count(r.first_intervention), "num"],
          [fmt(r.max_intervention_surprisal, 2), "num"],
          [count(r.sweep_min_interventions_to_success), "num"],
          analysisLink(r),
        ]);
        tr.dataset.line = String(r.line);
        return tr;
      })
    );
    // Shown before the figures are drawn: Plotly sizes a plot by its container, and a hidden
    // one has no width (it would fall back to 700 px and overflow its card).
    $("comparison").hidden = body.rows.length === 0;
    for (const [name, figure] of Object.entries(body.figures)) plot(figureDiv(name), figure);
    document.body.dataset.comparison = String(body.rows.length);
  }

  let last = `${document.body.dataset.jobState}/${document.body.dataset.loaded}`;
  new MutationObserver(() => {
    const now = `${document.body.dataset.jobState}/${document.body.dataset.loaded}`;
    if (now !== last) {
      last = now;
      load();
    }
  }).observe(document.body, { attributes: true, attributeFilter: ["data-job-state", "data-loaded"] });
  load();
})();
