// Upload a file of trajectories as a job; list the rejected lines; open the job page.
(function () {
  "use strict";
  const { $, row, showErrors, request } = VR;
  const PEDAGOGICAL = ["threshold", "max_rank", "sweep", "temperature", "top_p", "seed", "max_new_tokens"];
  const showMode = () => {
    const pedagogical = $("mode").value === "pedagogical";
    // Disabled while hidden: a leftover bad value there must not block (or join) an analysis upload.
    $("pedagogical-options").hidden = $("pedagogical-options").disabled = !pedagogical;
    $("upload").textContent = pedagogical ? "Upload and run the rollouts" : "Upload and analyse";
  };
  $("mode").addEventListener("change", showMode);
  showMode();
  $("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showErrors($("upload-form"), $("error"), null);
    $("upload").disabled = true;
    const form = new FormData($("upload-form"));
    for (const name of ["privileged", "map", "from", "teacher_context", "teacher_template", "objectives", "objective_k", "jsd_beta", "clip_tau"]) if (!form.get(name)) form.delete(name);
    // The pedagogical options given (the others take their defaults); none for an analysis job.
    for (const name of PEDAGOGICAL) if (!form.get(name)) form.delete(name);
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
      showErrors($("upload-form"), $("error"), e);
    } finally {
      $("upload").disabled = false;
    }
  });
})();
