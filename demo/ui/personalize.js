// The Personalize tab: fine-tune the universal student for one face in the background, then use it live.
import { $, api, withToken } from "./common.js";
import { state } from "./live.js";

let poll = null;
async function showStatus() {
  const status = await (await api("api/personalize")).json();
  const eta = status.eta_s != null ? `, ETA ${status.eta_s} s` : "";
  const step = status.step != null ? `, step ${status.step}/${status.steps}, loss ${status.loss}` : "";
  const shares = status.same_person ? `\njudged the same person on held-out faces: ${Object.entries(status.same_person)
    .map(([who, share]) => `${who} ${share == null ? "–" : `${(100 * share).toFixed(0)}%`}`).join(", ")}` : "";
  $("personal-status").textContent = `${status.state}${status.phase ? ` (${status.phase})` : ""}${step}${eta}` +
    (status.error ? `\n${status.error}` : "") + (status.artifact ? `\n-> ${status.artifact}` : "") + shares;
  $("personal-status").dataset.state = status.state;
  $("personal-status").dataset.artifact = status.artifact || "";
  if (status.preview) {
    $("personal-preview").src = withToken(`api/personalize/preview.png?v=${status.preview}`);
    $("personal-preview").style.display = "";
  }
  showJobs(status.jobs || []);
  $("personal-use").disabled = status.state !== "done";
  $("personal-cancel").disabled = status.state !== "running";
  if (status.state !== "running" && poll) { clearInterval(poll); poll = null; }
}

// This app's job and those an earlier app left in the work folder (an interrupted one keeps its checkpoints).
function showJobs(jobs) {
  const list = $("personal-jobs");
  list.replaceChildren(...jobs.map((job) => {
    const item = document.createElement("li");
    const detail = job.artifact ? ` -> ${job.artifact}` : job.error ? `: ${job.error}`
      : job.state === "interrupted" ? ` (the app stopped; checkpoints kept in ${job.run})` : "";
    item.textContent = `${job.job}: ${job.state}${detail}`;
    item.dataset.state = job.state;
    return item;
  }));
  $("personal-jobs-box").style.display = jobs.length ? "" : "none";
}

export function setupPersonalize() {
  $("personal-run").addEventListener("click", async () => {
    $("personal-error").textContent = "";
    const body = new FormData();
    if ($("personal-photo").files[0]) body.append("photo", $("personal-photo").files[0]);
    body.append("sample", $("personal-sample").value);
    body.append("steps", $("personal-steps").value);
    body.append("pairs", $("personal-pairs").value);
    for (const file of $("personal-faces").files) body.append("faces", file);
    const response = await api("api/personalize", { method: "POST", body });
    if (!response.ok) { $("personal-error").textContent = (await response.json()).error; return; }
    await showStatus();
    poll ||= setInterval(showStatus, 2000);
  });
  $("personal-cancel").addEventListener("click", async () => {
    const response = await api("api/personalize/cancel", { method: "POST" });
    if (!response.ok) $("personal-error").textContent = (await response.json()).error;
    await showStatus();
  });
  $("personal-use").addEventListener("click", () => {
    if (!state.link) { $("personal-error").textContent = "start the camera in the Live tab first"; return; }
    state.personalised = true;  // until another pick in the Model list
    state.link.send(JSON.stringify({ use_personalised: true }));
    const artifact = $("personal-status").dataset.artifact;
    $("model-name").textContent = `${artifact} (personalised, live now)`;
    $("artifact-info").textContent = `live: ${artifact}`;
    $("personal-error").textContent = "";
    $("personal-done").textContent = `The Live tab now swaps with ${artifact}.`;
    document.querySelector("nav button[data-tab=live]").click();
  });
  showStatus();
}
