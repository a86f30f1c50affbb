// The pedagogical rollout section of the analysis page: run it for this analysis's contexts,
// follow its progress, show the new trajectory (teacher-chosen tokens marked) and the sweep.
// The analysis of a pedagogical job's line (the student's own rollout, replayed) opens with the
// job's pedagogical rollout of that line shown here (/api/jobs/{id}/rollouts/{line}).
// Model text only ever reaches the DOM through textContent.
(function () {
  "use strict";
  const { $, embedded, el, visible, fmt, showTooltip, progress, showError, plot, request, runTask } = VR;
  const form = $("ped-form");
  if (!form) return;
  const analysis = embedded("analysis-data");
  const SWEEP = [0.001, 0.01, 0.05, 0.2, 0.5];
  const tooltip = $("tooltip");

  function fail(message) {
    showError($("ped-error"), message);
    $("ped-progress").hidden = true;
    $("ped-run").disabled = false;
  }

  function body() {
    const out = {
      analysis_id: analysis.id,
      threshold: Number($("ped-threshold").value),
      generation: {
        max_new_tokens: Number($("ped-max-new").value),
        temperature: Number($("ped-temperature").value),
        seed: Number($("ped-seed").value),
      },
    };
    if ($("ped-max-rank").value) out.max_rank = Number($("ped-max-rank").value);
    if ($("ped-reference").value.trim()) out.reference_answer = $("ped-reference").value.trim();
    if ($("ped-sweep").checked) out.sweep = SWEEP.includes(out.threshold) ? SWEEP : [...SWEEP, out.threshold];
    return out;
  }

  function render(r) {
    const s = analysis.summary;
    const outcome =
      r.reached_reference === null ? "" : r.reached_reference ? " It reaches the reference answer." : " It does not reach the reference answer.";
    $("ped-summary").textContent =
      `${r.num_interventions} teacher intervention${r.num_interventions === 1 ? "" : "s"} in ` +
      `${r.tokens.length} tokens.${outcome} OPD on the student's own trajectory: ${s.tokens} per-token ` +
      `signals, ${s.divergences} divergences, ${s.reverse_kl_total.toFixed(2)} nats of reverse KL.`;
    const strip = $("ped-strip");
    const byPosition = new Map(r.interventions.map((i) => [i.position, i]));
    strip.replaceChildren(
      ...r.tokens.map((t) => {
        const col = el("span", "", "col" + (t.source === "teacher" ? " div" : ""));
        col.dataset.i = String(t.position);
        col.append(el("span", visible(t.token), "stu"));
        const i = byPosition.get(t.position);
        col.append(el("span", i ? visible(i.proposal) : "", "tea"));
        return col;
      })
    );
    strip.onmouseover = (e) => {
      const col = e.target.closest(".col");
      if (!col) return;
      const t = r.tokens[Number(col.dataset.i)];
      const i = byPosition.get(t.position);
      const lines = [
        `#${t.position} ${visible(t.token)} — chosen by the ${t.source}`,
        `log p_S ${fmt(t.student_logprob)} · log p_T ${fmt(t.teacher_logprob)}`,
      ];
      if (i) {
        lines.push(
          `the student proposed ${visible(i.proposal)} (teacher p ${fmt(i.proposal_teacher_prob, 4)}, rank ${i.proposal_teacher_rank})`,
          `student surprisal at the substitute: ${fmt(i.student_surprisal)} nats`
        );
      }
      showTooltip(tooltip, col, lines.map((l) => el("div", l)));
    };
    strip.onmouseleave = () => { tooltip.hidden = true; };
    $("ped-result").hidden = false;  // before plotting: a hidden container has no width
    const chart = $("ped-chart");
    chart.hidden = !(r.sweep && window.Plotly); // no sweep: no empty chart box
    if (r.sweep && window.Plotly) {
      const ok = r.sweep.map((row) => row.reached_reference);
      plot(chart, {
        data: [
          {
            type: "scatter", mode: "lines+markers", name: "interventions needed",
            x: r.sweep.map((row) => row.threshold), y: r.sweep.map((row) => row.num_interventions),
            marker: {
              size: 11, symbol: ok.map((v) => (v ? "circle" : "x")),
              color: ok.map((v) => (v === null ? "#7f8c8d" : v ? "#27ae60" : "#8e44ad")),
            },
            text: r.sweep.map((row) => (row.reached_reference === null ? "no reference" : row.reached_reference ? "reaches the answer" : "misses the answer")),
            hovertemplate: "threshold %{x}: %{y} interventions, %{text}<extra></extra>",
          },
        ],
        layout: {
          height: 300, margin: { l: 60, r: 20, t: 30, b: 50 },
          title: { text: "interventions needed vs success (● reaches the answer, × misses)", font: { size: 13 } },
          xaxis: { type: "log", title: { text: "teacher probability threshold" } },
          yaxis: { title: { text: "interventions" }, rangemode: "tozero" },
          plot_bgcolor: "white",
        },
      });
    } else {
      if (window.Plotly) Plotly.purge(chart); // a rerun without a sweep: no stale curve
      chart.replaceChildren();
    }
    document.body.dataset.pedagogical = "1";
  }

  // The job's own rollout of this line, when the analysis was made by a pedagogical job.
  async function showJobRollout(ref) {
    const jobUrl = `/api/jobs/${encodeURIComponent(ref.id)}`;
    let record;
    try {
      const job = await request(jobUrl);
      if (job.mode !== "pedagogical") return;
      record = (await request(`${jobUrl}/rollouts/${encodeURIComponent(ref.line)}`)).record;
    } catch (e) {
      return; // the job is gone, or the line has no rollout: the form stays as it is
    }
    const ped = record.pedagogical;
    render({ ...ped, reached_reference: ped.correct, sweep: record.sweep });
    const note = el("span", `The job's pedagogical rollout of line ${ref.line} `, "ped-job-note");
    const link = el("a", `(job ${ref.id})`);
    link.href = `/jobs/${encodeURIComponent(ref.id)}`;
    note.append(link, ": ");
    $("ped-summary").prepend(note);
    document.body.dataset.jobRollout = String(ref.line);
  }

  if (analysis.job && analysis.job.id && analysis.job.line !== null && analysis.job.line !== undefined) {
    showJobRollout(analysis.job);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError($("ped-error"), "");
    $("ped-run").disabled = true;
    $("ped-progress").hidden = false;
    progress($("ped-fill"), $("ped-label"), 0, "waiting for the model…");
    try {
      const task = await runTask("/api/pedagogical/tasks", body(), (t) => {
        const what = t.stage === "sweep" ? "threshold sweep" : "rollout";
        progress($("ped-fill"), $("ped-label"), t.total && t.done / t.total, `${what} (${t.done}/${t.total})`);
      });
      $("ped-progress").hidden = true;
      $("ped-run").disabled = false;
      render(task.result);
    } catch (e) {
      fail(e.message);
    }
  });
})();
