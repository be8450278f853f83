"""The app's long-running requests: the Personalize tab's job and the Files tab's swaps.

Every name that reaches the file system is made here, never taken from the client: a sample must be
one of the bundled ones, an uploaded photo keeps only its (checked) suffix, and each personalisation
writes only inside the folder made for it (:func:`pocketswap.demo.job_folders.new_job_folder`).
Video swaps get a server-made progress id and stop when their client leaves.

A request the disk cannot take (full, read-only, a file-size limit) is one JSON line with status 507
naming the problem and the folder (:mod:`pocketswap.demo.disk`), and what it wrote is removed first;
an error about an upload names the upload, never the server's temporary copy of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import tempfile
import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

from pocketswap.core.errors import PocketswapError
from pocketswap.core.imageio import IMAGE_SUFFIXES, inspect_image
from pocketswap.demo.disk import DISK_STATUS, DiskError, disk_cause, disk_error
from pocketswap.demo.guard import whole_number
from pocketswap.demo.job_folders import new_job_folder, remove_job_folder
from pocketswap.demo.personal_job import MAX_PAIRS, MAX_STEPS, JobRequest, PersonalizeJob, faces_from_uploads
from pocketswap.demo.session import swap_image_bytes, swap_video_file
from pocketswap.demo.source import upload_label

log = logging.getLogger(__name__)

VIDEO_UPLOAD_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
MAX_FILE_JOBS = 16  # video-swap progress records kept for `GET /api/files/progress?job=ID`


def _uploaded(form, key: str) -> list[Any]:
    return [f for f in form.getlist(key) if hasattr(f, "read") and f.filename]


async def _read_form(request):
    """The request's form; a disk that cannot take the upload's spooled parts is a :class:`DiskError`."""
    try:
        return await request.form()
    except OSError as exc:
        if disk_cause(exc) is None:
            raise
        raise disk_error(exc) from exc


def _refused(exc: Exception, where: Path | None = None):
    """The JSON answer to a refused request: 507 for a disk problem (naming ``where``: a folder of the
    server's own, else its temporary folder), else 422."""
    from starlette.responses import JSONResponse

    if not isinstance(exc, DiskError) and (cause := disk_cause(exc)) is not None:
        exc = disk_error(cause, where)
    if isinstance(exc, DiskError):  # the person running the server has something to fix
        log.warning("refused a request: %s", exc)
        return JSONResponse({"error": str(exc)}, status_code=DISK_STATUS)
    return JSONResponse({"error": str(exc)}, status_code=422)


def _sample_spec(text: str) -> str:
    """``sample:NAME`` for a bundled sample's name, else one clear error (no path ever comes from it)."""
    from pocketswap.faces import samples

    name = text.strip().removeprefix(samples.SAMPLE_PREFIX)
    if name not in samples.names():
        raise PocketswapError(f"unknown sample {name[:40]!r}; choose one of: {', '.join(samples.names()[:8])}, ...")
    return samples.SAMPLE_PREFIX + name


def personalize_routes(job: PersonalizeJob, default_faces: str) -> list:
    """``POST /api/personalize`` (start), ``GET`` (status), ``POST /api/personalize/cancel`` and the preview."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def start(request: Request) -> JSONResponse:
        folder = None
        try:
            form = await _read_form(request)
            steps = whole_number(form.get("steps") or 500, "steps", 1, MAX_STEPS)
            pairs = whole_number(form.get("pairs") or 1024, "pairs", 8, MAX_PAIRS)
            photos, faces = _uploaded(form, "photo"), _uploaded(form, "faces")
            allowed = (*IMAGE_SUFFIXES, *VIDEO_UPLOAD_SUFFIXES)
            if bad := [f.filename for f in faces if Path(f.filename).suffix.lower() not in allowed]:
                raise PocketswapError(f"faces to train against must be photos or videos, not {', '.join(bad)[:200]}")
            if photos:
                suffix = Path(photos[0].filename).suffix.lower()
                if suffix not in IMAGE_SUFFIXES:
                    raise PocketswapError(f"the identity photo must be an image ({', '.join(IMAGE_SUFFIXES)})")
                photo = await photos[0].read()
                inspect_image(photo, "the identity photo")
                label, spec = Path(photos[0].filename).stem, None
            else:
                spec = _sample_spec(str(form.get("sample") or ""))
                label = spec.split(":", 1)[1]
            job.check_can_start()  # before anything of this request is written
            job_id, folder = new_job_folder(job.work_dir, label)
            if spec is None:
                spec = str((folder / f"identity{suffix}").resolve())
                Path(spec).write_bytes(photo)
            faces_spec = default_faces
            if faces:  # the faces (photos or a video) to personalise against, instead of the default pool
                files = [(f.filename, await f.read()) for f in faces]
                await asyncio.to_thread(faces_from_uploads, files, folder / "faces")
                faces_spec = str((folder / "faces").resolve())
            await asyncio.to_thread(job.start, JobRequest(spec, folder, steps, pairs, faces_spec))
        except (PocketswapError, ValueError, OSError) as exc:
            if folder is not None:  # nothing of a refused request stays: no half-written photo, no empty faces/
                remove_job_folder(folder)
            if isinstance(exc, OSError) and disk_cause(exc) is None:
                raise
            return _refused(exc, folder or job.work_dir / "jobs")
        return JSONResponse(job.status())

    async def status(_: Request) -> JSONResponse:
        return JSONResponse(job.status())

    async def cancel(_: Request) -> JSONResponse:
        if not job.cancel():
            return JSONResponse({"error": "no personalisation is running"}, status_code=409)
        return JSONResponse(job.status())

    async def preview(_: Request) -> Response:
        path = job.preview()
        if path is None:
            return JSONResponse({"error": "no preview yet"}, status_code=404)
        return Response(path.read_bytes(), media_type="image/png")

    return [
        Route("/api/personalize", start, methods=["POST"]),
        Route("/api/personalize", status),
        Route("/api/personalize/cancel", cancel, methods=["POST"]),
        Route("/api/personalize/preview.png", preview),
    ]


class FileJobs:
    """Progress of the newest video swaps, under ids the server hands out (``POST /api/files/job``)."""

    def __init__(self) -> None:
        self.jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def issue(self) -> str:
        job_id = secrets.token_hex(8)
        self.jobs[job_id] = {"frames": 0, "total": 0, "done": False, "started": False}
        while len(self.jobs) > MAX_FILE_JOBS:
            self.jobs.popitem(last=False)
        return job_id

    def claim(self, job_id: str) -> dict[str, Any]:
        """The progress record of an issued, unused id (a fresh record when none is given)."""
        if not job_id:
            return {"frames": 0, "total": 0, "done": False, "started": True}
        found = self.jobs.get(job_id)
        if found is None or found["started"]:
            raise PocketswapError("unknown or used job id: ask POST /api/files/job for one")
        found["started"] = True
        return found


def files_routes(make_session, attachment) -> list:
    """``POST /api/files`` (swap an uploaded image or video), ``POST /api/files/job`` and its progress."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    jobs = FileJobs()

    async def new_job(_: Request) -> JSONResponse:
        return JSONResponse({"job": jobs.issue()})

    async def progress(request: Request) -> JSONResponse:
        found = jobs.jobs.get(request.query_params.get("job", ""))
        if not found:
            return JSONResponse({"error": "no such job"}, status_code=404)
        return JSONResponse({k: v for k, v in found.items() if k != "started"})

    async def swap(request: Request) -> Response:
        try:
            form = await _read_form(request)
        except DiskError as exc:
            return _refused(exc)
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            return JSONResponse({"error": "no file in the upload"}, status_code=400)
        suffix = Path(upload.filename or "").suffix.lower()
        try:
            if suffix not in (*IMAGE_SUFFIXES, *VIDEO_UPLOAD_SUFFIXES):
                allowed = ", ".join((*IMAGE_SUFFIXES, *VIDEO_UPLOAD_SUFFIXES))
                return JSONResponse({"error": f"unsupported file type {suffix[:12] or '(none)'}; use {allowed}"},
                                    status_code=415)  # fmt: skip
            record = jobs.claim(str(form.get("job") or ""))
            identity = whole_number(form.get("identity") or 0, "identity", 0, 10_000)
            all_faces = str(form.get("all_faces") or "") == "true"
            data = await upload.read()
            session = await asyncio.to_thread(make_session)
            await asyncio.to_thread(session.configure, {"identity": identity, "all_faces": all_faces})
            if suffix in IMAGE_SUFFIXES:
                png = await asyncio.to_thread(swap_image_bytes, session, data)
                return Response(png, media_type="image/png", headers=attachment(upload.filename, ".png"))
            return await _video(request, session, data, suffix, upload.filename, record)
        except (PocketswapError, ValueError, OSError) as exc:
            if isinstance(exc, OSError) and disk_cause(exc) is None:
                raise
            return _refused(exc)  # a disk problem here is the temporary folder's: it is named, not the file

    async def _video(request: Request, session, data: bytes, suffix: str, name: str | None, record) -> Response:
        left = threading.Event()

        def on_frame(frames: int, total: int) -> None:
            record.update(frames=frames, total=total)
            if left.is_set():
                raise PocketswapError("the client left: the video swap stopped")

        with tempfile.TemporaryDirectory(prefix="pocketswap-app-") as tmp:
            source, output = Path(tmp) / f"in{suffix}", Path(tmp) / "swapped.mp4"
            source.write_bytes(data)
            swap = partial(swap_video_file, session, source, output, on_frame, name=upload_label(name))
            task = asyncio.ensure_future(asyncio.to_thread(swap))
            try:
                while not task.done():  # a client that leaves stops its swap
                    await asyncio.wait({task}, timeout=0.5)
                    if not task.done() and await request.is_disconnected():
                        left.set()
                summary = await task
            finally:
                record["done"] = True
            headers = attachment(name, ".mp4") | {"X-Pocketswap-Summary": json.dumps(summary)}
            return Response(output.read_bytes(), media_type="video/mp4", headers=headers)

    return [
        Route("/api/files", swap, methods=["POST"]),
        Route("/api/files/job", new_job, methods=["POST"]),
        Route("/api/files/progress", progress),
    ]
