// Sortable tables rendered by the server (/analyses): a heading's button sorts its column, by
// the cells' data-value (numbers) or their text; aria-sort says which column and which way, so
// a keyboard (Tab, then Enter or Space) and a screen reader both work. The job page sorts its
// own rows (static/job.js) with the same markup.
(function () {
  "use strict";
  const value = (td) => {
    if (!td) return null;
    const raw = td.dataset.value ?? td.textContent.trim();
    if (raw === "" || raw === "–" || raw === "None") return null;
    const number = Number(raw.replace(/%$/, ""));
    return Number.isFinite(number) ? number : raw.toLowerCase();
  };
  for (const table of document.querySelectorAll("table.sortable[data-sort=static]")) {
    const body = table.tBodies[0];
    for (const th of table.querySelectorAll("thead th[data-key]")) {
      const button = th.querySelector("button.sort");
      if (!button) continue;
      button.addEventListener("click", () => {
        const key = th.dataset.key;
        const up = th.getAttribute("aria-sort") !== "ascending";
        const rows = [...body.rows];
        const cell = (tr) => value(tr.querySelector(`td[data-key="${key}"]`));
        rows.sort((a, b) => {
          const x = cell(a), y = cell(b);
          if (x === y) return 0;
          if (x === null) return 1; // empty cells last, either way
          if (y === null) return -1;
          return (x < y ? -1 : 1) * (up ? 1 : -1);
        });
        body.replaceChildren(...rows);
        for (const other of table.querySelectorAll("thead th")) other.removeAttribute("aria-sort");
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
      });
    }
  }
})();
