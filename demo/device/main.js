// Device mode: the page runs the whole swap client-side from the artifact's manifest (swap_spec).
import { loadLiteRt } from "@litertjs/core";
import * as ort from "/device/lib/onnxruntime-web/dist/ort.min.mjs";
import { FrontEnd } from "./frontend.js";
import { Swapper } from "./swap.js";

const TOKEN = document.querySelector("meta[name=pocketswap-token]").content;
const api = (path) => fetch(path, { headers: { "X-Pocketswap-Token": TOKEN } });
document.querySelector("header a").href = `/?token=${encodeURIComponent(TOKEN)}`;
const status = document.getElementById("status"), stats = document.getElementById("stats");
const view = document.getElementById("view"), video = document.getElementById("video");
const button = document.getElementById("camera");
const context = view.getContext("2d", { willReadFrequently: true });

function say(text, error = false) {
  status.textContent = text;
  status.className = error ? "error" : "";
}

async function json(response) {
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok || body.error) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function setUp() {
  const manifest = await json(await api("/api/device/manifest"));
  ort.env.wasm.wasmPaths = "/device/lib/onnxruntime-web/dist/";
  ort.env.wasm.numThreads = 1; // its worker threads spin between runs and starve the page on small machines
  await loadLiteRt("/device/lib/@litertjs/core/wasm/");
  const model = await api("/api/device/artifact");
  if (!model.ok) throw new Error((await model.json().catch(() => ({}))).error || `the model: HTTP ${model.status}`);
  const swapper = await Swapper.create(ort, new Uint8Array(await model.arrayBuffer()), manifest);
  const front = await FrontEnd.create(manifest.swap_spec.front_end, manifest.swap_spec.video, "/device/models/");
  return { manifest, swapper, front };
}

// One RGBA frame swapped in place; returns whether a face was found. `seconds`: the frame's clock.
async function process(parts, rgba, width, height, seconds, timings) {
  const frame = { data: rgba, width, height, channels: 4 };
  const start = performance.now();
  const landmarks = await parts.front.locate(frame, seconds);
  timings.landmarks = performance.now() - start;
  if (!landmarks) return null;
  await parts.swapper.swap(frame, landmarks, timings); // in place
  return landmarks;
}

const LOG_FRAMES = 2000; // per-frame timings kept for `pocketswap bench app --transport device`
function label() { // as the app's frames: synthetic media is labelled
  context.font = "bold 16px system-ui, sans-serif";
  const width = context.measureText("SYNTHETIC").width + 12;
  context.fillStyle = "rgba(176, 0, 32, 0.85)";
  context.fillRect(8, view.height - 30, width, 22);
  context.fillStyle = "#fff";
  context.fillText("SYNTHETIC", 14, view.height - 13);
}

const state = { frames: 0, started: 0, running: false, stream: null, log: [] };

async function loop(parts) {
  if (!state.running) return;
  if (video.readyState >= 2) {
    const { videoWidth: w, videoHeight: h } = video;
    if (view.width !== w || view.height !== h) Object.assign(view, { width: w, height: h });
    const frameStart = performance.now();
    context.drawImage(video, 0, 0, w, h);
    const pixels = context.getImageData(0, 0, w, h);
    const timings = {};
    const face = (await process(parts, pixels.data, w, h, performance.now() / 1000, timings)) !== null;
    context.putImageData(pixels, 0, 0);
    if (face) label();
    const stages = Object.entries(timings).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ");
    state.frames++;
    state.log.push({ ...timings, frame: performance.now() - frameStart, face });
    if (state.log.length > LOG_FRAMES) state.log.shift();
    const seconds = (performance.now() - state.started) / 1000;
    stats.textContent = `${(state.frames / seconds).toFixed(1)} FPS · ${face ? stages + " ms" : "no face"}`;
  }
  requestAnimationFrame(() => loop(parts));
}

async function start(parts) {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
  } catch (error) {
    say(`The camera is unavailable: ${error.message}`, true);
    return;
  }
  video.srcObject = state.stream;
  await video.play();
  Object.assign(state, { frames: 0, started: performance.now(), running: true, log: [] });
  button.textContent = "Stop camera";
  say("Swapping on this device: no frame leaves it.");
  loop(parts);
}

function stop() {
  state.running = false;
  state.stream?.getTracks().forEach((track) => track.stop());
  button.textContent = "Start camera";
}

const ready = setUp().then(
  (parts) => {
    say(`Ready: ${parts.manifest.artifact} (${parts.manifest.preset || "student"}, ${parts.manifest.precision}` +
      `${parts.swapper.mesh ? ", warped identity" : ""}). Start the camera.`);
    button.disabled = false;
    button.onclick = () => (state.running ? stop() : start(parts));
    return parts;
  },
  (error) => { say(`Device mode cannot start: ${error.message}`, true); throw error; },
);

// For tests and benchmarks: swap one still image (a URL) the way a camera frame is swapped.
window.pocketswapDevice = {
  ready,
  state,
  async swapStill(url) {
    const parts = await ready;
    const bitmap = await createImageBitmap(await (await fetch(url)).blob());
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const pixels = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    parts.front.frame = 0; // a still: detect
    parts.front.filter = null;
    const timings = {};
    const landmarks = await process(parts, pixels.data, bitmap.width, bitmap.height, 0, timings);
    return { landmarks: landmarks && Array.from(landmarks), timings, width: bitmap.width, height: bitmap.height,
      rgba: Array.from(pixels.data) };
  },
};
