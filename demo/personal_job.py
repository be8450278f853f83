"""The app's Personalize tab: one background personalisation (teacher pairs -> fine-tune -> ONNX export).

Each request gets its own folder ``WORK_DIR/jobs/ID`` with a server-made ID (the identity photo, the
uploaded faces and the run live there, so two clients never write over each other). The job runs the
same commands a user would (``pocketswap distill personalize`` then ``pocketswap export``) in a child
process: ``cancel()`` interrupts it the way Ctrl+C does (the trainer keeps a checkpoint; the CLI can
resume the folder), the app's own shutdown cancels it too, and a crash in it never takes the app down.
The child also dies with the app: on Linux the kernel sends it SIGTERM when the app ends in any way, a
SIGKILL included (``PR_SET_PDEATHSIG``), and the child takes SIGTERM as it takes Ctrl+C.

Each job folder records its state (:mod:`pocketswap.demo.job_folders`); an app that starts
(:meth:`PersonalizeJob.recover`) marks the jobs whose app is gone ``interrupted``, says so in its log,
and lists the earlier jobs in ``status()["jobs"]``. ``status()`` reads progress from the run's files
(``metrics.jsonl``, ``samples/``). One job at a time.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketswap.core.errors import PocketswapError
from pocketswap.core.jsonio import read_eval_report, read_jsonl
from pocketswap.demo.disk import DiskError, disk_cause, disk_error, unwritable
from pocketswap.demo.job_folders import job_record, last_error, scan_jobs, write_state
from pocketswap.faces.samples import SAMPLE_PREFIX

log = logging.getLogger(__name__)


MAX_VIDEO_FRAMES = 64  # frames taken from an uploaded video to personalise against, spread over it
MAX_STEPS = 20_000  # bounds of one request: a page cannot start a run that never ends
MAX_PAIRS = 8_192
MAX_FACE_UPLOADS = 64  # files in one request's faces to train against
CANCEL_WAIT_S = 60.0  # how long a cancelled child may take to write its checkpoint before it is killed
MAX_LISTED_JOBS = 20  # earlier jobs listed by status(), newest first
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The job's child (``python -c CHILD_ENTRY distill ...``): the pocketswap CLI, taking SIGTERM (the app died) as it
# takes Ctrl+C: the trainer stops at a step boundary and keeps a checkpoint, other stages stop.
CHILD_ENTRY = ("import signal, sys; signal.signal(signal.SIGTERM, signal.default_int_handler); "
               "from pocketswap.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip


def faces_from_uploads(uploads: list[tuple[str, bytes]], folder: Path) -> int:
    """Write uploaded photos, and up to ``MAX_VIDEO_FRAMES`` frames spread over each uploaded video, into
    ``folder`` (a new folder of the job's own) as the attribute faces of a personalisation; returns the
    number of images written. Photos are checked from their header (format, size) first."""
    import tempfile

    from pocketswap.core.imageio import IMAGE_SUFFIXES, inspect_image, write_image
    from pocketswap.demo.source import VideoSource, upload_label

    if len(uploads) > MAX_FACE_UPLOADS:
        raise PocketswapError(f"at most {MAX_FACE_UPLOADS} files of faces to train against, got {len(uploads)}")
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for index, (name, data) in enumerate(uploads):
        suffix = Path(name).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            inspect_image(data, name)
            (folder / f"upload{index:03d}{suffix}").write_bytes(data)
            written += 1
            continue
        with tempfile.TemporaryDirectory(prefix="pocketswap-faces-") as tmp:
            video_path = Path(tmp) / f"video{suffix}"
            try:
                video_path.write_bytes(data)
            except OSError as exc:  # the temporary folder's disk: named, not the file
                raise disk_error(exc) from exc
            video = VideoSource(video_path, name=upload_label(name))
            try:
                every = max(1, video.frame_count // MAX_VIDEO_FRAMES)
                for number, frame in enumerate(video):
                    if number % every == 0 and number // every < MAX_VIDEO_FRAMES:
                        write_image(folder / f"video{index:03d}_{number:05d}.png", frame)
                        written += 1
            finally:
                video.close()
    if written == 0:
        raise PocketswapError("no photo or video frame in the faces to personalise against")
    return written


def dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when the thread that starts it ends (the app
    exits, crashes or is SIGKILLed): ``prctl(PR_SET_PDEATHSIG, SIGTERM)``. None on other systems (a no-op)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:  # in the child, between fork and exec: nothing but two system calls
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the app died before the request took effect: do not start at all
            os._exit(143)

    return preexec


@dataclass
class JobRequest:
    identity: str  # photo path or sample:NAME
    folder: Path  # the job's own folder (from new_job_folder)
    steps: int
    pairs: int
    faces: str = "samples"

    @property
    def job_id(self) -> str:
        return self.folder.name

    @property
    def out(self) -> Path:
        """The personalisation's run folder."""
        return self.folder / "run"

    def check(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS or not 8 <= self.pairs <= MAX_PAIRS:
            raise PocketswapError(
                f"steps must be in [1, {MAX_STEPS}] and pairs in [8, {MAX_PAIRS}], got {self.steps} and {self.pairs}"
            )


class PersonalizeJob:
    """At most one personalisation at a time, fine-tuned from the universal run ``universal``."""

    def __init__(self, universal: Path | None, work_dir: Path = Path("runs/app")) -> None:
        self.universal = universal
        self.work_dir = work_dir  # each request's folder is made under work_dir/jobs
        self.lock = threading.Lock()
        self.request: JobRequest | None = None
        self.state = "idle"  # idle | running | done | failed | cancelled
        self.error: str | None = None
        self.artifact: Path | None = None
        self.started = 0.0
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self.thread: threading.Thread | None = None
        self.history: dict[str, dict[str, Any]] = {}  # job id -> its state, error and artifact (status()["jobs"])

    def check_can_start(self) -> None:
        """Raise the reason a new job cannot start now (before anything of the request is written)."""
        from pocketswap.core.checkpoint import resolve_checkpoint

        if self.universal is None:
            raise PocketswapError("no universal run to personalise from: start the app with --universal RUN_DIR")
        resolve_checkpoint(self.universal)
        if self.state == "running":
            raise PocketswapError("a personalisation is already running; wait for it or cancel it")
        if problem := unwritable(self.work_dir / "jobs"):
            raise DiskError(f"personalisations cannot be written under {self.work_dir / 'jobs'}: {problem}")

    def recover(self) -> None:
        """Read the earlier jobs of ``work_dir/jobs`` (an app that starts): one left ``running`` by an app that
        is gone is marked ``interrupted`` and the log says what was found (:func:`scan_jobs`); status() lists them."""
        self.history = {r["job"]: r for r in scan_jobs(self.work_dir / "jobs")[-MAX_LISTED_JOBS:]}

    def start(self, request: JobRequest) -> None:
        """Check the request (one clear error) and run it in the background (an OSError: its folder could
        not record the job's state, nothing started)."""
        request.check()
        with self.lock:
            self.check_can_start()
            write_state(request.folder, "running", str(os.getpid()))
            self.request, self.state, self.error, self.artifact = request, "running", None, None
            self.started, self.cancelled = time.time(), False
            self.thread = threading.Thread(target=self._run, args=(request,), name="personalize", daemon=True)
            self.thread.start()

    def cancel(self) -> bool:
        """Interrupt the running job as Ctrl+C would; False when none runs."""
        with self.lock:
            if self.state != "running":
                return False
            self.cancelled = True
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
        return True

    def shutdown(self) -> None:
        """Cancel a running job and wait for its child to end (the app is stopping)."""
        if self.cancel() and self.thread is not None:
            self.thread.join(timeout=CANCEL_WAIT_S + 5)

    def _commands(self, request: JobRequest) -> list[list[str]]:
        cli = [sys.executable, "-c", CHILD_ENTRY]
        out = str(request.out)
        train = [*cli, "distill", "personalize", str(self.universal), "--identity", request.identity, "--out", out,
                 "--faces", request.faces, "--pairs", str(request.pairs), "--steps", str(request.steps),
                 "--workers", "1", "--no-progress"]  # fmt: skip
        if (request.out / "checkpoints").is_dir():
            train.append("--resume")
        export = [*cli, "export", out, "--identity", request.identity, "--format", "onnx", "--precision", "fp32",
                  "--out", str(request.out / "artifacts")]  # fmt: skip
        return [train, export]

    def _run(self, request: JobRequest) -> None:
        # This thread starts the children and waits for them: PR_SET_PDEATHSIG fires when the thread that
        # forked a child ends, so it must be this one, alive for as long as its child runs.
        log_path = request.folder / "job.log"
        try:
            for command in self._commands(request):
                with log_path.open("a") as log_file:
                    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True,
                                               preexec_fn=dies_with_parent())  # fmt: skip
                    with self.lock:
                        self.process = process
                        if self.cancelled:
                            process.send_signal(signal.SIGINT)
                    code = _wait(process, lambda: self.cancelled)
                if self.cancelled:
                    self.state = "cancelled"
                    return
                if code != 0:
                    raise PocketswapError(last_error(log_path) or _unlogged_reason(request.folder, command[3], code))
            artifacts = sorted((request.out / "artifacts").glob("*.onnx"))
            if not artifacts:
                raise PocketswapError(f"the export wrote no .onnx into {request.out / 'artifacts'}")
            self.artifact, self.state = artifacts[0], "done"
        except Exception as exc:  # shown in the page; the app keeps serving
            cause = disk_cause(exc)  # e.g. job.log cannot be opened: the page still gets the reason
            message = str(disk_error(cause, request.folder, refused=False)) if cause is not None else str(exc)
            log.warning("personalisation %s failed: %s", request.job_id, message)
            self.state, self.error = "failed", message
        finally:
            self.process = None
            detail = str(self.artifact or "") if self.state == "done" else self.error or ""
            self.history[request.job_id] = job_record(request.folder, self.state, detail)
            try:
                write_state(request.folder, self.state, detail)
            except OSError as exc:
                log.warning("%s: cannot record its state %s (%s)", request.folder, self.state, exc.strerror or exc)

    def status(self) -> dict[str, Any]:
        """State, phase, step of steps, last training loss, ETA, newest preview grid and the artifact."""
        info: dict[str, Any] = {"state": self.state, "error": self.error, "universal": str(self.universal),
                                "max_steps": MAX_STEPS, "max_pairs": MAX_PAIRS}  # fmt: skip
        info["jobs"] = self.jobs()
        request = self.request
        if request is None:
            return info
        info |= {"job": request.job_id, "identity": Path(request.identity).name if not request.identity.startswith(
            SAMPLE_PREFIX) else request.identity, "out": str(request.out), "steps": request.steps}  # fmt: skip
        info["elapsed_s"] = round(time.time() - self.started)
        rows = _train_rows(request.out / "metrics.jsonl")
        if self.state == "running":
            started = rows or (request.out / "run.json").is_file()  # the trainer writes run.json as it starts
            info["phase"] = "training" if started else "teacher pairs"
            if (request.out / "summary.json").is_file():
                info["phase"] = "evaluating and exporting"
        if rows:
            last = rows[-1]
            info["step"], info["loss"] = last["step"], round(float(last.get("total", float("nan"))), 4)
            rate = last.get("samples_per_s")
            if rate and self.state == "running":
                info["eta_s"] = round(max(request.steps - last["step"], 0) * _batch_size(request.out) / rate)
        previews = sorted((request.out / "samples").glob("step-*.png"))
        info["preview"] = previews[-1].name if previews else None
        info["artifact"] = str(self.artifact) if self.artifact else None
        report = request.out / "eval.json"
        if self.state == "done" and report.is_file():
            metrics = _eval_metrics(report)
            info["same_person"] = {name: m.get("same_person") for name, m in metrics.items()}
        return info

    def jobs(self) -> list[dict[str, Any]]:
        """This app's job and the earlier ones found in ``work_dir/jobs``, newest first (at most
        ``MAX_LISTED_JOBS``): id, state, and the error or artifact."""
        listed = dict(self.history)
        request = self.request
        if request is not None and self.state == "running":
            listed[request.job_id] = job_record(request.folder, "running", "")
        return [listed[key] for key in sorted(listed, reverse=True)[:MAX_LISTED_JOBS]]

    def preview(self) -> Path | None:
        """The newest sample grid (identity | attribute | teacher | student | mask rows) of the running job."""
        if self.request is None:
            return None
        previews = sorted((self.request.out / "samples").glob("step-*.png"))
        return previews[-1] if previews else None


def _batch_size(run: Path) -> int:
    import yaml

    try:
        return int((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("batch_size", 16))
    except (OSError, ValueError, yaml.YAMLError):
        return 16


def _train_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        rows = read_jsonl(path, "training log", warn_cut=False)  # a line being written is skipped
    except PocketswapError as exc:  # the page shows no progress rather than an error page
        log.warning("%s", exc)
        return []
    return [row for row in rows if isinstance(row, dict) and row.get("kind") == "train"]


def _eval_metrics(path: Path) -> dict[str, Any]:
    """The ``metrics`` of a run's ``eval.json`` (system -> figures); {} when it is unreadable (said in the log)."""
    try:
        return read_eval_report(path)["metrics"]
    except PocketswapError as exc:
        log.warning("%s", exc)
        return {}


def _unlogged_reason(folder: Path, stage: str, code: int) -> str:
    """Why a child failed without its error line in ``job.log``: most often the disk took neither its work
    nor its log, which a probe write into the job's folder tells (named, with the problem)."""
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"\0" * 4096)
    except OSError as exc:
        if disk_cause(exc) is not None:
            return f"{stage} ended with status {code}; {disk_error(exc, folder, refused=False)}"
    finally:
        probe.unlink(missing_ok=True)
    return f"{stage} ended with status {code}"


def _wait(process: subprocess.Popen, cancelled) -> int:
    """The child's exit status; once cancelled, it has ``CANCEL_WAIT_S`` to save its work before a kill."""
    deadline = None
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if cancelled():
                deadline = deadline or time.monotonic() + CANCEL_WAIT_S
                if time.monotonic() > deadline:
                    process.kill()
