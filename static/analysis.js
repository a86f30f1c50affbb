// The analysis page: the token strip (rendered block by block as it nears the screen, its steps
// fetched by range), the jumps, the colour bar, the details of a token, the Plotly chart, and the
// links both ways between strip and chart. Model text only reaches the DOM through textContent.
(function () {
  "use strict";
  const { $, embedded, el, visible, fmt, showTooltip, plot, request } = VR;
  performance.mark("vr-start");
  const analysis = embedded("analysis-data");
  const view = embedded("view-data");
  const figure = embedded("figure-data");
  const strip = $("strip");
  const tooltip = $("tooltip");
  const selected = $("selected");
  const chart = $("chart");
  const BLOCK = view.block;
  const total = view.total;
  const blocks = [...strip.querySelectorAll(".block")];

  // ----- steps, by block: the first block (every one in a one-file download) came with the page
  const cache = new Map(); // block number -> its steps
  for (let b = 0; b * BLOCK < view.first.length; b++) cache.set(b, view.first.slice(b * BLOCK, (b + 1) * BLOCK));
  const pending = new Map();
  function stepsOf(b) {
    if (cache.has(b)) return Promise.resolve(cache.get(b));
    if (!pending.has(b)) {
      const url = `/api/analyses/${encodeURIComponent(analysis.id)}/steps?start=${b * BLOCK}&stop=${Math.min(total, (b + 1) * BLOCK)}`;
      pending.set(
        b,
        request(url).then((body) => {
          cache.set(b, body.steps);
          pending.delete(b);
          return body.steps;
        })
      );
    }
    return pending.get(b);
  }
  const step = (i) => (cache.get(Math.floor(i / BLOCK)) || [])[i % BLOCK];
  const scoredStep = (s) => s.scored !== false;

  // vLLM top-K, or a teacher with another tokenizer (estimates over shared spellings)
  const approx = (analysis.estimated && analysis.estimated.includes("reverse_kl")) || analysis.alignment ? "≈ " : "";

  // ----- colours: a real colour bar with units; the KL scale is this page's largest or a fixed one
  const SCALE_KEY = "vrollout.klScale"; // shared by every page of this origin
  const storedScale = () => {
    try {
      return localStorage.getItem(SCALE_KEY) === "absolute" ? "absolute" : "page";
    } catch (e) {
      return "page"; // a file opened from disk may have no storage
    }
  };
  let scale = storedScale();
  const klTop = () => (scale === "absolute" ? view.scales.absolute_kl : view.scales.reverse_kl);
  const RED = [192, 57, 43];
  const BLUE = [44, 111, 187];
  const rgba = (c, a) => `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${a.toFixed(3)})`;
  const RANKS = [
    { max: 1, color: "#b7e4b0", label: "top-1" },
    { max: 10, color: "#fff0a0", label: "2–10" },
    { max: 100, color: "#ffc49b", label: "11–100" },
    { max: Infinity, color: "#e9a8e0", label: "> 100" },
  ];
  // sqrt: small values stay visible; ticks placed where sqrt puts them
  const sqrtScale = (value, top) => 0.85 * Math.sqrt(Math.min(1, Math.abs(value) / top));
  function metricOf(name) {
    if (name === "teacher_logprob") {
      return {
        color: (s) => rgba(BLUE, 0.85 * Math.min(1, -s.teacher_logprob / 10)),
        bar: { rgb: BLUE, unit: "log p_T(y), nats", ticks: [0, -2.5, -5, -7.5, -10].map((v) => [v, -v / 10]), label: (v) => (v === -10 ? "≤ −10" : fmt(v, 1)) },
      };
    }
    if (name === "rank") {
      return { color: (s) => (s.teacher_rank === null ? "transparent" : RANKS.find((r) => s.teacher_rank <= r.max).color), swatches: RANKS };
    }
    if (name.startsWith("objectives.")) {
      const key = name.slice("objectives.".length);
      const top = view.scales.objectives[key] || 1e-9;
      const value = (s) => (s.objectives ? s.objectives[key] : null);
      return {
        color: (s) => (value(s) === null || value(s) === undefined ? "#e0e0e0" : rgba(RED, sqrtScale(value(s), top))),
        bar: { rgb: RED, unit: `|${key}|`, ticks: sqrtTicks(top), label: (v) => fmt(v, 3) },
      };
    }
    const top = klTop();
    return {
      color: (s) => rgba(RED, sqrtScale(s.reverse_kl, top)),
      bar: { rgb: RED, unit: `reverse KL, nats (${scale === "absolute" ? "fixed scale" : "this page's largest"}; above it: full colour)`, ticks: sqrtTicks(top), label: (v) => fmt(v, v < 0.1 ? 3 : 2) },
    };
  }
  function sqrtTicks(top) {
    return [0, 1 / 16, 1 / 4, 9 / 16, 1].map((f) => [f * top, Math.sqrt(f)]);
  }

  let metricName = "reverse_kl";
  let metric = metricOf(metricName);
  function drawBar() {
    const bar = $("legend");
    if (metric.swatches) {
      bar.replaceChildren(
        ...metric.swatches.map((r) => {
          const item = el("span", undefined, "swatch");
          const box = el("i");
          box.style.backgroundColor = r.color;
          item.append(box, `rank ${r.label}`);
          return item;
        })
      );
      return;
    }
    const { rgb, unit, ticks, label } = metric.bar;
    const ramp = el("div", undefined, "ramp");
    ramp.style.background = `linear-gradient(to right, ${rgba(rgb, 0)}, ${rgba(rgb, 0.85)})`;
    const axis = el("div", undefined, "ticks");
    for (const [value, at] of ticks) {
      const tick = el("span", label(value));
      tick.style.left = `${(100 * at).toFixed(1)}%`;
      axis.append(tick);
    }
    bar.replaceChildren(ramp, axis, el("div", unit, "unit"));
  }

  // ----- the strip, block by block
  const turnStarts = new Map(view.turns.filter((t) => view.turns.length > 1).map((t) => [t.start, t]));
  const segmentStarts = new Map(view.segments.map((g) => [g.start, g]));
  let cursor = 0; // the strip's one tab stop
  let current = null; // the selected step
  let perToken = null; // px of strip height per token, measured on the first block drawn

  function column(s, i) {
    const col = el("span", undefined, "col");
    col.dataset.i = String(i);
    col.tabIndex = i === cursor ? 0 : -1;
    const cls = col.classList;
    if (!scoredStep(s)) cls.add("ctx");
    else if (!s.agree) cls.add("div");
    if (s.divergence_kind === "surface") cls.add("surface");
    if (s.divergence_kind === "fork") cls.add("fork");
    if (s.fork_matters) cls.add("matters");
    if (s.uncertain) cls.add("unc");
    if (s.segment) cls.add(`seg-${s.segment}`); // seg-: .answer is the job page's sentence
    if (i === current) cls.add("sel");
    const stu = el("span", visible(s.token), "stu");
    if (scoredStep(s)) stu.style.backgroundColor = metric.color(s);
    const tea = el("span", scoredStep(s) ? (s.span_start === false ? "·" : visible(s.teacher_top1)) : "", "tea");
    col.append(stu, tea);
    return col;
  }

  function fill(block, steps) {
    const start = Number(block.dataset.start);
    const nodes = [];
    steps.forEach((s, k) => {
      const i = start + k;
      const turn = turnStarts.get(i);
      // An assistant message's own template tokens (its header, the newline after its end) are
      // greyed as context with no label of their own: the message's label is on its text.
      const framing = turn && !turn.scored && turn.role === "assistant";
      if (turn && !framing) nodes.push(el("span", `${turn.turn === null ? "" : `message ${turn.turn} · `}${turn.role}${turn.scored ? "" : " · context, not scored"}`, `turn-label${turn.scored ? "" : " ctx"}`));
      const segment = segmentStarts.get(i);
      if (segment) nodes.push(el("span", segment.segment, `seg-label seg-${segment.segment}`));
      nodes.push(column(s, i));
    });
    block.replaceChildren(...nodes);
    block.style.height = "";
    block.dataset.filled = "1";
    if (perToken === null && steps.length) perToken = block.offsetHeight / steps.length;
  }

  function empty(block) {
    if (block.dataset.filled !== "1") return;
    const start = Number(block.dataset.start);
    if (cursor >= start && cursor < Number(block.dataset.stop)) return; // keep the tab stop
    block.style.height = `${block.offsetHeight}px`;
    block.replaceChildren();
    delete block.dataset.filled;
  }

  function guessHeights() {
    if (perToken === null) return;
    for (const block of blocks) {
      if (block.dataset.filled !== "1" && !block.style.height) {
        block.style.height = `${Math.ceil(perToken * (Number(block.dataset.stop) - Number(block.dataset.start)))}px`;
      }
    }
  }

  async function show(b) {
    const block = blocks[b];
    if (!block || block.dataset.filled === "1") return block;
    const steps = await stepsOf(b);
    if (block.dataset.filled !== "1") fill(block, steps);
    return block;
  }

  // Blocks near the screen are filled, those far from it emptied (their height kept).
  const near = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        const b = blocks.indexOf(entry.target);
        if (entry.isIntersecting) show(b).catch((e) => status(`could not fetch steps: ${e.message}`));
        else empty(entry.target);
      }
    },
    // A long strip scrolls in its own box (the page below it stays in reach): blocks are near
    // when near that box's view; a short one is part of the page.
    { root: strip.classList.contains("long") ? strip : null, rootMargin: "1200px 0px" }
  );

  const colAt = (i) => strip.querySelector(`.col[data-i="${i}"]`);
  function repaint() {
    metric = metricOf(metricName);
    for (const col of strip.querySelectorAll(".col")) {
      const s = step(Number(col.dataset.i));
      if (s && scoredStep(s)) col.firstChild.style.backgroundColor = metric.color(s);
    }
    drawBar();
  }

  // ----- a token's details (hover: short; click or keys: in full below the strip)
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
  const where = (s) =>
    [s.turn !== undefined && s.turn !== null ? `message ${s.turn}` : "", s.segment || ""].filter(Boolean).join(" · ");

  function details(i, full) {
    const s = step(i);
    const box = document.createDocumentFragment();
    const head = el("div", undefined, "tt-head");
    if (!scoredStep(s)) {
      const turn = view.turns.find((t) => i >= t.start && i < t.stop);
      head.append(el("b", `#${s.position} `), el("code", visible(s.token)), el("span", turn && turn.role === "assistant" ? " the chat template's token around an assistant message, not scored" : ` ${turn ? turn.role : "context"} token, not scored: the student did not write it`));
      box.append(head);
      if (where(s)) box.append(el("div", where(s), "where"));
      return box;
    }
    head.append(
      el("b", `#${s.position} `),
      el("code", visible(s.token)),
      el("span", s.agree ? " = teacher " : " ≠ teacher "),
      el("code", visible(s.teacher_top1))
    );
    box.append(head);
    if (where(s)) box.append(el("div", where(s), "where"));
    box.append(
      el(
        "div",
        `reverse KL ${approx}${fmt(s.reverse_kl)} · forward KL ${approx}${fmt(s.forward_kl)} nats · teacher rank ${s.teacher_rank === null ? "–" : s.teacher_rank}`
      ),
      el("div", `log p_S(y) ${fmt(s.student_logprob)} · log p_T(y) ${fmt(s.teacher_logprob)} · advantage ${fmt(s.advantage)}`)
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
    tables.append(topTable("teacher top-k", s.teacher_topk || [], s.token_id));
    tables.append(topTable("student top-k", s.student_topk || [], s.token_id));
    box.append(tables);
    if (s.teacher_continuation) {
      const k = s.teacher_continuation.token_ids.length;
      const did = view.tokens.slice(i, i + k).join("");
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

  // ----- moving: select a step, move the tab stop, jump to a far one
  function markInChart(i) {
    if (!window.Plotly || !chart || !chart.data) return;
    Plotly.relayout(chart, {
      shapes: [
        ...(figure.layout.shapes || []),
        { type: "line", xref: "x", yref: "paper", x0: i, x1: i, y0: 0, y1: 1, line: { color: "#34495e", width: 1.5, dash: "dash" } },
      ],
    });
  }

  function select(i, fromChart) {
    const old = current !== null && colAt(current);
    if (old) old.classList.remove("sel");
    current = i;
    const col = colAt(i);
    if (col) col.classList.add("sel");
    selected.replaceChildren(details(i, true));
    selected.hidden = false;
    if (fromChart && col) col.scrollIntoView({ block: "nearest", inline: "nearest" });
    markInChart(i);
    document.body.dataset.selected = String(i);
  }

  function setCursor(i, focus) {
    const old = colAt(cursor);
    if (old) old.tabIndex = -1;
    cursor = i;
    const col = colAt(i);
    if (col) {
      col.tabIndex = 0;
      if (focus) col.focus({ preventScroll: true });
    }
    return col;
  }

  // Go to step i wherever it is: its block fetched and drawn, scrolled to, focused and selected.
  // The latest move wins: one whose block arrives after a later move (End, then Home at once)
  // is dropped.
  let moves = 0;
  async function goTo(i, options = {}) {
    if (i === null || i === undefined || i < 0 || i >= total) return;
    const move = ++moves;
    const b = Math.floor(i / BLOCK);
    await show(b);
    if (move !== moves) return;
    if (strip.classList.contains("fold-thinking") && step(i) && step(i).segment === "thinking") {
      foldThinking(false);
    }
    const col = setCursor(i, options.focus !== false);
    if (col) col.scrollIntoView({ block: options.block || "center", inline: "nearest" });
    select(i, false);
    status(options.say || "");
  }

  const status = (text) => {
    $("jump-status").textContent = text;
  };

  // The next (or previous) index of `list` after (before) `from`; wraps around.
  function following(list, from, back) {
    if (!list.length) return null;
    if (back) {
      for (let k = list.length - 1; k >= 0; k--) if (list[k] < from) return list[k];
      return list[list.length - 1];
    }
    for (const v of list) if (v > from) return v;
    return list[0];
  }
  const here = () => (current === null ? -1 : current);
  function jumpDivergence(back) {
    const list = view.marks.divergences;
    const i = following(list, back && current === null ? total : here(), back);
    if (i !== null) goTo(i, { say: `divergence ${list.indexOf(i) + 1} of ${list.length}` });
  }

  // ----- search: over the tokens' text (bounded: at most 200 characters), from the selection on
  let offsets = null;
  function find(text) {
    if (!text) return;
    if (offsets === null) {
      offsets = new Int32Array(view.tokens.length + 1);
      view.tokens.forEach((t, i) => {
        offsets[i + 1] = offsets[i] + t.length;
      });
    }
    const all = view.tokens.join("");
    const from = current === null ? 0 : offsets[current + 1];
    let at = all.indexOf(text, from);
    if (at < 0) at = all.indexOf(text);
    if (at < 0) {
      status(`“${text}” is not in the response`);
      return;
    }
    let lo = 0;
    let hi = view.tokens.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (offsets[mid] <= at) lo = mid;
      else hi = mid - 1;
    }
    goTo(lo, { say: `“${text}” at #${lo}`, focus: false });
  }

  function foldThinking(on) {
    strip.classList.toggle("fold-thinking", on);
    const box = $("fold-thinking");
    if (box) box.checked = on;
  }

  // ----- events
  strip.addEventListener("mouseover", (e) => {
    const col = e.target.closest(".col");
    if (!col) return;
    const i = Number(col.dataset.i);
    showTooltip(tooltip, col, [details(i, false)]);
    hoverChart(i);
  });
  strip.addEventListener("mouseleave", () => {
    tooltip.hidden = true;
    if (window.Plotly && chart.data) Plotly.Fx.unhover(chart);
  });
  strip.addEventListener("click", (e) => {
    const col = e.target.closest(".col");
    if (!col) return;
    const i = Number(col.dataset.i);
    setCursor(i, false);
    select(i, false);
  });
  strip.addEventListener("keydown", (e) => {
    const col = e.target.closest(".col");
    if (!col) return;
    const i = Number(col.dataset.i);
    const moves = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: total - 1 };
    if (e.key in moves) {
      e.preventDefault();
      let next = Math.max(0, Math.min(total - 1, moves[e.key]));
      if (strip.classList.contains("fold-thinking")) {
        const dir = next >= i ? 1 : -1;
        while (step(next) && step(next).segment === "thinking" && next + dir >= 0 && next + dir < total) next += dir;
      }
      goTo(next, { block: "nearest" });
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      select(i, false);
    } else if (e.key === "n" || e.key === "p") {
      e.preventDefault();
      jumpDivergence(e.key === "p");
    }
  });

  $("prev-div").addEventListener("click", () => jumpDivergence(true));
  $("next-div").addEventListener("click", () => jumpDivergence(false));
  $("next-matters").addEventListener("click", () => {
    const list = view.marks.matters.length ? view.marks.matters : view.marks.forks;
    const i = following(list, here(), false);
    if (i !== null) goTo(i, { say: `${view.marks.matters.length ? "fork that matters" : "fork"} ${list.indexOf(i) + 1} of ${list.length}` });
  });
  $("top-kl").addEventListener("click", () => goTo(view.marks.top_kl, { say: "the largest reverse KL" }));
  if ($("turn-select")) $("turn-select").addEventListener("change", (e) => goTo(Number(e.target.value), { focus: false }));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    find($("search").value.slice(0, 200));
  });
  if ($("fold-thinking")) $("fold-thinking").addEventListener("change", (e) => foldThinking(e.target.checked));
  for (const chip of document.querySelectorAll("#chips .chip[data-jump]")) {
    chip.addEventListener("click", () => goTo(Number(chip.dataset.jump)));
  }
  $("diff").addEventListener("click", (e) => {
    const mark = e.target.closest("mark[data-i]");
    if (mark) goTo(Number(mark.dataset.i));
  });
  if ($("show-diff")) $("show-diff").addEventListener("click", buildDiff);

  // A long page's aligned diff, built on demand: runs of agreeing tokens as text, each divergence
  // marked on both sides (the teacher's tokens there came with the view); context turns left out,
  // as the server leaves them out of a short page's diff.
  function buildDiff() {
    const student = $("diff-response");
    const teacher = $("diff-rollout");
    const context = view.turns.filter((t) => !t.scored);
    const divergences = view.marks.divergences;
    let k = 0;
    let run = [];
    const flush = () => {
      if (!run.length) return;
      const text = run.join("");
      student.append(text);
      teacher.append(text);
      run = [];
    };
    for (let i = 0; i < total; i++) {
      const turn = context.find((t) => i >= t.start && i < t.stop);
      if (turn) {
        i = turn.stop - 1;
        continue;
      }
      if (divergences[k] === i) {
        flush();
        const mine = el("mark", view.tokens[i], "d");
        const theirs = el("mark", view.diff_teacher[k], "d");
        mine.dataset.i = theirs.dataset.i = String(i);
        student.append(mine);
        teacher.append(theirs);
        k++;
      } else {
        run.push(view.tokens[i]);
      }
    }
    flush();
    $("show-diff").remove();
    $("diff-cols").hidden = false;
  }
  for (const radio of document.querySelectorAll('input[name="metric"]')) {
    radio.addEventListener("change", () => {
      metricName = radio.value;
      repaint();
    });
  }
  for (const radio of document.querySelectorAll('input[name="scale"]')) {
    radio.checked = radio.value === scale;
    radio.addEventListener("change", () => {
      scale = radio.value;
      try {
        localStorage.setItem(SCALE_KEY, scale);
      } catch (e) {
        /* no storage (a file opened from disk): this page only */
      }
      repaint();
    });
  }

  // ----- first paint: the first block now, the rest as they near the screen
  metric = metricOf(metricName);
  drawBar();
  if (blocks.length) fill(blocks[0], cache.get(0) || []);
  guessHeights();
  blocks.forEach((block) => near.observe(block));
  performance.mark("vr-painted");

  // ----- the chart, linked both ways with the strip
  function pointIndex(trace, position) {
    const xs = trace.x;
    let lo = 0;
    let hi = xs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] < position) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && Math.abs(xs[lo - 1] - position) < Math.abs(xs[lo] - position)) lo -= 1;
    return lo;
  }
  function hoverChart(i) {
    if (!window.Plotly || !chart.data || !chart.data[0].x.length) return;
    Plotly.Fx.hover(chart, [{ curveNumber: 0, pointNumber: pointIndex(chart.data[0], i) }]);
  }
  let linked = null;
  function linkFromChart(i) {
    if (linked) linked.classList.remove("linked");
    linked = colAt(i);
    if (linked) linked.classList.add("linked");
  }

  // Token text under the ticks once zoomed in to a few dozen tokens; positions otherwise.
  const TEXT_TICKS_UP_TO = 40;
  let ticksFor = null;
  function tokenTicks() {
    const range = chart.layout.xaxis.range;
    if (!range || total <= TEXT_TICKS_UP_TO) return;
    const lo = Math.max(0, Math.ceil(range[0]));
    const hi = Math.min(total - 1, Math.floor(range[1]));
    const key = `${lo}:${hi}`;
    if (key === ticksFor) return;
    ticksFor = key;
    if (hi - lo + 1 > TEXT_TICKS_UP_TO) {
      Plotly.relayout(chart, { "xaxis.tickmode": "auto", "xaxis.tickvals": null, "xaxis.ticktext": null });
      return;
    }
    const vals = [];
    for (let i = lo; i <= hi; i++) vals.push(i);
    Plotly.relayout(chart, {
      "xaxis.tickmode": "array",
      "xaxis.tickvals": vals,
      "xaxis.ticktext": vals.map((i) => visible(view.tokens[i]).slice(0, 8).replace(/[<>&]/g, " ")),
      "xaxis.tickangle": -60,
    });
  }

  if ($("quadrant-data")) plot($("quadrant-chart"), embedded("quadrant-data"));

  plot(chart, figure).then(() => {
    chart.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      // Only points over token positions select a token (the Lorenz panel's x is a share).
      const overTokens = point && (point.data.xaxis || "x") === "x";
      if (overTokens && Number.isInteger(point.x) && point.x < total) goTo(point.x, { focus: false, block: "nearest" });
    });
    chart.on("plotly_hover", (event) => {
      const point = event.points && event.points[0];
      if (point && (point.data.xaxis || "x") === "x" && Number.isInteger(point.x)) linkFromChart(point.x);
    });
    chart.on("plotly_unhover", () => linkFromChart(null));
    chart.on("plotly_relayout", (update) => {
      if (!("xaxis.tickvals" in update) && !("xaxis.tickmode" in update)) tokenTicks();
    });
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "1";
  });
})();
