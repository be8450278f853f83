// The Live tab: camera -> swap -> back to the page, over a WebSocket (JPEG frames, one in flight) or WebRTC.
// Its switches are built from the settings schema the server serves (api/settings), the one definition of
// what the tab may change (the live pipeline's share of PipelineConfig, plus the view, label and virtual camera).
import { $, TOKEN, api, el, fillRows } from "./common.js";

export const state = { link: null, transport: "websocket", stream: null, busy: false, frames: 0, started: 0,
  samples: {}, log: [], rtcStats: new Map(), artifacts: [], personalised: false, schema: [], transportChosen: false };
export const stampFormat = {};  // the server's (columns, bits, mark), from api/model
const canvas = el("canvas", { width: 640, height: 480 });
const output = $("live-output").getContext("2d");

// ---- switches, from the schema
function control(entry) {
  const label = (...children) => el("label", { title: entry.help }, ...children);
  if (entry.type === "bool") {
    return label(el("input", { type: "checkbox", id: entry.name, checked: entry.default }), ` ${entry.label}`);
  }
  if (entry.type === "choice") {
    const select = el("select", { id: entry.name });
    for (const choice of entry.choices) select.add(new Option(choice, choice, false, choice === entry.default));
    return label(`${entry.label} `, select);
  }
  const input = el("input", { type: "number", id: entry.name, value: entry.default, min: entry.min, max: entry.max });
  input.style.width = "4em";
  return label(`${entry.label} `, input);
}
function value(entry) {
  const input = $(entry.name);
  if (entry.type === "bool") return input.checked;
  if (entry.type === "int") return Number(input.value || entry.default);
  return input.value;
}
export function settings() {
  const artifact = state.artifacts?.length && !state.personalised ? { artifact: Number($("artifact").value) } : {};
  const switches = Object.fromEntries(state.schema.map((entry) => [entry.name, value(entry)]));
  return { ...artifact, identity: Number($("identity").value || 0), ...switches };
}
export function sendSettings() {
  if (state.link) state.link.send(JSON.stringify(settings()));
}
async function loadSchema() {
  state.schema = await (await api("api/settings")).json();
  $("live-settings").replaceChildren(...state.schema.map(control));
  for (const entry of state.schema) $(entry.name).addEventListener("change", sendSettings);
}

