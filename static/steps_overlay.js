// The steps of a step-labelled line drawn on the analysis page's token strip: the first token of
// each step after the first gets a boundary mark (.step-start) and the tokens of the labelled
// first wrong step a band (.step-wrong), from #steps-overlay's data (templates/_steps_overlay.html).
// The strip is drawn block by block as it scrolls (analysis.js), so new tokens are marked as
// they arrive.
(function () {
  "use strict";
  const { $ } = VR;
  const overlay = $("steps-overlay");
  const strip = $("strip");
  if (!overlay || !strip) return;
  const starts = new Set(JSON.parse(overlay.dataset.boundaries || "[]"));
  const from = overlay.dataset.wrongStart === "" ? -1 : Number(overlay.dataset.wrongStart);
  const to = overlay.dataset.wrongStop === "" ? -1 : Number(overlay.dataset.wrongStop);

  function mark(root) {
    for (const col of root.querySelectorAll(".col[data-i]")) {
      const i = Number(col.dataset.i);
      col.classList.toggle("step-start", starts.has(i));
      col.classList.toggle("step-wrong", i >= from && i < to);
    }
  }

  mark(strip);
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) if (node.nodeType === 1) mark(node.parentNode || strip);
    }
  }).observe(strip, { childList: true, subtree: true });
  document.body.dataset.stepsOverlay = String(starts.size + 1);
})();
