// One face swapped on the device per the manifest's swap_spec: crop -> (identity warp) -> student (ONNX Runtime
// Web) -> paste back (edge ramp, CIELAB colour transfer, fine detail, blend). Port of examples/client.py.
import { image, invertAffine, labToRgb, rgbToLab, warpAffine } from "./image.js";
import { MeshWarp } from "./meshgl.js";

export function similarity(src, dst) { // least squares, no reflection: [a, -b, tx, b, a, ty]
  const n = src.length;
  let sx = 0, sy = 0, dx = 0, dy = 0;
  for (let i = 0; i < n; i++) { sx += src[i][0]; sy += src[i][1]; dx += dst[i][0]; dy += dst[i][1]; }
  sx /= n; sy /= n; dx /= n; dy /= n;
  let norm = 0, a = 0, b = 0;
  for (let i = 0; i < n; i++) {
    const px = src[i][0] - sx, py = src[i][1] - sy, qx = dst[i][0] - dx, qy = dst[i][1] - dy;
    norm += px * px + py * py; a += px * qx + py * qy; b += px * qy - py * qx;
  }
  a /= norm; b /= norm;
  return [a, -b, dx - (a * sx - b * sy), b, a, dy - (b * sx + a * sy)];
}

const apply = (m, [x, y]) => [m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]];

function polygonDistance([px, py], polygon) { // signed: positive inside (cv2.pointPolygonTest)
  let nearest = Infinity, inside = false;
  for (let e = 0; e < polygon.length; e++) {
    const [ax, ay] = polygon[e], [bx, by] = polygon[(e + 1) % polygon.length];
    const ex = bx - ax, ey = by - ay;
    const t = Math.min(Math.max(((px - ax) * ex + (py - ay) * ey) / Math.max(ex * ex + ey * ey, 1e-12), 0), 1);
    nearest = Math.min(nearest, Math.hypot(px - ax - t * ex, py - ay - t * ey));
    if ((ay > py) !== (by > py) && px < ax + ((py - ay) * ex) / ey) inside = !inside;
  }
  return inside ? nearest : -nearest;
}

function convexHullIndices(points) { // Andrew's monotone chain
  const order = points.map((_, i) => i).sort((i, j) => points[i][0] - points[j][0] || points[i][1] - points[j][1]);
  const cross = (o, a, b) => (points[a][0] - points[o][0]) * (points[b][1] - points[o][1]) -
    (points[a][1] - points[o][1]) * (points[b][0] - points[o][0]);
  const half = (list) => {
    const out = [];
    for (const i of list) {
      while (out.length >= 2 && cross(out[out.length - 2], out[out.length - 1], i) <= 0) out.pop();
      out.push(i);
    }
    out.pop();
    return out;
  };
  return [...half(order), ...half(order.slice().reverse())];
}

// The frame's landmarks moved `amount` of the way to the texture's face shape (swap_spec.identity_warp.shape_transfer).
export function transferShape(texturePoints, framePoints, amount, spec) {
  if (!amount) return framePoints;
  const fit = similarity(texturePoints, framePoints);
  const target = texturePoints.map((p) => apply(fit, p));
  for (const piece of spec.rigid_pieces) {
    const polygon = piece.contour.map((i) => framePoints[i]);
    const [a, b] = piece.corners;
    const reach = piece.grow * Math.hypot(framePoints[a][0] - framePoints[b][0], framePoints[a][1] - framePoints[b][1]);
    const moves = piece.moves !== false; // a piece that does not move keeps the frame's place
    const move = similarity([framePoints[a], framePoints[b]], [target[a], target[b]]);
    framePoints.forEach((p, i) => { if (polygonDistance(p, polygon) >= -reach) target[i] = moves ? apply(move, p) : p; });
  }
  const fixed = new Set(convexHullIndices(framePoints));
  return framePoints.map((p, i) => (fixed.has(i) ? p : [p[0] + amount * (target[i][0] - p[0]), p[1] + amount * (target[i][1] - p[1])]));
}

