// The pedagogical rollout section of the analysis page: run it for this analysis's contexts,
// follow its progress, show the new trajectory (teacher-chosen tokens marked) and the sweep.
// Model text only ever reaches the DOM through textContent.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const form = $("ped-form");
  if (!form) return;
  const analysis = JSON.parse($("analysis-data").textContent);
  const SWEEP = [0.001, 0.01, 0.05, 0.2, 0.5];
  const visible = (t) => (t === "" ? "∅" : t.replace(/\n/g, "↵").replace(/\t/g, "⇥"));
  const tooltip = $("tooltip");

  function fail(message) {
    $("ped-error").textContent = message;
    $("ped-error").hidden = false;
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

  function span(text, cls) {
    const node = document.createElement("span");
    node.textContent = text;
    if (cls) node.className = cls;
    return node;
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
        const col = span("", "col" + (t.source === "teacher" ? " div" : ""));
        col.dataset.i = String(t.position);
        col.append(span(visible(t.token), "stu"));
        const i = byPosition.get(t.position);
        col.append(span(i ? visible(i.proposal) : "", "tea"));
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
        `log p_S ${t.student_logprob.toFixed(3)} · log p_T ${t.teacher_logprob.toFixed(3)}`,
      ];
      if (i) {
        lines.push(
          `the student proposed ${visible(i.proposal)} (teacher p ${i.proposal_teacher_prob.toFixed(4)}, rank ${i.proposal_teacher_rank})`,
          `student surprisal at the substitute: ${i.student_surprisal.toFixed(3)} nats`
        );
      }
      tooltip.replaceChildren(...lines.map((l) => { const d = document.createElement("div"); d.textContent = l; return d; }));
      tooltip.hidden = false;
      const rect = col.getBoundingClientRect();
      tooltip.style.left = `${window.scrollX + rect.left}px`;
      tooltip.style.top = `${window.scrollY + rect.bottom + 6}px`;
    };
    strip.onmouseleave = () => { tooltip.hidden = true; };
    $("ped-result").hidden = false;  // before plotting: a hidden container has no width
    const chart = $("ped-chart");
    if (r.sweep && window.Plotly) {
      const ok = r.sweep.map((row) => row.reached_reference);
      Plotly.newPlot(
        chart,
        [
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
        {
          height: 300, margin: { l: 60, r: 20, t: 30, b: 50 },
          title: { text: "interventions needed vs success (● reaches the answer, × misses)", font: { size: 13 } },
          xaxis: { type: "log", title: { text: "teacher probability threshold" } },
          yaxis: { title: { text: "interventions" }, rangemode: "tozero" },
          plot_bgcolor: "white",
        },
        { displaylogo: false, responsive: true }
      );
    } else {
      chart.replaceChildren();
    }
    document.body.dataset.pedagogical = "1";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    $("ped-error").hidden = true;
    $("ped-run").disabled = true;
    $("ped-progress").hidden = false;
    $("ped-label").textContent = "waiting for the model…";
    try {
      const task = await window.runTask("/api/pedagogical/tasks", body(), (t) => {
        $("ped-fill").style.width = `${t.total ? Math.round((100 * t.done) / t.total) : 0}%`;
        const what = t.stage === "sweep" ? "threshold sweep" : "rollout";
        $("ped-label").textContent = `${what} (${t.done}/${t.total})`;
      });
      $("ped-progress").hidden = true;
      $("ped-run").disabled = false;
      render(task.result);
    } catch (e) {
      fail(e.message);
    }
  });
})();
