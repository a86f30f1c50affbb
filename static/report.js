// The CLI's report.html: draw the dataset figures embedded in the page (it opens offline).
(function () {
  "use strict";
  const figures = JSON.parse(document.getElementById("figures-data").textContent);
  for (const [key, figure] of Object.entries(figures)) {
    Plotly.newPlot(`fig-${key}`, figure.data, figure.layout, { displaylogo: false, responsive: true });
  }
})();