export class Swapper {
  static async create(ort, modelBytes, manifest) {
    const swapper = new Swapper();
    swapper.manifest = manifest;
    swapper.spec = manifest.swap_spec;
    swapper.size = swapper.spec.crop.size;
    swapper.inputs = Object.fromEntries(manifest.inputs.map((t) => [t.name, t]));
    const providers = navigator.gpu ? ["webgpu", "wasm"] : ["wasm"];
    try {
      swapper.session = await ort.InferenceSession.create(modelBytes, { executionProviders: providers });
    } catch (error) {
      swapper.session = await ort.InferenceSession.create(modelBytes, { executionProviders: ["wasm"] });
    }
    swapper.ort = ort;
    const texture = manifest.identity_texture;
    if (swapper.inputs.identity_warped) {
      if (!texture) throw new Error("the model reads identity_warped but its manifest has no identity_texture");
      const png = await createImageBitmap(await (await fetch(`data:image/png;base64,${texture.png_base64}`)).blob());
      const canvas = new OffscreenCanvas(texture.size, texture.size);
      const context = canvas.getContext("2d");
      context.drawImage(png, 0, 0);
      const rgba = context.getImageData(0, 0, texture.size, texture.size).data;
      const rgb = new Uint8Array(texture.size * texture.size * 3);
      for (let i = 0; i < texture.size * texture.size; i++) rgb.set(rgba.subarray(4 * i, 4 * i + 3), 3 * i);
      swapper.texture = texture;
      swapper.mesh = new MeshWarp(rgb, texture.size, texture.landmarks, texture.triangles);
    }
    return swapper;
  }

  tensor(name, pixels) {
    const { scale, offset } = this.spec.normalization, s = this.size, n = s * s;
    const data = new Float32Array(3 * n), nchw = this.inputs[name].layout === "NCHW";
    for (let i = 0; i < n; i++)
      for (let k = 0; k < 3; k++) data[nchw ? k * n + i : 3 * i + k] = pixels[3 * i + k] * scale + offset;
    return new this.ort.Tensor("float32", data, nchw ? [1, 3, s, s] : [1, s, s, 3]);
  }

  // Swaps the face at `landmarks` (468 x 3 flat, frame pixels) in `frame` (RGB or RGBA), in place; timings in ms.
  async swap(frame, landmarks, timings) {
    const spec = this.spec, size = this.size, t0 = performance.now();
    const points = [];
    for (let i = 0; i < 468; i++) points.push([landmarks[3 * i], landmarks[3 * i + 1]]);
    const keypoints = spec.crop.keypoints.map((group) => {
      let x = 0, y = 0;
      for (const i of group) { x += points[i][0]; y += points[i][1]; }
      return [x / group.length, y / group.length];
    });
    const matrix = similarity(keypoints, spec.crop.template_points), inverse = invertAffine(matrix);
    const crop = warpAffine(frame, inverse, image(size, size, 3), "cubic", "reflect");
    const feeds = { image: this.tensor("image", crop.data) };
    const inCrop = points.map((p) => apply(matrix, p));
    if (this.mesh) {
      const moved = transferShape(this.texture.landmarks, inCrop, this.texture.shape || 0, spec.identity_warp.shape_transfer);
      feeds.identity_warped = this.tensor("identity_warped", this.mesh.draw(moved.flat()));
    }
    const t1 = performance.now();
    const results = await this.session.run(feeds);
    const t2 = performance.now();
    const swapped = this.pixels(results.swapped), mask = results.mask.data;
    this.paste(frame, swapped, mask, matrix, inverse, inCrop);
    Object.assign(timings, { align: t1 - t0, swap: t2 - t1, paste: performance.now() - t2 });
  }

  pixels(tensor) {
    const { scale, offset } = this.spec.normalization, s = this.size, n = s * s, data = tensor.data;
    const nchw = tensor.dims[1] === 3, out = image(s, s, 3);
    for (let i = 0; i < n; i++)
      for (let k = 0; k < 3; k++) out.data[3 * i + k] = (data[nchw ? k * n + i : 3 * i + k] - offset) / scale;
    return out;
  }

