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

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    $("analyze").disabled = true;
    $("progress").hidden = false;
    $("progress-fill").style.width = "0%";
    $("progress-label").textContent = STAGES.queued;
    try {
      const task = await window.runTask("/api/tasks", body(), (t) => {
        const fraction = t.total ? t.done / t.total : 0;
        $("progress-fill").style.width = `${Math.round(100 * fraction)}%`;
        const count = t.total ? ` (${t.done}/${t.total})` : "";
        $("progress-label").textContent = (STAGES[t.stage] || t.stage) + count;
      });
      $("progress-label").textContent = "done: opening the analysis…";
      $("progress-fill").style.width = "100%";
      window.location.href = `/analyses/${encodeURIComponent(task.analysis_id)}`;
    } catch (e) {
      showError(e.message);
    }
  });
})();