// ---- per-stage timings: p50 and p95 of the last 120 frames, as a table and a plot
function record(name, ms) {
  const list = (state.samples[name] = state.samples[name] || []);
  list.push(ms);
  if (list.length > 120) list.shift();
}
function percentile(list, q) {
  const sorted = [...list].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
function showStats() {
  fillRows($("stats").tBodies[0], Object.entries(state.samples).map(([name, list]) =>
    [name, percentile(list, 0.5).toFixed(1), percentile(list, 0.95).toFixed(1)]));
  const seconds = (performance.now() - state.started) / 1000;
  $("fps").textContent = `${(state.frames / seconds).toFixed(1)} FPS over ${state.frames} frames (${state.transport})`;
  plotStats();
}
function plotStats() {  // a bar to each series' p50 and a whisker to its p95, on one ms scale
  const plot = $("stats-plot"), row = 16, names = Object.keys(state.samples);
  plot.height = row * names.length + 18;
  const ctx = plot.getContext("2d");
  const p95 = names.map((n) => percentile(state.samples[n], 0.95));
  const scale = Math.max(10, ...p95), left = 122, width = plot.width - left - 8;
  ctx.clearRect(0, 0, plot.width, plot.height);
  ctx.font = "11px system-ui, sans-serif";
  names.forEach((name, i) => {
    const y = i * row, p50 = percentile(state.samples[name], 0.5);
    ctx.fillStyle = "#333"; ctx.fillText(name, 0, y + 11);
    ctx.fillStyle = name === "end to end" ? "#c0392b" : "#4a6fa5";
    ctx.fillRect(left, y + 3, width * p50 / scale, row - 6);
    ctx.fillRect(left + width * p50 / scale, y + row / 2 - 1, width * (p95[i] - p50) / scale, 2);
  });
  ctx.fillStyle = "#333";
  ctx.fillText(`0–${scale.toFixed(0)} ms: bar p50, whisker p95`, left, names.length * row + 13);
}
function serverMessage(msg) {  // a JSON message of either transport; returns its stats, if any
  if (msg.error) {
    $("live-error").textContent = msg.error;
    if (msg.error.startsWith("virtual camera")) $("virtual_camera").checked = false;
  }
  return msg.stats || null;
}
function frameShown(e2e, stats) {  // a swapped frame is on the canvas, e2e ms after its capture
  if (stats) {
    record("end to end", e2e);
    record("server", stats.server_ms);
    record("browser path", e2e - stats.server_ms);
    for (const [stage, ms] of Object.entries(stats.stages)) record(stage, ms);
    state.log.push({ e2e, server: stats.server_ms, stages: stats.stages, transport: state.transport });
    if (state.log.length > 5000) state.log.shift();
    $("live-output").dataset.faces = stats.faces;
  }
  state.frames += 1;
  $("live-output").dataset.frames = state.frames;
  if (state.frames % 10 === 0) showStats();
}

// ---- WebSocket: the capture time travels in a header; one JPEG in flight.
function sendFrame() {
  const ws = state.link && state.link.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || state.busy) return;
  const video = $("camera-video");
  if (video.readyState < 2) { requestAnimationFrame(sendFrame); return; }
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const sent = performance.now();
  state.busy = true;
  canvas.toBlob(async (blob) => {
    const header = new Float64Array([sent]);
    ws.send(await new Blob([header, blob]).arrayBuffer());
  }, "image/jpeg", 0.85);
}
function openWebSocket() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/live?token=${encodeURIComponent(TOKEN)}`);
  ws.binaryType = "blob";
  let pending = null;
  const link = { ws, send: (text) => ws.readyState === WebSocket.OPEN && ws.send(text), close: () => ws.close() };
  ws.onopen = () => { ws.send(JSON.stringify(settings())); sendFrame(); };
  ws.onmessage = async (event) => {
    if (typeof event.data === "string") {
      const msg = JSON.parse(event.data);
      if (msg.error) { serverMessage(msg); state.busy = false; requestAnimationFrame(sendFrame); }
      if (msg.stats) pending = msg.stats;
      return;
    }
    const bitmap = await createImageBitmap(event.data);
    output.drawImage(bitmap, 0, 0, $("live-output").width, $("live-output").height);
    frameShown(pending ? performance.now() - pending.sent_ms : 0, pending);
    pending = null;
    state.busy = false;
    requestAnimationFrame(sendFrame);
  };
  ws.onclose = () => { if (state.link === link) { $("live-error").textContent ||= "connection closed"; state.link = null; } };
  return link;
}

// ---- WebRTC: the camera image plus a stamp band (the page clock in cells) goes out as a video track;
// the swapped track comes back with the band untouched, so each displayed frame tells its capture time.
const stamped = document.createElement("canvas");
const band = document.createElement("canvas");
function drawStamped(video) {
  const cell = stamped.width / stampFormat.columns;
  const ctx = stamped.getContext("2d");
  ctx.drawImage(video, 0, 0, 640, 480);
  const clock = Math.round(performance.now()) & 0xffff;
  const bits = [...Array(stampFormat.bits).keys()].map((i) => (clock >> i) & 1).concat(stampFormat.mark);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 480, stamped.width, cell);
  ctx.fillStyle = "#fff";
  bits.forEach((bit, i) => { if (bit) ctx.fillRect(i * cell, 480, cell, cell); });
}
function frameSize(source) {  // a VideoFrame or a video element; the browser's encoder may have scaled it
  const width = source.displayWidth ?? source.videoWidth, height = source.displayHeight ?? source.videoHeight;
  const rows = Math.max(1, Math.round(width / stampFormat.columns));
  return { width, image: height - rows - (width === stamped.width ? 0 : 1), rows };  // scaled: the edge blurs
}
function readStamp(source, size) {  // the band, scaled back to 640 wide, read at its cells' centres
  const cell = band.width / stampFormat.columns;
  const ctx = band.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(source, 0, size.image, size.width, size.rows, 0, 0, band.width, band.height);
  const row = ctx.getImageData(0, band.height >> 1, band.width, 1).data;
  const bits = [...Array(stampFormat.bits + stampFormat.mark.length).keys()].map((i) => {
    const x = 4 * Math.floor((i + 0.5) * cell);
    return (row[x] + row[x + 1] + row[x + 2]) / 3 > 127 ? 1 : 0;
  });
  if (bits.slice(stampFormat.bits).some((bit, i) => bit !== stampFormat.mark[i])) return null;
  return bits.slice(0, stampFormat.bits).reduce((sum, bit, i) => sum + (bit << i), 0);
}
async function openWebRTC(stream) {
  if (!stampFormat.columns) throw new Error("the page has not loaded the model's description yet");
  stamped.width = band.width = 640;
  stamped.height = 480 + 640 / stampFormat.columns; band.height = 640 / stampFormat.columns;
  const camera = $("camera-video"), remote = $("remote-video");
  const track = stamped.captureStream(0).getVideoTracks()[0];
  const pc = new RTCPeerConnection({ iceServers: [] });
  const channel = pc.createDataChannel("live");
  const link = { pc, send: (text) => channel.readyState === "open" && channel.send(text), close: () => pc.close() };
  state.link = link;
  pc.addTrack(track, stream);
  const onCamera = () => {
    if (state.link !== link) return;
    drawStamped(camera);
    track.requestFrame();
    camera.requestVideoFrameCallback(onCamera);
  };
  camera.requestVideoFrameCallback(onCamera);
  channel.onopen = () => channel.send(JSON.stringify(settings()));
  channel.onmessage = (event) => {
    const stats = serverMessage(JSON.parse(event.data));
    if (stats && stats.stamp != null) state.rtcStats.set(stats.stamp, stats);
    if (state.rtcStats.size > 300) state.rtcStats.delete(state.rtcStats.keys().next().value);
  };
  const showSwapped = (source) => {  // a video element or a VideoFrame of the swapped track
    const size = frameSize(source);
    output.drawImage(source, 0, 0, size.width, size.image, 0, 0, $("live-output").width, $("live-output").height);
    const stamp = readStamp(source, size);
    const now = Math.round(performance.now()) & 0xffff;
    const stats = stamp == null ? null : state.rtcStats.get(stamp);
    if (stats) state.rtcStats.delete(stamp);
    frameShown(stamp == null ? 0 : (now - stamp) & 0xffff, stats);
  };
  pc.ontrack = async (event) => {
    if (!window.MediaStreamTrackProcessor) {  // frames as the page composites them
      const onFrame = () => { if (state.link === link) { showSwapped(remote); remote.requestVideoFrameCallback(onFrame); } };
      remote.srcObject = new MediaStream([event.track]);
      remote.requestVideoFrameCallback(onFrame);
      return;
    }
    const reader = new MediaStreamTrackProcessor({ track: event.track }).readable.getReader();  // frames as decoded
    for (;;) {
      const { value: frame, done } = await reader.read();
      if (done) break;
      if (state.link === link) showSwapped(frame);
      frame.close();
      if (state.link !== link) { reader.cancel(); break; }
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // non-trickle: the offer carries every candidate
    if (pc.iceGatheringState === "complete") { resolve(); return; }
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, 3000);
  });
  const response = await api("api/webrtc/offer", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const answer = await response.json();
  if (!response.ok) { pc.close(); throw new Error(answer.error || response.statusText); }
  await pc.setRemoteDescription(answer);
  watchCodecs(pc, link);
  const frames = state.frames;
  await new Promise((resolve, reject) => {  // connected and a swapped frame shown, or the fallback
    const timer = setTimeout(() => reject(new Error("no swapped frame within 10 s")), 10_000);
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") { clearTimeout(timer); reject(new Error("connection failed")); }
    });
    const check = () => { if (state.frames > frames) { clearTimeout(timer); resolve(); } else setTimeout(check, 50); };
    check();
  }).catch((err) => { pc.close(); if (state.link === link) state.link = null; throw err; });
  return link;
}
function watchCodecs(pc, link) {  // the browser's share of a WebRTC frame, per frame over each second
  let last = {};
  const timer = setInterval(async () => {
    if (state.link !== link) { clearInterval(timer); return; }
    const now = {};
    (await pc.getStats()).forEach((s) => {
      if (s.kind !== "video") return;
      if (s.type === "outbound-rtp") Object.assign(now, { encode: s.totalEncodeTime, encoded: s.framesEncoded });
      if (s.type === "inbound-rtp") Object.assign(now, { decode: s.totalDecodeTime, decoded: s.framesDecoded,
        buffer: s.jitterBufferDelay, emitted: s.jitterBufferEmittedCount });
    });
    const per = (total, count) => (now[count] > last[count] ? 1000 * (now[total] - last[total]) / (now[count] - last[count]) : null);
    for (const [name, total, count] of [["browser encode", "encode", "encoded"], ["browser jitter buffer", "buffer", "emitted"],
      ["browser decode", "decode", "decoded"]]) {
      const ms = per(total, count);
      if (ms != null && last[count] != null) record(name, ms);
    }
    last = now;
  }, 1000);
}

// ---- camera and stream
async function connect() {
  if (state.link) state.link.close();
  state.link = null; state.busy = false; state.frames = 0; state.samples = {}; state.started = performance.now();
  state.transport = $("transport").value;
  $("live-error").textContent = "";
  if (state.transport === "webrtc") {
    try {
      state.link = await openWebRTC(state.stream);
      return;
    } catch (err) {
      $("live-error").textContent = `WebRTC unavailable (${err.message}); using the WebSocket stream`;
      $("transport").value = state.transport = "websocket";
    }
  }
  state.link = openWebSocket();
}
function stopCamera() {
  if (state.link) state.link.close();
  state.link = null;
  state.stream.getTracks().forEach((track) => track.stop());
  state.stream = null;
  $("camera-video").srcObject = null;
  $("camera").textContent = "Start camera";
}
export async function setupLive() {  // resolves when the switches are built
  const ready = loadSchema();
  async function startCamera() {
    if (state.stream) { stopCamera(); return; }
    $("live-error").textContent = "";
    try {
      state.stream ||= await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    } catch (err) {
      $("live-error").textContent = `camera unavailable: ${err.message}`;
      return;
    }
    $("camera-video").srcObject = state.stream;
    $("camera").textContent = "Stop camera";
    await ready;
    await connect();
  }
  $("camera").addEventListener("click", startCamera);
  $("transport").addEventListener("change", () => { state.transportChosen = true; if (state.stream) connect(); });
  $("identity").addEventListener("change", sendSettings);
  await ready;
}