  paste(frame, swapped, mask, matrix, inverse, inCrop) {
    const paste = this.spec.paste, size = this.size;
    const width = Math.max(paste.edge_ramp * size, 1);
    const ramp = Float32Array.from({ length: size }, (_, i) => Math.min(1, (i + 0.5) / width, (size - 0.5 - i) / width));
    const alpha = image(size, size, 1, Float32Array);
    for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) alpha.data[y * size + x] = mask[y * size + x] * Math.min(ramp[x], ramp[y]);
    if (paste.frame_kept) keepFrame(alpha, inCrop, paste.frame_kept); // the frame's mouth opening stays the frame's
    const colour = paste.colour_transfer;
    const inRegion = new Uint8Array(size * size), near = new Uint8Array(size * size);
    let region = 0;
    for (let i = 0; i < size * size; i++) region += inRegion[i] = alpha.data[i] > colour.region_above;
    if (region >= colour.min_pixels) { // CIELAB mean/std of the swap matched to the frame's
      // only the pixels the paste reads: alpha > 0 and the bicubic taps' reach (2 px) around them
      const rows = new Uint8Array(size * size); // alpha > 0 grown by 2 px: along rows, then along columns
      for (let y = 0; y < size; y++)
        for (let x = 0, last = -9; x < size + 2; x++) {
          if (x < size && alpha.data[y * size + x] > 0) last = x;
          if (x - 2 >= 0 && x - 2 < size && (last >= x - 4)) rows[y * size + x - 2] = 1;
        }
      for (let x = 0; x < size; x++)
        for (let y = 0, last = -9; y < size + 2; y++) {
          if (y < size && rows[y * size + x]) last = y;
          if (y - 2 >= 0 && last >= y - 4) near[(y - 2) * size + x] = 1;
        }
      const target = rgbToLab(warpAffine(frame, inverse, image(size, size, 3), "linear", "constant"), inRegion);
      const source = rgbToLab(swapped, near);
      const stats = (lab) => [0, 1, 2].map((k) => {
        let sum = 0, sq = 0;
        for (let i = 0; i < size * size; i++) if (inRegion[i]) { sum += lab.data[3 * i + k]; sq += lab.data[3 * i + k] ** 2; }
        const mean = sum / region;
        return [mean, Math.sqrt(Math.max(sq / region - mean * mean, 0))];
      });
      const s = stats(source), t = stats(target);
      const gain = [0, 1, 2].map((k) => (t[k][1] + colour.eps) / (s[k][1] + colour.eps));
      for (let i = 0; i < size * size; i++)
        if (near[i]) for (let k = 0; k < 3; k++) source.data[3 * i + k] = Math.round((source.data[3 * i + k] - s[k][0]) * gain[k] + t[k][0]);
      labToRgb(source, swapped, near);
    }
    // Back to the frame over the crop's bounding box: bicubic (low-passed when it shrinks), fine detail, blend.
    const scale = Math.sqrt(Math.abs(inverse[0] * inverse[4] - inverse[1] * inverse[3]));
    const corners = [[-1, -1], [size, -1], [-1, size], [size, size]].map((p) => apply(inverse, p));
    const x0 = Math.max(0, Math.floor(Math.min(...corners.map((p) => p[0])))), x1 = Math.min(frame.width, Math.ceil(Math.max(...corners.map((p) => p[0]))) + 1);
    const y0 = Math.max(0, Math.floor(Math.min(...corners.map((p) => p[1])))), y1 = Math.min(frame.height, Math.ceil(Math.max(...corners.map((p) => p[1]))) + 1);
    const source = scale < 1 ? blur(swapped, 0.5 * Math.sqrt(1 / scale ** 2 - 1)) : swapped;
    let seen = null;
    if (scale > 1) { // the frame's luminance detail finer than the crop: grey - grey taken to the crop and back
      const gx0 = Math.max(0, x0 - 2), gy0 = Math.max(0, y0 - 2); // BT.601 grey of the footprint (+ the taps)
      const grey = image(Math.min(frame.width, x1 + 2) - gx0, Math.min(frame.height, y1 + 2) - gy0, 1);
      for (let y = 0; y < grey.height; y++)
        for (let x = 0; x < grey.width; x++) {
          const p = frame.channels * ((y + gy0) * frame.width + x + gx0);
          grey.data[y * grey.width + x] = 0.299 * frame.data[p] + 0.587 * frame.data[p + 1] + 0.114 * frame.data[p + 2];
        }
      const local = [inverse[0], inverse[1], inverse[2] - gx0, inverse[3], inverse[4], inverse[5] - gy0];
      seen = { grey, origin: [gx0, gy0], crop: warpAffine(grey, local, image(size, size, 1), "cubic", "replicate").data };
    }
    blendBack(frame, source.data, alpha.data, seen, size, matrix, [x0, y0, x1, y1]);
  }
}

// alpha *= 1 - kept over the contour's bounding box: kept ramps with the signed distance to the contour (spec.paste.frame_kept).
function keepFrame(alpha, inCrop, kept) {
  const size = alpha.width, polygon = kept.contour.map((i) => inCrop[i]);
  const [a, b] = kept.corners.map((i) => inCrop[i]);
  const width = Math.max(Math.hypot(a[0] - b[0], a[1] - b[1]), 1);
  const grow = kept.grow * width, feather = Math.max(kept.feather * width, 1), reach = grow + feather;
  const xs = polygon.map((p) => p[0]), ys = polygon.map((p) => p[1]);
  const x0 = Math.max(0, Math.floor(Math.min(...xs) - reach)), x1 = Math.min(size, Math.ceil(Math.max(...xs) + reach));
  const y0 = Math.max(0, Math.floor(Math.min(...ys) - reach)), y1 = Math.min(size, Math.ceil(Math.max(...ys) + reach));
  for (let y = y0; y < y1; y++)
    for (let x = x0; x < x1; x++) {
      const weight = Math.min(Math.max(0.5 + (polygonDistance([x, y], polygon) + grow) / feather, 0), 1);
      alpha.data[y * size + x] *= 1 - weight;
    }
}

