// Background tasks (POST .../tasks, then GET /api/tasks/{id}): shared by the Analyze form and
// the pedagogical section. `runTask` resolves with the finished task or rejects with an Error
// whose message is the server's (a clear sentence, never a stack trace).
window.runTask = async function runTask(url, body, onProgress) {
  const describe = (error) => {
    const details = (error.details || []).map((d) => `${d.field}: ${d.error}`).join("; ");
    return error.error + (details && !error.error.includes(details) ? ` (${details})` : "");
  };
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`the server could not be reached: ${e}`);
  }
  const started = await response.json();
  if (!response.ok) throw new Error(describe(started));
  for (;;) {
    const poll = await fetch(`/api/tasks/${encodeURIComponent(started.task_id)}`);
    const task = await poll.json();
    if (!poll.ok) throw new Error(describe(task));
    if (task.state === "done") return task;
    if (task.state === "error") throw new Error(task.error.error);
    onProgress(task);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
};
