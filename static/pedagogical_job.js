// The job page's comparison for a pedagogical job: the student alone, OPD's view of its own
// rollout and the pedagogical rollout side by side, from /api/jobs/{id}/comparison (the headline
// rows, each in its column, the figures and one row per line, as report.html shows them). Each
// line's "Texts" button fetches /api/jobs/{id}/rollouts/{line} and shows both texts, the
// substituted tokens marked, with the answer each verdict parsed and how (the markup of
// templates/_pedagogical_texts.html). Read when the page opens and whenever job.js refreshes
// (body[data-loaded]) or the job's state changes. The page loads this script only for
// pedagogical jobs. Text goes in via textContent.
(function () {
  "use strict";
  const { $, embedded, el, row, fmt, plot, request } = VR;
  const job = embedded("job-data");
  const url = `/api/jobs/${encodeURIComponent(job.id)}/comparison`;
  const lineUrl = (line) => `/api/jobs/${encodeURIComponent(job.id)}/rollouts/${encodeURIComponent(line)}`;

  const verdict = (v) => (v === null || v === undefined ? "–" : v ? "correct" : "wrong");
  const count = (v) => (v === null || v === undefined ? "–" : String(v));
  const open = new Set(); // lines whose texts are shown: kept across refreshes

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

  // The headlines, each row in its column (templates/_pedagogical_headline.html's markup).
  function showHeadlines(headlines) {
    const lists = new Map();
    for (const section of $("comparison-headline").querySelectorAll("[data-column]")) {
      const dl = section.querySelector("dl");
      dl.replaceChildren();
      lists.set(section.dataset.column, dl);
    }
    const lines = [];
    for (const h of headlines) {
      if (h.column === "all" || !lists.has(h.column)) {
        const span = el("span");
        span.dataset.measure = h.key;
        span.append(el("b", h.text), " ", el("span", h.label, "lbl"));
        lines.push(span);
        continue;
      }
      const item = el("div");
      item.dataset.measure = h.key;
      item.append(el("dt", h.label), el("dd", h.text));
      lists.get(h.column).append(item);
    }
    $("comparison-lines").replaceChildren(...lines);
  }

  function code(text, key) {
    const c = el("code", text);
    if (key) c.dataset.key = key;
    return c;
  }

  // The answer a verdict parsed and how (docs/metrics.md "Verdicts").
  function verdictLine(v, correct) {
    const p = el("p", undefined, "ped-verdict");
    p.dataset.correct = correct === null || correct === undefined ? "none" : String(correct);
    if (!v) {
      if (correct === null || correct === undefined) p.textContent = "No verdict: the line has no reference answer.";
      else p.append(el("b", verdict(correct)));
      return p;
    }
    p.append(el("b", v.correct ? "correct" : "wrong"));
    if (v.method === "given") {
      p.append(": the line's own verdict");
      return p;
    }
    p.append(":");
    if (v.parsed_answer !== null && v.parsed_answer !== undefined) {
      p.append(" parsed ", code(v.parsed_answer, "parsed_answer"));
      if (v.extractor) {
        const how = el("span", ` (${v.extractor})`);
        how.dataset.key = "extractor";
        p.append(how);
      }
      if (v.restated) {
        const r = el("span", "which only restates the question");
        r.dataset.key = "restated";
        p.append(", ", r);
      }
    } else {
      p.append(" math-verify found no answer");
    }
    if (v.method === "text" && v.correct && v.text_form) p.append("; the reference's words ", code(v.text_form, "text_form"), " appear");
    if (v.parsed_reference !== null && v.parsed_reference !== undefined) p.append("; reference read as ", code(v.parsed_reference));
    p.append(" ", el("small", `(${v.method === "math-verify" ? "math-verify" : "text rule"})`));
    return p;
  }

  // One prompt's texts side by side (templates/_pedagogical_texts.html).
  function texts(view) {
    const box = el("div", undefined, "ped-prompt-body");
    if (view.question) {
      const q = el("p", undefined, "ped-question");
      q.append(el("b", "Prompt"), ` ${view.question}`);
      box.append(q);
    }
    if (view.reference_answer !== null && view.reference_answer !== undefined) {
      const ref = el("p", "Reference answer ", "note");
      ref.append(code(view.reference_answer));
      box.append(ref);
    }
    const cols = el("div", undefined, "ped-texts");
    const student = el("section");
    student.append(el("h4", "Student alone"), el("pre", view.student.text, "ped-text"), verdictLine(view.student.verdict, view.student.correct));
    const ped = el("section");
    const head = el("h4", "Pedagogical rollout ");
    const key = el("small");
    key.append(el("mark", "marked", "ped-sub"), ": substituted by the teacher");
    head.append(key);
    const pre = el("pre", undefined, "ped-text");
    for (const s of view.pedagogical.segments) {
      if (!s.teacher) {
        pre.append(s.text);
        continue;
      }
      const mark = el("mark", s.text, "ped-sub");
      mark.title = `the student proposed “${s.proposal ?? ""}”`;
      pre.append(mark);
    }
    ped.append(head, pre, verdictLine(view.pedagogical.verdict, view.pedagogical.correct));
    cols.append(student, ped);
    box.append(cols);
    return box;
  }

  // The per-prompt table scrolls inside its card (it is wider than a narrow screen); a line's
  // texts stay as wide as the card, in view while the table scrolls sideways.
  function scroller() {
    const table = $("comparison-rows");
    if (!table.parentElement.classList.contains("ped-scroll")) {
      const box = el("div", undefined, "ped-scroll");
      table.before(box);
      box.append(table);
    }
    return table.parentElement;
  }

  async function showTexts(button, tr, line) {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("ped-texts-row")) {
      next.remove();
      open.delete(line);
      button.setAttribute("aria-expanded", "false");
      return;
    }
    open.add(line);
    button.setAttribute("aria-expanded", "true");
    const cell = el("td", "loading…");
    cell.colSpan = tr.children.length;
    const holder = el("tr", undefined, "ped-texts-row");
    holder.dataset.line = String(line);
    holder.append(cell);
    tr.after(holder);
    try {
      const body = await request(lineUrl(line));
      const view = texts(body.view);
      view.style.maxWidth = `${Math.max(scroller().clientWidth - 24, 240)}px`;
      cell.replaceChildren(view);
    } catch (e) {
      cell.textContent = e.message;
    }
  }

  function actions(r) {
    const box = el("span", undefined, "ped-actions");
    if (r.line !== null && r.line !== undefined) {
      const b = el("button", "Texts", "secondary small");
      b.type = "button";
      b.setAttribute("aria-expanded", "false");
      b.dataset.texts = String(r.line);
      box.append(b);
    }
    const link = analysisLink(r);
    if (link) box.append(" ", link);
    return box;
  }

  async function load() {
    let body;
    try {
      body = await request(url);
    } catch (e) {
      return; // not readable now (e.g. the job was deleted): the section stays as it was
    }
    showHeadlines(body.headlines);
    const rows = body.rows.map((r) => {
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
        actions(r),
      ]);
      tr.dataset.line = String(r.line);
      return tr;
    });
    scroller();
    $("comparison-rows").tBodies[0].replaceChildren(...rows);
    for (const tr of rows) {
      const button = tr.querySelector("button[data-texts]");
      if (button && open.has(Number(button.dataset.texts))) {
        open.delete(Number(button.dataset.texts));
        showTexts(button, tr, Number(button.dataset.texts));
      }
    }
    // Shown before the figures are drawn: Plotly sizes a plot by its container, and a hidden
    // one has no width (it would fall back to 700 px and overflow its card).
    $("comparison").hidden = body.rows.length === 0;
    for (const [name, figure] of Object.entries(body.figures)) plot(figureDiv(name), figure);
    document.body.dataset.comparison = String(body.rows.length);
  }

  $("comparison-rows").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-texts]");
    if (button) showTexts(button, button.closest("tr"), Number(button.dataset.texts));
  });

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