const KEYS = -0.75; // bicubic (Keys) weights of the 4 taps around fraction t, into w[0..3]
function keys(t, w) {
  const x0 = 1 + t, x2 = 1 - t;
  w[0] = ((KEYS * x0 - 5 * KEYS) * x0 + 8 * KEYS) * x0 - 4 * KEYS;
  w[1] = ((KEYS + 2) * t - (KEYS + 3)) * t * t + 1;
  w[2] = ((KEYS + 2) * x2 - (KEYS + 3)) * x2 * x2 + 1;
  w[3] = 1 - w[0] - w[1] - w[2];
}

// The paste's per-pixel loop over the crop's footprint: weight = alpha (bilinear, zero outside the crop),
// colour = the crop (bicubic, replicated border) + the fine detail, blended over the frame. Hot: inlined.
function blendBack(frame, crop, alpha, seen, size, [m0, m1, m2, m3, m4, m5], [x0, y0, x1, y1]) {
  const wx = new Float64Array(4), wy = new Float64Array(4), xs = new Int32Array(4), ys = new Int32Array(4);
  const f = frame.data, stride = frame.channels, last = size - 1;
  const at = (x, y) => (x < 0 || y < 0 || x > last || y > last ? 0 : alpha[y * size + x]);
  for (let y = y0; y < y1; y++)
    for (let x = x0; x < x1; x++) {
      const u = m0 * x + m1 * y + m2, v = m3 * x + m4 * y + m5;
      const iu = Math.floor(u), iv = Math.floor(v);
      if (iu < -1 || iv < -1 || iu > last || iv > last) continue;
      const tu = u - iu, tv = v - iv;
      const w = (1 - tv) * ((1 - tu) * at(iu, iv) + tu * at(iu + 1, iv)) + tv * ((1 - tu) * at(iu, iv + 1) + tu * at(iu + 1, iv + 1));
      if (w <= 0) continue;
      keys(tu, wx); keys(tv, wy);
      for (let k = 0; k < 4; k++) {
        xs[k] = Math.min(Math.max(iu - 1 + k, 0), last);
        ys[k] = Math.min(Math.max(iv - 1 + k, 0), last) * size;
      }
      let r = 0, g = 0, b = 0, s = 0;
      for (let j = 0; j < 4; j++) {
        let rr = 0, gg = 0, bb = 0, ss = 0;
        for (let i = 0; i < 4; i++) {
          const p = ys[j] + xs[i], q = 3 * p, c = wx[i];
          rr += c * crop[q]; gg += c * crop[q + 1]; bb += c * crop[q + 2];
          if (seen) ss += c * seen.crop[p];
        }
        r += wy[j] * rr; g += wy[j] * gg; b += wy[j] * bb; s += wy[j] * ss;
      }
      const i = y * frame.width + x;
      const add = seen ? seen.grey.data[(y - seen.origin[1]) * seen.grey.width + x - seen.origin[0]] - Math.min(Math.max(Math.round(s), 0), 255) : 0;
      const channel = (value, k) => Math.min(Math.max(Math.min(Math.max(Math.round(value), 0), 255) + add, 0), 255) * w + f[stride * i + k] * (1 - w);
      f[stride * i] = channel(r, 0); f[stride * i + 1] = channel(g, 1); f[stride * i + 2] = channel(b, 2);
    }
}

function blur(img, sigma) { // separable Gaussian, OpenCV's kernel size for 8-bit images, reflect101 border
  const radius = Math.max(1, Math.round(sigma * 3)), kernel = [];
  let total = 0;
  for (let i = -radius; i <= radius; i++) { const v = Math.exp(-(i * i) / (2 * sigma * sigma)); kernel.push(v); total += v; }
  const k = kernel.map((v) => v / total), { width: w, height: h } = img;
  const fold = (i, n) => { while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - i - 2; return i; };
  const tmp = new Float32Array(w * h * 3), out = image(w, h, 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) {
    let s = 0;
    for (let j = -radius; j <= radius; j++) s += k[j + radius] * img.data[3 * (y * w + fold(x + j, w)) + c];
    tmp[3 * (y * w + x) + c] = s;
  }
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) {
    let s = 0;
    for (let j = -radius; j <= radius; j++) s += k[j + radius] * tmp[3 * (fold(y + j, h) * w + x) + c];
    out.data[3 * (y * w + x) + c] = s;
  }
  return out;
}
