// The 468 landmarks on the device, per the manifest's swap_spec.front_end (BlazeFace -> FaceMesh, LiteRT.js),
// and swap_spec.video (detect every N frames, track in between, One-Euro smoothing).
import { loadAndCompile, Tensor } from "@litertjs/core";
import { image, warpAffine } from "./image.js";

async function compile(url) {
  return loadAndCompile(url, { accelerator: "wasm" });
}

async function run(model, data, shape) {
  const input = new Tensor(data, shape);
  const outputs = await model.run(input);
  input.delete();
  const arrays = outputs.map((t) => t.toTypedArray().slice());
  outputs.forEach((t) => t.delete());
  return arrays;
}

function anchorsOf(spec) {
  const { strides, anchor_offset: offset, aspect_ratios: ratios, interpolated_scale_aspect_ratio: extra } = spec.anchors;
  const centres = [];
  for (let layer = 0; layer < strides.length;) {
    let last = layer;
    while (last < strides.length && strides[last] === strides[layer]) last++;
    const perCell = (last - layer) * (ratios.length + (extra > 0 ? 1 : 0));
    const side = Math.ceil(spec.input_size / strides[layer]);
    for (let row = 0; row < side; row++)
      for (let col = 0; col < side; col++)
        for (let k = 0; k < perCell; k++) centres.push([(col + offset) / side, (row + offset) / side]);
    layer = last;
  }
  return centres;
}

class Detector {
  static async create(spec, modelsUrl) {
    const detector = new Detector();
    detector.spec = spec;
    detector.model = await compile(modelsUrl + spec.model);
    detector.anchors = anchorsOf(spec);
    return detector;
  }

  async detect(frame) {
    const size = this.spec.input_size, { width: w, height: h } = frame;
    const scale = size / Math.max(w, h);
    const newW = Math.max(1, Math.round(w * scale)), newH = Math.max(1, Math.round(h * scale));
    const padX = Math.floor((size - newW) / 2), padY = Math.floor((size - newH) / 2);
    const canvas = image(size, size, 3); // zeros around the letterboxed image (cv2.resize, bilinear)
    const sx = w / newW, sy = h / newH;
    warpAffine(frame, [sx, 0, (0.5 - padX) * sx - 0.5, 0, sy, (0.5 - padY) * sy - 0.5], canvas, "linear", "replicate",
      [padX, padY, padX + newW, padY + newH]);
    const tensor = new Float32Array(size * size * 3);
    for (let i = 0; i < tensor.length; i++) tensor[i] = canvas.data[i] * (2 / 255) - 1;
    const outputs = await run(this.model, tensor, [1, size, size, 3]);
    const n = this.anchors.length;
    const raw = outputs.find((o) => o.length === 16 * n), logits = outputs.find((o) => o.length === n);
    const clip = this.spec.outputs.score_clipping;
    const found = [];
    for (let i = 0; i < n; i++) {
      const score = 1 / (1 + Math.exp(-Math.min(Math.max(logits[i], -clip), clip)));
      if (score < this.spec.min_score) continue;
      const [ax, ay] = this.anchors[i], r = raw.subarray(16 * i, 16 * i + 16);
      const cx = r[0] / size + ax, cy = r[1] / size + ay, hw = r[2] / size / 2, hh = r[3] / size / 2;
      const points = [];
      for (let k = 0; k < 6; k++) points.push([r[4 + 2 * k] / size + ax, r[5 + 2 * k] / size + ay]);
      found.push({ box: [cx - hw, cy - hh, cx + hw, cy + hh], score, points });
    }
    const toImage = ([x, y]) => [(x * size - padX) * sx - 0.5, (y * size - padY) * sy - 0.5];
    return weightedNms(found, this.spec.nms.iou).map((d) => ({
      box: [...toImage(d.box.slice(0, 2)), ...toImage(d.box.slice(2))], score: d.score, points: d.points.map(toImage),
    }));
  }
}

const area = (b) => Math.max(0, b[2] - b[0]) * Math.max(0, b[3] - b[1]);

function weightedNms(found, iou) {
  let remaining = found.slice().sort((p, q) => q.score - p.score);
  const out = [];
  while (remaining.length) {
    const best = remaining[0];
    const members = remaining.map((d, i) => {
      const w = Math.min(d.box[2], best.box[2]) - Math.max(d.box[0], best.box[0]);
      const h = Math.min(d.box[3], best.box[3]) - Math.max(d.box[1], best.box[1]);
      const inter = Math.max(0, w) * Math.max(0, h);
      return i === 0 || inter > iou * Math.max(area(best.box) + area(d.box) - inter, 1e-12);
    });
    const cluster = remaining.filter((_, i) => members[i]);
    const total = cluster.reduce((s, d) => s + d.score, 0);
    const box = [0, 0, 0, 0], points = best.points.map(() => [0, 0]);
    for (const d of cluster) {
      const w = d.score / total;
      d.box.forEach((v, k) => (box[k] += w * v));
      d.points.forEach((p, k) => { points[k][0] += w * p[0]; points[k][1] += w * p[1]; });
    }
    out.push({ box, score: best.score, points });
    remaining = remaining.filter((_, i) => !members[i]);
  }
  return out;
}

