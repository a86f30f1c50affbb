// The Analyze form: start a task, follow its progress, open the analysis page when done.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const form = $("analyze-form");
  const errorBox = $("error");
  const STAGES = {
    queued: "waiting for the model…",
    generate: "the student is generating",
    replay: "the teacher replays the trajectory",
    continuations: "the teacher continues from every prefix",
    recovery: "the teacher tries to finish from each prefix",
    done: "done",
  };

  for (const radio of form.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      const paste = form.querySelector('input[name="mode"]:checked').value === "paste";
      $("paste-options").hidden = !paste;
      $("generate-options").hidden = paste;
    });
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    $("progress").hidden = true;
    $("analyze").disabled = false;
  }

  function promptValue(text) {
    const trimmed = text.trim();
    if (trimmed.startsWith("[")) {
      try {
        const messages = JSON.parse(trimmed);
        if (Array.isArray(messages)) return messages;
      } catch (e) {
        /* not JSON: plain text */
      }
    }
    return text;
  }

  function body() {
    const number = (id) => Number($(id).value);
    const out = {
      prompt: promptValue($("prompt").value),
      top_k: number("top_k"),
      continuation_tokens: number("continuation_tokens"),
    };
    if ($("privileged").value.trim()) out.privileged = $("privileged").value;
    if ($("reference_answer").value.trim()) out.reference_answer = $("reference_answer").value.trim();
    if ($("recovery").checked) out.recovery = true;
    const paste = form.querySelector('input[name="mode"]:checked').value === "paste";
    if (paste) {
      out.response = $("response").value;
    } else {
      out.generation = {
        max_new_tokens: number("max_new_tokens"),
        temperature: number("temperature"),
        seed: number("seed"),
      };
    }
    return out;
  }

  function describe(error) {
    const details = (error.details || []).map((d) => `${d.field}: ${d.error}`).join("; ");
    return error.error + (details && !error.error.includes(details) ? ` (${details})` : "");
  }

  async function follow(taskId) {
    for (;;) {
      const response = await fetch(`/api/tasks/${encodeURIComponent(taskId)}`);
      const task = await response.json();
      if (!response.ok) return showError(describe(task));
      if (task.state === "done") {
        $("progress-label").textContent = "done: opening the analysis…";
        $("progress-fill").style.width = "100%";
        window.location.href = `/analyses/${encodeURIComponent(task.analysis_id)}`;
        return;
      }
      if (task.state === "error") return showError(task.error.error);
      const fraction = task.total ? task.done / task.total : 0;
      $("progress-fill").style.width = `${Math.round(100 * fraction)}%`;
      const count = task.total ? ` (${task.done}/${task.total})` : "";
      $("progress-label").textContent = (STAGES[task.stage] || task.stage) + count;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    $("analyze").disabled = true;
    $("progress").hidden = false;
    $("progress-fill").style.width = "0%";
    $("progress-label").textContent = STAGES.queued;
    try {
      const response = await fetch("/api/tasks", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body()),
      });
      const data = await response.json();
      if (!response.ok) return showError(describe(data));
      await follow(data.task_id);
    } catch (e) {
      showError(`the server could not be reached: ${e}`);
    }
  });
})();
