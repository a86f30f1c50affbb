// The CLI's report.html: draw the dataset figures embedded in the page (it opens offline).
(function () {
  "use strict";
  const { $, embedded, plot } = VR;
  for (const [key, figure] of Object.entries(embedded("figures-data"))) plot($(`fig-${key}`), figure);
})();
