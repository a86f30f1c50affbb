// The job page's error-localization table, for jobs whose lines carry steps and a label: read
// from /api/jobs/{id}/localization when the page opens and whenever the job's state changes
// (job.js sets body[data-job-state]). The page loads this script only for jobs with such lines
// (the API answers 422 for others); the table stays hidden until a line is analysed. The scorer
// with the best F1 is marked ★ (as on the localization page). Text goes in via textContent.
(function () {
  "use strict";
  const { $, embedded, row, fmt, request } = VR;
  const job = embedded("job-data");
  const url = `/api/jobs/${encodeURIComponent(job.id)}/localization`;
  const METRICS = ["f1", "acc_error", "acc_correct", "auroc"];

  function cell(m, key) {
    const interval = m[`${key}_interval`];
    const text = interval && interval[0] !== null ? `${fmt(m[key])} [${fmt(interval[0])}, ${fmt(interval[1])}]` : fmt(m[key]);
    return [text, "num"];
  }

  async function load() {
    let body;
    try {
      body = await request(url);
    } catch (e) {
      $("localization").hidden = true; // no line with steps and a label (yet)
      return;
    }
    const base = body.metrics.baselines;
    let best = null;
    for (const name of body.scorers) {
      const f1 = body.metrics[name].f1;
      if (f1 !== null && f1 > 0 && (best === null || f1 > body.metrics[best].f1)) best = name;
    }
    const entries = [
      ...body.scorers.map((name) => [name === best ? `${name} ★ best` : name, body.metrics[name]]),
      ["position (baseline)", base.position],
      ["chance (baseline)", base.chance],
    ];
    $("localization-table").tBodies[0].replaceChildren(
      ...entries.map(([name, m]) => {
        const tr = row([name, ...METRICS.map((key) => cell(m, key))]);
        if (name.endsWith("★ best")) tr.className = "best";
        return tr;
      })
    );
    const errors = body.predictions.filter((p) => p.label >= 0).length;
    $("localization-note").textContent =
      `${body.predictions.length} lines (${errors} with an error). Thresholds chosen on the other folds only ` +
      `(${body.setup.folds} folds over problems); 95% intervals over ${body.setup.bootstrap} bootstrap resamples.`;
    $("localization").hidden = false;
    document.body.dataset.localization = String(body.predictions.length);
  }

  let last = document.body.dataset.jobState;
  new MutationObserver(() => {
    if (document.body.dataset.jobState !== last) {
      last = document.body.dataset.jobState;
      load();
    }
  }).observe(document.body, { attributes: true, attributeFilter: ["data-job-state"] });
  load();
})();
