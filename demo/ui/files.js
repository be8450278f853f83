// The Files tab: swap an uploaded image or video, with upload and per-frame progress.
import { $, TOKEN, api, el } from "./common.js";

async function run() {
  const file = $("file-input").files[0];
  $("file-error").textContent = "";
  $("file-result").replaceChildren();
  if (!file) { $("file-error").textContent = "choose an image or a video first"; return; }
  const job = (await (await api("api/files/job", { method: "POST" })).json()).job;  // the server's id
  const body = new FormData();
  body.append("file", file);
  body.append("identity", $("file-identity").value || "0");
  body.append("all_faces", String($("file-all-faces").checked));
  body.append("job", job);
  const progress = $("file-progress");
  progress.dataset.job = job;
  // Upload progress from the request, then the server's frame count while it swaps a video.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "api/files");
  xhr.setRequestHeader("X-Pocketswap-Token", TOKEN);
  xhr.responseType = "blob";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) progress.textContent = `uploading ${Math.round(100 * e.loaded / e.total)}%`;
  };
  xhr.upload.onload = () => { progress.textContent = "swapping…"; };
  const poll = setInterval(async () => {
    const r = await api(`api/files/progress?job=${job}`);
    if (!r.ok) return;
    const p = await r.json();
    if (!p.done) progress.textContent = `swapping frame ${p.frames}${p.total ? ` of ${p.total}` : ""}`;
  }, 500);
  const done = new Promise((resolve) => { xhr.onloadend = resolve; });
  xhr.send(body);
  await done;
  clearInterval(poll);
  progress.textContent = "";
  if (xhr.status !== 200) {
    const text = xhr.response ? await xhr.response.text() : "";
    let error = xhr.statusText || "upload failed";
    try { error = JSON.parse(text).error || error; } catch (_) { /* not JSON */ }
    $("file-error").textContent = error;
    return;
  }
  const blob = xhr.response;
  const url = URL.createObjectURL(blob);
  const name = (xhr.getResponseHeader("Content-Disposition") || "").split('filename="')[1]?.replace('"', "") || "swapped";
  const media = blob.type.startsWith("video/")
    ? el("video", { className: "result", src: url, controls: true, width: 480 })
    : el("img", { className: "result", id: "file-output", src: url, alt: "swapped image" });
  $("file-result").replaceChildren(media, el("p", {}, el("a", { href: url, download: name }, `download ${name}`)));
}

export function setupFiles() {
  $("file-run").addEventListener("click", run);
}
