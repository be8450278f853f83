// The identity texture drawn at the frame's landmarks: one WebGL textured-mesh draw over the manifest's fixed
// triangles (swap_spec.identity_warp). First the texture itself fills the target (the outside-mesh rule), then
// the mesh is drawn over it; pixel i is centred on coordinate i, as in the manifest.
const VERTEX = `attribute vec2 position; attribute vec2 texel; uniform float size; varying vec2 at;
void main() { at = texel; gl_Position = vec4((position + 0.5) / size * 2.0 - 1.0, 0.0, 1.0); }`;
// Bicubic (Keys, a = -0.75, as the manifest's "bicubic" and OpenCV) from 16 nearest-texel reads.
const FRAGMENT = `precision highp float; varying vec2 at; uniform sampler2D texture; uniform float size;
uniform bool direct; // the texture at its own pixels (outside the mesh): one read, what bicubic gives there
vec4 weights(float t) {
  float a = -0.75; float x0 = 1.0 + t; float x2 = 1.0 - t;
  float w0 = ((a * x0 - 5.0 * a) * x0 + 8.0 * a) * x0 - 4.0 * a;
  float w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
  float w2 = ((a + 2.0) * x2 - (a + 3.0)) * x2 * x2 + 1.0;
  return vec4(w0, w1, w2, 1.0 - w0 - w1 - w2);
}
void main() {
  if (direct) { gl_FragColor = texture2D(texture, (floor(at + 0.5) + 0.5) / size); return; }
  vec2 base = floor(at); vec2 t = at - base;
  vec4 wx = weights(t.x); vec4 wy = weights(t.y); vec4 sum = vec4(0.0);
  for (int j = 0; j < 4; j++) {
    vec4 row = vec4(0.0);
    for (int i = 0; i < 4; i++) {
      row += wx[i] * texture2D(texture, (base + vec2(float(i) - 0.5, float(j) - 0.5)) / size);
    }
    sum += wy[j] * row;
  }
  gl_FragColor = clamp(sum, 0.0, 1.0);
}`;

export class MeshWarp {
  constructor(textureRGB, size, landmarks, triangles) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    const gl = canvas.getContext("webgl", { preserveDrawingBuffer: true, antialias: false, premultipliedAlpha: false });
    if (!gl) throw new Error("WebGL is unavailable in this browser");
    Object.assign(this, { gl, size, triangles });
    const program = gl.createProgram();
    for (const [type, source] of [[gl.VERTEX_SHADER, VERTEX], [gl.FRAGMENT_SHADER, FRAGMENT]]) {
      const shader = gl.createShader(type);
      gl.shaderSource(shader, source);
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
      gl.attachShader(program, shader);
    }
    gl.linkProgram(program);
    gl.useProgram(program);
    gl.uniform1f(gl.getUniformLocation(program, "size"), size);
    this.direct = gl.getUniformLocation(program, "direct");
    const rgba = new Uint8Array(size * size * 4);
    for (let i = 0; i < size * size; i++) {
      rgba.set(textureRGB.subarray(3 * i, 3 * i + 3), 4 * i);
      rgba[4 * i + 3] = 255;
    }
    gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, size, size, 0, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.MIRRORED_REPEAT);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.MIRRORED_REPEAT);
    // Vertices: the mesh (positions per frame, texels fixed), then the full-target quad (texture at itself).
    const quad = [0, 0, size - 1, 0, 0, size - 1, 0, size - 1, size - 1, 0, size - 1, size - 1].map((v) =>
      v === 0 ? -0.5 : size - 0.5);
    this.meshVertices = triangles.length * 3;
    const texels = new Float32Array(this.meshVertices * 2 + 12);
    triangles.forEach((tri, t) => tri.forEach((index, k) => texels.set(landmarks[index], (3 * t + k) * 2)));
    texels.set(quad, this.meshVertices * 2);
    this.positions = new Float32Array(texels.length);
    this.positions.set(quad, this.meshVertices * 2);
    this.positionBuffer = gl.createBuffer();
    const texelBuffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, texelBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, texels, gl.STATIC_DRAW);
    const texel = gl.getAttribLocation(program, "texel");
    gl.enableVertexAttribArray(texel);
    gl.vertexAttribPointer(texel, 2, gl.FLOAT, false, 0, 0);
    const position = gl.getAttribLocation(program, "position");
    gl.bindBuffer(gl.ARRAY_BUFFER, this.positionBuffer);
    gl.enableVertexAttribArray(position);
    gl.vertexAttribPointer(position, 2, gl.FLOAT, false, 0, 0);
    gl.viewport(0, 0, size, size);
    this.pixels = new Uint8Array(size * size * 4);
  }

  // The S x S x 3 warped texture (Uint8Array RGB, rows top to bottom) for landmarks [x0, y0, x1, y1, ...].
  draw(points) {
    const gl = this.gl, size = this.size;
    this.triangles.forEach((tri, t) => tri.forEach((index, k) => {
      this.positions[(3 * t + k) * 2] = points[2 * index];
      this.positions[(3 * t + k) * 2 + 1] = points[2 * index + 1];
    }));
    gl.bindBuffer(gl.ARRAY_BUFFER, this.positionBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, this.positions, gl.DYNAMIC_DRAW);
    gl.uniform1i(this.direct, 1);
    gl.drawArrays(gl.TRIANGLES, this.meshVertices, 6); // the texture where no triangle is
    gl.uniform1i(this.direct, 0);
    gl.drawArrays(gl.TRIANGLES, 0, this.meshVertices);
    gl.readPixels(0, 0, size, size, gl.RGBA, gl.UNSIGNED_BYTE, this.pixels);
    // GL's rows run bottom-up in window space, but positions were given with y down: row y is at y.
    const rgb = new Uint8Array(size * size * 3);
    for (let i = 0; i < size * size; i++) rgb.set(this.pixels.subarray(4 * i, 4 * i + 3), 3 * i);
    return rgb;
  }
}
