"""`pocketswap app`: the live swap and file swaps in a browser page, served on localhost.

One Starlette app: ``GET /`` is the page (``demo/page.html``: Live, Files, Personalize, Compare and
Model tabs). The live stream is a WebSocket (``/ws/live``) carrying JPEG frames from the browser's
camera and swapped JPEG frames back, one in flight at a time, so a slow frame delays the next instead
of queueing; or WebRTC (``POST /api/webrtc/offer``, :mod:`pocketswap.demo.webrtc`), chosen in the page;
``POST /api/files`` swaps an uploaded image or video; ``/api/personalize`` runs one background
personalisation (:mod:`pocketswap.demo.personal_job`); ``GET /api/compare`` and ``/api/model`` describe
the model, its identities and the personalisation behind it; ``/device`` is device mode, the swap in the
browser itself (:mod:`pocketswap.demo.on_device`). Each browser tab (each WebSocket or peer connection) owns
a :class:`~pocketswap.demo.session.Session` (its models and tracking state), so two tabs never share an
identity by accident. A frame that fails to decode or swap is reported to its tab and skipped; the session
goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path

from pocketswap.core.errors import PocketswapError
from pocketswap.demo.app import identity_files
from pocketswap.demo.guard import AccessPolicy, Guard, is_loopback
from pocketswap.demo.model_info import (
    artifact_choices,
    comparison,
    comparison_run,
    describe_model,
    model_manifest,
)
from pocketswap.demo.personal_job import PersonalizeJob
from pocketswap.demo.session import AppOptions, Session
from pocketswap.demo.settings import settings_schema
from pocketswap.demo.web_live import MAX_OFFER_BYTES, configure_session, live_routes

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
UI_DIR = Path(__file__).with_name("ui")  # the page's ES modules: one per tab, plus the shared helpers
UI_SCRIPTS = frozenset(p.name for p in UI_DIR.glob("*.js"))
PAGE_TOKEN = "__POCKETSWAP_TOKEN__"  # replaced in the served page by the launch's token


def create_app(options: AppOptions, policy: AccessPolicy | None = None):
    """The Starlette application behind its :class:`~pocketswap.demo.guard.Guard` (``app.state.token``:
    the launch's token, which the served page carries). Import-light: Starlette is imported here."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from pocketswap.demo.on_device import device_routes
    from pocketswap.demo.web_jobs import files_routes, personalize_routes
    from pocketswap.demo.webrtc import STAMP_BITS, STAMP_COLUMNS, STAMP_MARK

    policy = policy or AccessPolicy()
    policy.max_body_bytes = options.max_upload_mb * 1024 * 1024
    policy.body_limits.setdefault("/api/webrtc/offer", MAX_OFFER_BYTES)
    identities = identity_files(options.identity)
    manifest = model_manifest(options.model)
    info = describe_model(options.model, identities, manifest)
    artifacts = artifact_choices(options.model, manifest)
    info["artifacts"] = [a.to_dict() for a in artifacts]
    info["transport"] = {"default": options.transport, "stamp": {"columns": STAMP_COLUMNS, "bits": STAMP_BITS,
                                                                 "mark": STAMP_MARK}}  # fmt: skip
    Session(options, identities)  # load once up front: a bad model or identity fails at start, not in a tab
    page_html = PAGE.read_text().replace(PAGE_TOKEN, policy.token)
    schema = settings_schema()

    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse(page_html, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def model(_: Request) -> JSONResponse:
        return JSONResponse(info)

    async def live_settings(_: Request) -> JSONResponse:
        return JSONResponse(schema)

    async def script(request: Request) -> Response:
        path = UI_DIR / request.path_params["name"]
        if path.name not in UI_SCRIPTS:
            return JSONResponse({"error": "no such script"}, status_code=404)
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    served_comparison = comparison_run(options.model, manifest)
    job = PersonalizeJob(options.universal, options.work_dir)
    job.recover()  # jobs an earlier app left: interrupted ones are marked so, and listed in the page
    try:
        job.check_can_start()
    except PocketswapError as exc:  # the page says so before anyone clicks
        info["personalize_hint"] = str(exc)

    def compared() -> Path | None:  # this app's own newest personalisation, else the served model's
        own = job.artifact
        return (comparison_run(own, model_manifest(own)) if own is not None else None) or served_comparison

    async def compare(_: Request) -> JSONResponse:
        return JSONResponse(comparison(compared()))

    async def compare_image(_: Request) -> Response:
        run = compared()
        if run is None:
            return JSONResponse({"error": "no personalisation run behind this model"}, status_code=404)
        return Response((run / "compare.png").read_bytes(), media_type="image/png")

    configure = partial(configure_session, job=job, artifacts=artifacts)
    live, peers = live_routes(partial(Session, options, identities), configure)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await peers.close_all()
        await asyncio.to_thread(job.shutdown)  # a running personalisation keeps its checkpoint

    async def client_left(_: Request, __: Exception) -> Response:
        return Response(status_code=400)  # nobody reads it: the client has gone

    async def http_error(_: Request, exc: HTTPException) -> Response:  # e.g. Starlette's "Invalid multipart data."
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    routes = [
        Route("/", page),
        Route("/api/model", model),
        Route("/api/settings", live_settings),
        Route("/js/{name}", script),
        Route("/api/compare", compare),
        *personalize_routes(job, options.personal_faces),
        Route("/api/compare.png", compare_image),
        *files_routes(partial(Session, options, identities), _attachment),
        Route("/favicon.ico", lambda _: Response(status_code=204)),
        *live,
        *device_routes(options.model, manifest, policy.token, PAGE_TOKEN),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={ClientDisconnect: client_left, HTTPException: http_error}
    )
    app.state.info = info
    app.state.token = policy.token
    app.state.job = job
    app.state.peers = peers
    guarded = Guard(app, policy)
    guarded.state = app.state
    return guarded


def _attachment(name: str | None, suffix: str) -> dict[str, str]:
    stem = Path(name or "upload").stem or "upload"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    return {"Content-Disposition": f'attachment; filename="{safe}_swapped{suffix}"'}


@contextmanager
def serving_in_thread(app, host: str = "127.0.0.1", **timeouts) -> Iterator[str]:
    """Run ``app`` on a free port of ``host`` in a background thread; yields its URL (tests, ``bench app``).
    ``timeouts``: the half-sent request deadlines of :func:`~pocketswap.demo.web_server.server_config`."""
    import socket

    import uvicorn

    from pocketswap.demo.web_server import server_config

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, host, port, **timeouts))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise PocketswapError(f"the app did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(options: AppOptions, host: str = "127.0.0.1", port: int = 7860, allow_hosts: tuple[str, ...] = ()) -> None:
    """Serve the app until interrupted (binds to localhost unless ``host`` says otherwise)."""
    import uvicorn

    from pocketswap.demo.web_server import server_config

    policy = AccessPolicy(bind_host=host, extra_hosts=tuple(h.lower() for h in allow_hosts))
    app = create_app(options, policy)
    if is_loopback(host):
        log.info("pocketswap app on http://%s:%d/  (this machine only; Ctrl+C stops)", host, port)
    else:
        shown = host
        if host in ("0.0.0.0", "::"):
            import socket

            try:
                shown = socket.gethostbyname(socket.gethostname())
            except OSError:
                shown = "THIS-MACHINE-ADDRESS"
        log.warning(
            "serving on %s:%d BEYOND THIS MACHINE: anyone on the network who has the URL below can use the camera "
            "page, swap uploaded photos and videos, start personalisations (writing under %s) and read the served "
            "model and the face it carries. The page needs the launch token in the URL; share it only with "
            "people you trust. There is no TLS: browsers allow the camera only on localhost or https.",
            host, port, options.work_dir,
        )  # fmt: skip
        log.warning("pocketswap app on http://%s:%d/?token=%s  (Ctrl+C stops)", shown, port, policy.token)
    with suppress(KeyboardInterrupt):  # Ctrl+C: uvicorn has already stopped the app (and its job)
        uvicorn.Server(server_config(app, host, port)).run()
