"""The Personalize tab's job folders, ``WORK_DIR/jobs/ID``: their server-made names, the one-line
``job.state`` each holds (``running APP_PID``, ``done ARTIFACT``, ``failed MESSAGE``, ``cancelled`` or
``interrupted``) and what an app that starts finds in them (:func:`scan_jobs`)."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[a-z0-9_-]{1,40}-[0-9a-f]{6}$")
STATE_FILE = "job.state"  # one line in each job folder: its state (and the app's pid, artifact or error)
STATES = ("running", "done", "failed", "cancelled", "interrupted")


def safe_label(text: str) -> str:
    """A file-name-safe label (letters, digits, - and _; at most 40 characters) for a user's text."""
    label = re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_")[:40]
    return label or "face"


def new_job_folder(work_dir: Path, label: str) -> tuple[str, Path]:
    """(server-made id, a new empty folder ``work_dir/jobs/id``) for one request."""
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_label(label)}-{secrets.token_hex(3)}"
    folder = work_dir / "jobs" / job_id
    folder.mkdir(parents=True)
    return job_id, folder


def remove_job_folder(folder: Path) -> None:
    """Remove a folder this module made for a request that was then refused (nothing else is ever deleted)."""
    if JOB_ID.match(folder.name) and folder.parent.name == "jobs":
        shutil.rmtree(folder, ignore_errors=True)


def write_state(folder: Path, state: str, detail: str = "") -> None:
    """Write a job folder's ``job.state`` line (raises OSError: a job that cannot record its state is refused)."""
    detail = " ".join(detail.split())[:500]
    (folder / STATE_FILE).write_text(f"{state} {detail}".rstrip() + "\n")


def read_state(folder: Path) -> tuple[str | None, str]:
    """(state, detail) of a job folder's ``job.state``; (None, "") when it has none (or it is unreadable)."""
    try:
        with (folder / STATE_FILE).open("rb") as handle:
            line = handle.read(2048).decode("utf-8", "replace").strip()
    except OSError:
        return None, ""
    state, _, detail = line.partition(" ")
    return (state if state in STATES else None), detail


def _pid_alive(text: str) -> bool:
    """True when ``text`` is the pid of a live process other than this one."""
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, someone else's
        return True
    return True


def scan_jobs(jobs: Path) -> list[dict[str, Any]]:
    """The job folders of ``jobs``, oldest first, as :func:`job_record` s. A job left ``running`` by an app
    that is gone is marked ``interrupted`` (its checkpoints are kept: the CLI resumes it); a folder from
    before ``job.state`` is judged from its files. The log says what was found; a read-only disk only
    skips the marking."""
    try:
        folders = sorted(p for p in jobs.iterdir() if JOB_ID.match(p.name) and p.is_dir())
    except OSError:  # no jobs yet (or an unreadable folder: nothing to report)
        return []
    records = []
    for folder in folders:
        state, detail = read_state(folder)
        if state == "running" and not _pid_alive(detail):
            state, detail = "interrupted", ""
            try:
                write_state(folder, state)
            except OSError as exc:
                log.warning("%s: cannot mark it interrupted (%s)", folder, exc.strerror or exc)
        elif state is None:
            onnx = sorted((folder / "run" / "artifacts").glob("*.onnx"))
            error = last_error(folder / "job.log")
            state, detail = ("done", str(onnx[0])) if onnx else ("failed", error) if error else ("interrupted", "")
        records.append(job_record(folder, state, detail))
    if records:
        counts = ", ".join(f"{n} {s}" for s in STATES if (n := sum(r["state"] == s for r in records)))
        log.info("%d earlier personalisation(s) in %s: %s", len(records), jobs, counts)
    if interrupted := [r["job"] for r in records if r["state"] == "interrupted"]:
        log.warning(
            "%d personalisation(s) in %s were interrupted when their app stopped: %s; each keeps its "
            "checkpoints in JOB/run (resume: pocketswap distill personalize UNIVERSAL --identity ... "
            "--out JOB/run --resume)", len(interrupted), jobs, ", ".join(interrupted[-5:]),
        )  # fmt: skip
    return records


def job_record(folder: Path, state: str, detail: str) -> dict[str, Any]:
    """One job of ``status()["jobs"]``: its id, state and (by state) its artifact or error."""
    record: dict[str, Any] = {"job": folder.name, "state": state}
    if state == "done" and detail:
        record["artifact"] = detail
    elif state == "failed":
        record["error"] = detail or "failed"
    elif state == "interrupted":
        record["run"] = str(folder / "run")
    return record


def last_error(log_path: Path) -> str | None:
    """The CLI's own one-line error from a job's log (``pocketswap: error: ...``), if it wrote one."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.split("error:", 1)[1].strip() for line in lines if line.startswith("pocketswap: error:")]
    return errors[-1] if errors else None
