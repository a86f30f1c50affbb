// The analysis page: colour the token strip, tooltips, the Plotly chart, and the link between
// the two (click a token to mark it in the chart, click a point to select its token).
// Model text is untrusted: it only ever reaches the DOM through textContent.
(function () {
  "use strict";
  const { $, embedded, el, visible, fmt, showTooltip, plot } = VR;
  performance.mark("vr-start");
  const analysis = embedded("analysis-data");
  const figure = embedded("figure-data");
  const steps = analysis.steps;
  const strip = $("strip");
  const cols = strip.querySelectorAll(".col");
  const tooltip = $("tooltip");
  const selected = $("selected");
  const chart = $("chart");

  // vLLM top-K, or a teacher with another tokenizer (estimates over shared spellings)
  const approx = (analysis.estimated && analysis.estimated.includes("reverse_kl")) || analysis.alignment ? "≈ " : "";

  const RANKS = [
    { max: 1, color: "#b7e4b0", label: "top-1" },
    { max: 10, color: "#fff0a0", label: "2–10" },
    { max: 100, color: "#ffc49b", label: "11–100" },
    { max: Infinity, color: "#e9a8e0", label: "> 100" },
  ];
  const maxKl = Math.max(1e-9, ...steps.map((s) => s.reverse_kl));
  const METRICS = {
    reverse_kl: {
      color: (s) => `rgba(192, 57, 43, ${(0.85 * Math.sqrt(s.reverse_kl / maxKl)).toFixed(3)})`,
      legend: [["0", "rgba(192,57,43,0)"], [`${fmt(maxKl)} nats`, "rgba(192,57,43,0.85)"]],
    },
    teacher_logprob: {
      color: (s) => `rgba(44, 111, 187, ${(0.85 * Math.min(1, -s.teacher_logprob / 10)).toFixed(3)})`,
      legend: [["log p = 0", "rgba(44,111,187,0)"], ["log p ≤ −10", "rgba(44,111,187,0.85)"]],
    },
    rank: {
      color: (s) => (s.teacher_rank === null ? "transparent" : RANKS.find((r) => s.teacher_rank <= r.max).color),
      legend: RANKS.map((r) => [`rank ${r.label}`, r.color]),
    },
  };

  // Each distillation objective the steps carry (menu value "objectives.NAME"): the same red
  // scale as the reverse KL on its absolute value (k1 can be negative); grey where null (vLLM).
  function objectiveMetric(name) {
    const value = (s) => (s.objectives ? s.objectives[name] : null);
    const max = Math.max(1e-9, ...steps.map((s) => Math.abs(value(s) ?? 0)));
    return {
      color: (s) =>
        value(s) === null || value(s) === undefined
          ? "#e0e0e0"
          : `rgba(192, 57, 43, ${(0.85 * Math.sqrt(Math.abs(value(s)) / max)).toFixed(3)})`,
      legend: [["0", "rgba(192,57,43,0)"], [`|${name}| ${fmt(max)}`, "rgba(192,57,43,0.85)"], ["not computed", "#e0e0e0"]],
    };
  }

  function paint(name) {
    const metric = name.startsWith("objectives.") ? objectiveMetric(name.slice("objectives.".length)) : METRICS[name];
    cols.forEach((col, i) => {
      col.firstChild.style.backgroundColor = metric.color(steps[i]);
    });
    $("legend").replaceChildren(
      ...metric.legend.map(([label, color]) => {
        const item = el("span");
        const swatch = el("i");
        swatch.style.backgroundColor = color;
        item.append(swatch, label);
        return item;
      })
    );
  }

  function topTable(title, rows, actual) {
    const table = el("table", undefined, "topk");
    const head = table.createTHead().insertRow();
    head.append(el("th", title), el("th", "p"));
    const body = table.createTBody();
    for (const r of rows) {
      const row = body.insertRow();
      if (r.token_id === actual) row.className = "actual";
      row.append(el("td", visible(r.token)), el("td", fmt(Math.exp(r.logprob))));
    }
    return table;
  }

  // Teachability and surface/fork (docs/metrics.md), where the step carries them.
  const massApprox =
    (analysis.estimated && analysis.estimated.includes("teacher_mass_on_student_topk")) || analysis.alignment ? "≈ " : "";
  const KINDS = {
    surface: "surface divergence: the teacher's continuation re-joins the student's tokens",
    fork: "fork: the teacher's continuation does not re-join",
  };
  function teachingLine(s) {
    const parts = [];
    if (s.teacher_mass_on_student_topk !== undefined && s.teacher_mass_on_student_topk !== null) {
      parts.push(`teacher mass on the student's top-${analysis.top_k}: ${massApprox}${fmt(s.teacher_mass_on_student_topk)}`);
    }
    if (s.correction_in_student_topk === true) parts.push("the teacher's token is in the student's top-k");
    if (s.correction_in_student_topk === false) parts.push("the teacher's token is outside the student's top-k");
    if (s.divergence_kind in KINDS) {
      let kind = KINDS[s.divergence_kind];
      if (s.fork_matters === true) kind += " (it matters: the teacher reaches the answer before it, not after)";
      if (s.fork_matters === false) kind += " (it does not change whether the teacher reaches the answer)";
      parts.push(kind);
    }
    return parts.join(" · ");
  }

  function details(i, full) {
    const s = steps[i];
    const box = document.createDocumentFragment();
    const head = el("div", undefined, "tt-head");
    head.append(
      el("b", `#${s.position} `),
      el("code", visible(s.token)),
      el("span", s.agree ? " = teacher " : " ≠ teacher "),
      el("code", visible(s.teacher_top1))
    );
    box.append(head);
    box.append(
      el(
        "div",
        `reverse KL ${approx}${fmt(s.reverse_kl)} · forward KL ${approx}${fmt(s.forward_kl)} nats · teacher rank ${s.teacher_rank === null ? "–" : s.teacher_rank}`
      ),
      el(
        "div",
        `log p_S(y) ${fmt(s.student_logprob)} · log p_T(y) ${fmt(s.teacher_logprob)} · advantage ${fmt(s.advantage)}`
      )
    );
    if (s.reverse_kl_interval) {
      const span = ([lo, hi]) => `[${fmt(lo)}, ${hi === null ? "∞" : fmt(hi)}]`;
      let line = `exact reverse KL in ${span(s.reverse_kl_interval)} · forward KL in ${span(s.forward_kl_interval)}`;
      if (s.student_entropy_interval) {
        line += ` · entropies: student ${span(s.student_entropy_interval)}, teacher ${span(s.teacher_entropy_interval)}`;
      }
      box.append(el("div", s.uncertain ? `uncertain: top-2 within the server's noise · ${line}` : line, "noise"));
    }
    const teaching = teachingLine(s);
    if (teaching) box.append(el("div", teaching, "teaching"));
    const tables = el("div", undefined, "tt-tables");
    tables.append(topTable("teacher top-k", s.teacher_topk, s.token_id));
    tables.append(topTable("student top-k", s.student_topk, s.token_id));
    box.append(tables);
    if (s.teacher_continuation) {
      const k = s.teacher_continuation.token_ids.length;
      const did = steps.slice(i, i + k).map((x) => x.token).join("");
      const wheel = el("div", undefined, "wheel");
      wheel.append(el("div", "If the teacher took the wheel here:", "k"));
      wheel.append(el("pre", visible(s.teacher_continuation.text), "teacher-cont"));
      if (full) {
        wheel.append(el("div", "What the student did:", "k"));
        wheel.append(el("pre", visible(did), "student-cont"));
      }
      box.append(wheel);
    }
    return box;
  }

  let current = null;
  function select(i, fromChart) {
    if (current !== null) cols[current].classList.remove("sel");
    current = i;
    const col = cols[i];
    col.classList.add("sel");
    selected.replaceChildren(details(i, true));
    selected.hidden = false;
    if (fromChart) col.scrollIntoView({ block: "nearest", inline: "nearest" });
    if (window.Plotly && chart.data) {
      Plotly.relayout(chart, {
        shapes: [
          ...(figure.layout.shapes || []),
          {
            type: "line", xref: "x", yref: "paper", x0: i, x1: i, y0: 0, y1: 1,
            line: { color: "#34495e", width: 1.5, dash: "dash" },
          },
        ],
      });
    }
    document.body.dataset.selected = String(i);
  }

  strip.addEventListener("mouseover", (e) => {
    const col = e.target.closest(".col");
    if (col) showTooltip(tooltip, col, [details(Number(col.dataset.i), false)]);
  });
  strip.addEventListener("mouseleave", () => {
    tooltip.hidden = true;
  });
  strip.addEventListener("click", (e) => {
    const col = e.target.closest(".col");
    if (col) select(Number(col.dataset.i), false);
  });
  strip.addEventListener("keydown", (e) => {
    const col = e.target.closest(".col");
    if (col && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      select(Number(col.dataset.i), false);
    }
  });

  for (const radio of document.querySelectorAll('input[name="metric"]')) {
    radio.addEventListener("change", () => paint(radio.value));
  }
  paint("reverse_kl");
  performance.mark("vr-painted");

  // TIP's quadrant scatter, where the analysis has one (docs/objectives.md)
  if ($("quadrant-data")) plot($("quadrant-chart"), embedded("quadrant-data"));

  plot(chart, figure).then(() => {
    chart.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      // Only points over token positions select a token (the Lorenz panel's x is a share).
      const overTokens = point && (point.data.xaxis || "x") === "x";
      if (overTokens && Number.isInteger(point.x) && point.x < steps.length) select(point.x, true);
    });
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "1";
  });
})();
