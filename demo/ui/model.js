// The Model tab (the manifest, readable) and what the Live and Files tabs need of the model: its artifacts
// and identities.
import { $, api } from "./common.js";
import { sendSettings, stampFormat, state } from "./live.js";

// The manifest as JSON, with the identity texture's image and long number lists summarised.
function readable(key, value) {
  if (key === "png_base64") return `<PNG, ${Math.round((value.length * 3) / 4 / 1024)} KB>`;
  if (Array.isArray(value) && value.length > 24 && Array.isArray(value[0])) return `<${value.length} rows>`;
  return value;
}

export function showArtifact() {
  const a = (state.artifacts || [])[Number($("artifact").value || 0)];
  $("artifact-info").textContent = a ? `${a.name} · sha256 ${a.sha256.slice(0, 12)}… · parity ${a.parity} · ` +
    `${a.delegation}` : "";
}

export function setupModel() {
  api("api/model").then((r) => r.json()).then((info) => {
    $("model-name").textContent = info.model;
    if (info.personalize_hint) {  // say it before the click: no universal run to fine-tune
      $("personal-run").disabled = true;
      $("personal-error").textContent = info.personalize_hint;
    }
    $("model-info").textContent = JSON.stringify(info, readable, 2)  // short lists of numbers or names on one line
      .replace(/\[\s+([^\[\]{}]*?)\s+\]/g, (_, inner) => `[${inner.replace(/\n\s*/g, " ")}]`);
    if (!state.transportChosen) $("transport").value = info.transport.default;  // unless picked already
    info.artifacts.forEach((a, i) => {
      const option = new Option(`${a.runtime} ${a.precision} · ${(a.size_bytes / 1e6).toFixed(2)} MB`, i);
      option.disabled = Boolean(a.unavailable);
      option.title = a.unavailable || a.path;
      $("artifact").add(option);
    });
    state.artifacts = info.artifacts;
    $("artifact-label").hidden = !info.artifacts.length;
    showArtifact();
    Object.assign(stampFormat, info.transport.stamp);
    const names = info.identities.length ? info.identities : [`${info.baked_identity || "the face"} (baked into the model)`];
    for (const select of [$("identity"), $("file-identity")]) {
      names.forEach((name, i) => select.add(new Option(name, i)));
    }
  });
  $("artifact").addEventListener("change", () => {
    state.personalised = false;
    showArtifact();
    sendSettings();
  });
}
