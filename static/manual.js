// A page of the manual (templates/manual.html): a link whose #anchor names a section loosely
// (the pages cite `docs/formats.md "Teacher context"`; the heading is "The teacher context") goes
// to the first heading that has every word of it, as an exact anchor would.
(function () {
  "use strict";
  const { $ } = VR;
  let wanted;
  try {
    wanted = decodeURIComponent(window.location.hash.slice(1));
  } catch (e) {
    return; // a hash that is not valid percent-encoding (#%) names no section
  }
  if (!wanted || $(wanted)) return;
  const words = wanted.toLowerCase().split("-").filter(Boolean);
  const headings = document.querySelectorAll(".manual-page h1[id], .manual-page h2[id], .manual-page h3[id], .manual-page h4[id]");
  const match = [...headings].find((h) => words.every((w) => h.id.split("-").includes(w)));
  if (!match) return;
  history.replaceState(null, "", `#${match.id}`);
  match.scrollIntoView();
  match.classList.add("found"); // :target does not apply to a hash set by replaceState
})();
