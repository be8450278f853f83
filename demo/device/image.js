// Pixels on the device: affine resampling (OpenCV's conventions: pixel i is centred on i), CIELAB.
// Images are {data, width, height, channels}; data is a Uint8ClampedArray or Float32Array. Camera frames are the
// canvas's RGBA ImageData (channels 4), swapped in place.

export function image(width, height, channels = 3, Type = Uint8ClampedArray) {
  return { data: new Type(width * height * channels), width, height, channels };
}

// Border rules: index -> index inside [0, n), or -1 for a constant (zero) border.
const BORDERS = {
  replicate: (i, n) => (i < 0 ? 0 : i >= n ? n - 1 : i),
  reflect: (i, n) => { // fedcba|abcdef
    if (n === 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i - 1 : 2 * n - i - 1;
    return i;
  },
  reflect101: (i, n) => { // gfedcb|abcdefgh
    if (n === 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - i - 2;
    return i;
  },
  constant: (i, n) => (i < 0 || i >= n ? -1 : i),
};

function cubicWeights(t, w) { // Keys, a = -0.75 (OpenCV)
  const a = -0.75;
  const x0 = 1 + t, x2 = 1 - t;
  w[0] = ((a * x0 - 5 * a) * x0 + 8 * a) * x0 - 4 * a;
  w[1] = ((a + 2) * t - (a + 3)) * t * t + 1;
  w[2] = ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1;
  w[3] = 1 - w[0] - w[1] - w[2];
}

// out(x, y) = src(inverse · (x, y, 1)); inverse is [a, b, c, d, e, f] (dst -> src). Writes into `out` (its
// channels: the source's first ones; an RGBA frame gives RGB) over the rectangle [x0, x1) x [y0, y1) (default:
// all of it). interpolation: "linear" | "cubic". Per-frame hot path: the taps' loops are written out.
export function warpAffine(src, inverse, out, interpolation = "linear", border = "replicate", rect = null) {
  const [a, b, c, d, e, f] = inverse;
  const { width: sw, height: sh, channels: stride, data: s } = src;
  const o = out.data, ch = out.channels, fold = BORDERS[border];
  const cubic = interpolation === "cubic", taps = cubic ? 4 : 2, back = cubic ? 1 : 0;
  const wx = new Float64Array(4), wy = new Float64Array(4), xi = new Int32Array(4), yi = new Int32Array(4);
  const [x0, y0, x1, y1] = rect || [0, 0, out.width, out.height];
  for (let y = y0; y < y1; y++)
    for (let x = x0; x < x1; x++) {
      const u = a * x + b * y + c, v = d * x + e * y + f;
      const iu = Math.floor(u), iv = Math.floor(v), tu = u - iu, tv = v - iv;
      const left = iu - back, top = iv - back;
      const inside = left >= 0 && top >= 0 && left + taps <= sw && top + taps <= sh;
      const q = (y * out.width + x) * ch;
      if (inside && !cubic) { // the common case, written out
        const p = (top * sw + left) * stride, r = p + sw * stride;
        const w00 = (1 - tu) * (1 - tv), w01 = tu * (1 - tv), w10 = (1 - tu) * tv, w11 = tu * tv;
        for (let k = 0; k < ch; k++) o[q + k] = w00 * s[p + k] + w01 * s[p + stride + k] + w10 * s[r + k] + w11 * s[r + stride + k];
        continue;
      }
      if (cubic) { cubicWeights(tu, wx); cubicWeights(tv, wy); } else { wx[0] = 1 - tu; wx[1] = tu; wy[0] = 1 - tv; wy[1] = tv; }
      if (inside) {
        const row = sw * stride;
        for (let k = 0; k < ch; k++) {
          let acc = 0;
          for (let j = 0, p = (top * sw + left) * stride + k; j < 4; j++, p += row)
            acc += wy[j] * (wx[0] * s[p] + wx[1] * s[p + stride] + wx[2] * s[p + 2 * stride] + wx[3] * s[p + 3 * stride]);
          o[q + k] = acc;
        }
        continue;
      }
      for (let k = 0; k < taps; k++) { // near the border: fold the taps (negative: outside a constant border)
        xi[k] = fold(left + k, sw);
        yi[k] = fold(top + k, sh) * sw;
      }
      for (let k = 0; k < ch; k++) {
        let acc = 0;
        for (let j = 0; j < taps; j++) {
          if (yi[j] < 0) continue;
          let line = 0;
          for (let i = 0; i < taps; i++) if (xi[i] >= 0) line += wx[i] * s[(yi[j] + xi[i]) * stride + k];
          acc += wy[j] * line;
        }
        o[q + k] = acc;
      }
    }
  return out;
}

export function invertAffine([a, b, c, d, e, f]) {
  const det = a * e - b * d;
  const ia = e / det, ib = -b / det, id = -d / det, ie = a / det;
  return [ia, ib, -(ia * c + ib * f), id, ie, -(id * c + ie * f)];
}

// CIELAB as OpenCV scales it for 8-bit images (L * 255 / 100, a + 128, b + 128), sRGB D65.
const WHITE = [0.950456, 1.0, 1.088754];
const toLinear = new Float64Array(256).map((_, i) => {
  const v = i / 255;
  return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
});
const LAB_STEPS = 8192; // f(t) of CIELAB on [0, 1.1], tabulated and interpolated (within 1e-6)
const labTable = new Float64Array(LAB_STEPS + 2).map((_, i) => {
  const t = (i * 1.1) / LAB_STEPS;
  return t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116;
});
const labF = (t) => {
  if (t < 0.008856) return 7.787 * t + 16 / 116;
  const at = (Math.min(t, 1.1) * LAB_STEPS) / 1.1, i = Math.floor(at);
  return labTable[i] + (at - i) * (labTable[i + 1] - labTable[i]);
};

// `pick` (optional, one byte per pixel): convert only the pixels where it is set (the others stay 0).
export function rgbToLab(img, pick = null) {
  const out = image(img.width, img.height, 3, Float32Array);
  const s = img.data, o = out.data;
  for (let i = 0; i < s.length; i += 3) {
    if (pick && !pick[i / 3]) continue;
    const r = toLinear[s[i]], g = toLinear[s[i + 1]], b = toLinear[s[i + 2]];
    const x = (0.412453 * r + 0.35758 * g + 0.180423 * b) / WHITE[0];
    const y = 0.212671 * r + 0.71516 * g + 0.072169 * b;
    const z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / WHITE[2];
    const fx = labF(x), fy = labF(y), fz = labF(z);
    const L = y > 0.008856 ? 116 * fy - 16 : 903.3 * y;
    o[i] = Math.round((L * 255) / 100); o[i + 1] = Math.round(500 * (fx - fy) + 128); o[i + 2] = Math.round(200 * (fy - fz) + 128);
  }
  return out;
}

const GAMMA_STEPS = 65536; // linear -> sRGB * 255, tabulated (within 0.01 of the formula)
const toSrgb = new Float64Array(GAMMA_STEPS + 1).map((_, i) => {
  const v = i / GAMMA_STEPS;
  return 255 * (v <= 0.0031308 ? 12.92 * v : 1.055 * Math.pow(v, 1 / 2.4) - 0.055);
});

export function labToRgb(lab, out, pick = null) {
  const s = lab.data, o = out.data;
  const gamma = (v) => toSrgb[Math.round(Math.min(v, 1) * GAMMA_STEPS)] / 255;
  for (let i = 0; i < s.length; i += 3) {
    if (pick && !pick[i / 3]) continue;
    const L = Math.min(Math.max(s[i], 0), 255) * (100 / 255);
    const A = Math.min(Math.max(s[i + 1], 0), 255) - 128, B = Math.min(Math.max(s[i + 2], 0), 255) - 128;
    const fy = (L + 16) / 116, fx = fy + A / 500, fz = fy - B / 200;
    const inv = (t) => (t > 0.206893 ? t * t * t : (t - 16 / 116) / 7.787);
    const x = inv(fx) * WHITE[0], y = L > 7.9996 ? fy * fy * fy : L / 903.3, z = inv(fz) * WHITE[2];
    const r = 3.240479 * x - 1.53715 * y - 0.498535 * z;
    const g = -0.969256 * x + 1.875991 * y + 0.041556 * z;
    const b = 0.055648 * x - 0.204043 * y + 1.057311 * z;
    o[i] = gamma(Math.max(r, 0)) * 255; o[i + 1] = gamma(Math.max(g, 0)) * 255; o[i + 2] = gamma(Math.max(b, 0)) * 255;
  }
  return out;
}
