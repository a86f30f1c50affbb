// Upload a file of trajectories as a job; list the rejected lines; open the job page.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  $("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("error").hidden = true;
    $("upload").disabled = true;
    const form = new FormData($("upload-form"));
    if (!form.get("privileged")) form.delete("privileged");
    try {
      const response = await fetch("/api/jobs", { method: "POST", body: form });
      const body = await response.json();
      const rejected = body.rejected || [];
      if (!response.ok) throw new Error(body.error);
      const url = `/jobs/${encodeURIComponent(body.job.id)}`;
      if (!rejected.length) {
        window.location.href = url;
        return;
      }
      $("rejected-rows").replaceChildren(
        ...rejected.map((r) => {
          const row = document.createElement("tr");
          const line = document.createElement("td");
          line.className = "num";
          line.textContent = String(r.line);
          const error = document.createElement("td");
          error.textContent = r.error;
          row.append(line, error);
          return row;
        })
      );
      $("job-link").href = url;
      $("rejected").hidden = false;
    } catch (e) {
      $("error").textContent = e.message;
      $("error").hidden = false;
    } finally {
      $("upload").disabled = false;
    }
  });
})();