export class FrontEnd {
  static async create(spec, videoSpec, modelsUrl) {
    const front = new FrontEnd();
    front.spec = spec;
    front.video = videoSpec;
    front.detectors = [];
    for (const d of spec.detectors) front.detectors.push(await Detector.create(d, modelsUrl));
    front.mesh = await compile(modelsUrl + spec.landmarks.model);
    front.frame = 0;
    front.landmarks = null;
    front.filter = null;
    return front;
  }

  async runMesh(frame, box, start, end) {
    const m = this.spec.landmarks, size = m.input_size;
    const cx = (box[0] + box[2]) / 2, cy = (box[1] + box[3]) / 2;
    const side = Math.max(box[2] - box[0], box[3] - box[1]) * m.roi.roi_scale;
    let angle = Math.atan2(end[1] - start[1], end[0] - start[0]);
    angle -= 2 * Math.PI * Math.floor((angle + Math.PI) / (2 * Math.PI));
    const c = Math.cos(angle), s = Math.sin(angle), k = side / size;
    // input pixel q -> image: R(angle) (q - (size - 1) / 2) * side / size + centre
    const h = (size - 1) / 2;
    const inverse = [c * k, -s * k, cx - (c * h - s * h) * k, s * k, c * k, cy - (s * h + c * h) * k];
    const crop = warpAffine(frame, inverse, image(size, size, 3), "linear", "replicate");
    const tensor = new Float32Array(size * size * 3);
    for (let i = 0; i < tensor.length; i++) tensor[i] = crop.data[i] * (1 / 255);
    const outputs = await run(this.mesh, tensor, [1, size, size, 3]);
    const raw = outputs.find((o) => o.length === 1404), logit = outputs.find((o) => o.length === 1)[0];
    if (1 / (1 + Math.exp(-Math.min(Math.max(logit, -80), 80))) < m.min_presence) return null;
    const points = new Float64Array(468 * 3), half = size / 2;
    for (let i = 0; i < 468; i++) {
      const qx = raw[3 * i] - half, qy = raw[3 * i + 1] - half;
      points[3 * i] = (c * qx - s * qy) * k + cx;
      points[3 * i + 1] = (s * qx + c * qy) * k + cy;
      points[3 * i + 2] = raw[3 * i + 2] * k;
    }
    return points;
  }

  async detect(frame) {
    const margin = this.spec.main_face.score_margin;
    for (const detector of this.detectors) {
      const found = await detector.detect(frame);
      if (!found.length) continue;
      const best = Math.max(...found.map((d) => d.score));
      found.sort((p, q) => (p.score < best - margin) - (q.score < best - margin) || area(q.box) - area(p.box));
      for (const d of found) {
        const points = await this.runMesh(frame, d.box, d.points[0], d.points[1]);
        if (points) return points;
      }
    }
    return null;
  }

  async track(frame, previous) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let i = 0; i < 468; i++) {
      x0 = Math.min(x0, previous[3 * i]); x1 = Math.max(x1, previous[3 * i]);
      y0 = Math.min(y0, previous[3 * i + 1]); y1 = Math.max(y1, previous[3 * i + 1]);
    }
    const [a, b] = this.spec.landmarks.roi.tracking_eye_line;
    const start = [previous[3 * a], previous[3 * a + 1]], end = [previous[3 * b], previous[3 * b + 1]];
    return this.runMesh(frame, [x0, y0, x1, y1], start, end);
  }

  // The main face's landmarks (468 x (x, y, z), frame pixels) for one video frame at `seconds`, smoothed.
  async locate(frame, seconds) {
    const due = this.frame % Math.max(1, this.video.detect_every) === 0;
    let points = !due && this.landmarks ? await this.track(frame, this.landmarks) : null;
    if (!points) points = await this.detect(frame);
    this.frame++;
    this.landmarks = points;
    if (!points) {
      this.filter = null; // the face is gone: the next one starts a new filter
      return null;
    }
    this.filter = this.filter || new OneEuro(this.video.one_euro);
    return this.filter.apply(points, seconds);
  }
}

export class OneEuro {
  constructor({ min_cutoff_hz: minCutoff, beta, derivative_cutoff_hz: dCutoff }) {
    Object.assign(this, { minCutoff, beta, dCutoff, x: null, dx: null, t: null });
  }

  apply(x, t) {
    if (this.x === null || t <= this.t) {
      this.x = Float64Array.from(x); this.dx = new Float64Array(x.length); this.t = t;
      return Float64Array.from(x);
    }
    const dt = t - this.t, alpha = (cutoff) => 1 / (1 + 1 / (2 * Math.PI * cutoff * dt));
    const ad = alpha(this.dCutoff);
    const out = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const dx = ad * ((x[i] - this.x[i]) / dt) + (1 - ad) * this.dx[i];
      const a = alpha(this.minCutoff + this.beta * Math.abs(dx));
      out[i] = a * x[i] + (1 - a) * this.x[i];
      this.dx[i] = dx;
    }
    this.x = out; this.t = t;
    return Float64Array.from(out);
  }
}
