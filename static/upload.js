// Upload a file of trajectories as a job; list the rejected lines; open the job page.
(function () {
  "use strict";
  const { $, row, showError, request } = VR;
  $("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError($("error"), "");
    $("upload").disabled = true;
    const form = new FormData($("upload-form"));
    for (const name of ["privileged", "map", "from", "teacher_context", "teacher_template"]) if (!form.get(name)) form.delete(name);
    try {
      const body = await request("/api/jobs", { method: "POST", body: form });
      const url = `/jobs/${encodeURIComponent(body.job.id)}`;
      if (!body.rejected.length) {
        window.location.href = url;
        return;
      }
      $("rejected-rows").replaceChildren(...body.rejected.map((r) => row([[String(r.line), "num"], r.error])));
      $("job-link").href = url;
      $("rejected").hidden = false;
    } catch (e) {
      showError($("error"), e.message);
    } finally {
      $("upload").disabled = false;
    }
  });
})();
