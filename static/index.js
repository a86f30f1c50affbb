// The Analyze form: start a task, follow its progress, open the analysis page when done.
(function () {
  "use strict";
  const { $, progress, showErrors, runTask, cancelTask } = VR;
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

  let running = null; // the task's id while one runs: what Cancel stops

  function idle() {
    running = null;
    $("progress").hidden = true;
    $("cancel").hidden = true;
    $("analyze").disabled = false;
  }

  // Cancel: the task stops at its next step and nothing is stored (POST /api/tasks/{id}/cancel);
  // runTask then rejects with `cancelled`, and the form is ready again.
  $("cancel").addEventListener("click", async () => {
    if (!running) return;
    $("cancel").disabled = true;
    $("progress-label").textContent = "cancelling…";
    try {
      await cancelTask(running);
    } catch (e) {
      showErrors(form, errorBox, e);
    } finally {
      $("cancel").disabled = false;
    }
  });

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

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showErrors(form, errorBox, null);
    $("status").hidden = true;
    $("analyze").disabled = true;
    $("progress").hidden = false;
    const bar = (fraction, text) => progress($("progress-fill"), $("progress-label"), fraction, text);
    bar(0, STAGES.queued);
    try {
      const task = await runTask(
        "/api/tasks",
        body(),
        (t) => {
          const count = t.total ? ` (${t.done}/${t.total})` : "";
          bar(t.total && t.done / t.total, (STAGES[t.stage] || t.stage) + count);
        },
        (id) => {
          running = id;
          $("cancel").hidden = false;
        },
      );
      $("cancel").hidden = true;
      bar(1, "done: opening the analysis…");
      window.location.href = `/analyses/${encodeURIComponent(task.analysis_id)}`;
    } catch (e) {
      idle();
      if (e.cancelled) {
        $("status").textContent = "Cancelled: the analysis stopped and nothing was stored.";
        $("status").hidden = false;
      } else showErrors(form, errorBox, e);
    }
  });
})();
