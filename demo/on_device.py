"""The app's device mode (``/device``): a page that runs the whole swap in the browser from the served model's
ONNX export and its manifest (``swap_spec``): LiteRT.js finds the landmarks with the same face models the
project uses, ONNX Runtime Web runs the student, WebGL draws the identity texture. Frames never leave the device.

The JavaScript runtimes come from npm at set-up (``demo/device/package.json``, pinned, installed by ``make``
into ``demo/device/node_modules``); nothing of them is committed. What is served without the app's token is
public code and public model files only; the model and its manifest need the token like every ``/api`` path.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from pocketswap.demo.model_info import artifact_choices

log = logging.getLogger(__name__)

DEVICE_DIR = Path(__file__).with_name("device")
NODE_MODULES = DEVICE_DIR / "node_modules"
LIBRARIES = ("onnxruntime-web/dist/", "@litertjs/core/dist/", "@litertjs/core/wasm/", "@litertjs/wasm-utils/dist/")
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}
# Cross-origin isolation: WebAssembly threads need SharedArrayBuffer, which needs both headers.
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
INSTALL_HINT = "the browser runtimes are not installed: run `make` (or `npm ci --prefix demo/device`)"


def device_artifact(model: Path, manifest) -> tuple[Path | None, str]:
    """The ONNX export (fp32 first) of the served model that device mode runs, or None and why not."""
    if manifest is None:
        return None, f"{model} is a checkpoint: export it (pocketswap export {model} --format onnx) for device mode"
    onnx = [c for c in artifact_choices(model, manifest) if c.runtime == "onnx"]
    if not onnx:
        return None, f"device mode runs the ONNX export: pocketswap export <run> --format onnx (next to {model.name})"
    onnx.sort(key=lambda c: c.precision != "fp32")
    return Path(onnx[0].path), ""


def _static(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it is a file of a served type inside ``root``, else None."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or path.suffix not in CONTENT_TYPES or not path.is_file():
        return None
    return path


def device_routes(model: Path, manifest, token: str, page_token: str) -> list:
    """Starlette routes of device mode for the app serving ``model`` (``manifest``: its manifest or None)."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from pocketswap.core.jsonio import read_json
    from pocketswap.core.manifest import manifest_path, read_manifest
    from pocketswap.faces.blazeface import model_path

    artifact, why_not = device_artifact(model, manifest)
    spec = read_manifest(artifact).swap_spec if artifact is not None else None
    if artifact is not None and not spec:
        artifact, why_not = None, f"{artifact.name}: its manifest has no swap_spec (exported by an older pocketswap)"
    face_models = set()
    if spec:
        front = spec.rules["front_end"]
        face_models = {d["model"] for d in front["detectors"]} | {front["landmarks"]["model"]}
    page_html = (DEVICE_DIR / "device.html").read_text().replace(page_token, token)
    cannot = why_not or ("" if NODE_MODULES.is_dir() else INSTALL_HINT)
    if cannot:  # said on the page itself: without its runtimes the page's script could not even load
        page_html = page_html.replace(
            '<div id="status" role="status">Loading the runtimes…</div>',
            f'<div id="status" role="status" class="error">Device mode cannot start: {html.escape(cannot)}</div>',
        ).replace('<script type="module" src="/device/js/main.js"></script>', "")

    def missing(what: str) -> JSONResponse:
        return JSONResponse({"error": what}, status_code=404)

    async def page(_: Request) -> HTMLResponse:
        headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", **ISOLATION}
        return HTMLResponse(page_html, headers=headers)

    async def script(request: Request) -> Response:
        path = _static(DEVICE_DIR, request.path_params["name"])
        if path is None or path.parent != DEVICE_DIR.resolve():
            return missing("no such script")
        return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=ISOLATION)

    async def library(request: Request) -> Response:
        relative = request.path_params["path"]
        if not NODE_MODULES.is_dir():
            return missing(INSTALL_HINT)
        path = _static(NODE_MODULES, relative) if relative.startswith(LIBRARIES) else None
        if path is None:
            return missing(f"no such library file: {relative}")
        return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=ISOLATION)

    async def face_model(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in face_models:
            return missing(f"no such face model: {name}")
        return FileResponse(model_path(name), media_type="application/octet-stream", headers=ISOLATION)

    async def device_manifest(_: Request) -> JSONResponse:
        if artifact is None:
            return missing(why_not)
        if not NODE_MODULES.is_dir():
            return missing(INSTALL_HINT)
        return JSONResponse(read_json(manifest_path(artifact), "manifest"))  # checked by read_manifest above

    async def device_model(_: Request) -> Response:
        if artifact is None:
            return missing(why_not)
        return FileResponse(artifact, media_type="application/octet-stream", headers=ISOLATION)

    return [
        Route("/device", page),
        Route("/device/js/{name}", script),
        Route("/device/lib/{path:path}", library),
        Route("/device/models/{name}", face_model),
        Route("/api/device/manifest", device_manifest),
        Route("/api/device/artifact", device_model),
    ]


__all__ = ["device_artifact", "device_routes"]
