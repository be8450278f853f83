"""What a training run keeps on disk, for :class:`pocketswap.distill.train._Trainer`: the run's files, its
checkpoints (EMA weights plus every rank's exact position, so a resumed run matches an uninterrupted one),
resuming from them, and the summary. See :mod:`pocketswap.distill.state` for the RUN_DIR layout."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pocketswap.core.checkpoint import WEIGHTS_NAME
from pocketswap.core.errors import CheckpointError, ConfigError, PocketswapError
from pocketswap.core.files import atomic_write_bytes, atomic_write_json, replace_dir
from pocketswap.core.identity import Identity
from pocketswap.core.jsonio import read_json
from pocketswap.distill import state as run_state
from pocketswap.distill.config import TrainConfig
from pocketswap.distill.data import dataset_fingerprint
from pocketswap.distill.state import RunSummary, rng_state, set_rng_state, weights_digest

log = logging.getLogger(__name__)


class RunPersistence:
    """The trainer's run files, checkpoints, resume and summary (a mixin: it reads the trainer's state)."""

    def _resume_checkpoint(self, resume: bool) -> Path | None:
        latest = run_state.latest_checkpoint(self.out)
        if resume:
            if latest is None:
                log.warning("--resume: no checkpoint in %s yet; starting from scratch", self.out)
            return latest
        if latest is not None:
            raise ConfigError(
                f"{self.out} already holds checkpoints; pass --resume to continue it or choose a new --out"
            )
        return None

    def _write_run_files(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / "config.yaml", self.cfg.to_yaml().encode())
        atomic_write_json(
            self.out / "run.json",
            {
                "data": str(self.data.resolve()),
                "dataset_fingerprint": dataset_fingerprint(self.reader),
                "dataset_samples": len(self.reader),
                "student": self.scfg.to_dict(),
                "split": self.split.to_dict(),
                "world_size": self.ctx.world,
                "num_workers": self.cfg.num_workers,
                "device": str(self.device),
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
                "torch": torch.__version__,
            },
        )

    # -- state -----------------------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        positions = {str(k): list(v) for k, v in self.positions.items()}
        return {"positions": json.dumps(positions), "batches": self.batches, "rng": rng_state()}

    def _gather(self, obj: Any) -> list[Any]:
        if self.ctx.world == 1:
            return [obj]
        gathered: list[Any] = [None] * self.ctx.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def _train_state(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        tree: dict[str, Any] = {
            "step": self.step,
            "trainee": self.trainee.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step,
            "world_size": self.ctx.world,
            "num_workers": self.workers,
            "ranks": ranks,
            "config": self.cfg.to_dict(),
        }
        if self.disc is not None and self.d_optimizer is not None:
            tree["disc"] = self.disc.state_dict()
            tree["d_optimizer"] = self.d_optimizer.state_dict()
        if self.scaler is not None:
            tree["scaler"] = self.scaler.state_dict()
        return tree

    def _load(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        tree = run_state.load_state(checkpoint)
        saved = TrainConfig.from_dict(tree["config"])
        changed = [
            f.name for f in dataclasses.fields(TrainConfig) if getattr(saved, f.name) != getattr(self.cfg, f.name)
        ]
        if changed:
            log.warning("resuming with changed config field(s): %s (the run will not match an uninterrupted one)",
                        ", ".join(changed))  # fmt: skip
        try:
            self.trainee.load_state_dict(tree["trainee"])
            self.ema.load_state_dict(load_file(str(checkpoint / WEIGHTS_NAME)))
            self.optimizer.load_state_dict(tree["optimizer"])
            if self.disc is not None and self.d_optimizer is not None and "disc" in tree:
                self.disc.load_state_dict(tree["disc"])
                self.d_optimizer.load_state_dict(tree["d_optimizer"])
        except Exception as exc:  # state-dict mismatch, truncated safetensors, missing keys
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            more = f" (+{len(lines) - 2} more lines)" if len(lines) > 2 else ""
            raise CheckpointError(
                f"cannot resume from {checkpoint}: {' '.join(lines[:2])[:300]}{more}; resume with the run's own "
                "settings (preset, student fields) or choose a new --out"
            ) from exc
        self.scheduler.load_state_dict(tree["scheduler"])
        if self.scaler is not None and "scaler" in tree:
            self.scaler.load_state_dict(tree["scaler"])
        self.step = int(tree["step"])
        self.best_val = math.inf if tree["best_val"] is None else float(tree["best_val"])
        self.best_step = tree["best_step"]
        self.last_checkpoint = checkpoint
        if tree["world_size"] == self.ctx.world and tree["num_workers"] == self.workers:
            mine = tree["ranks"][self.ctx.rank]
            self.positions = {int(k): (int(v[0]), int(v[1])) for k, v in json.loads(mine["positions"]).items()}
            self.batches = int(mine["batches"])
            set_rng_state(mine["rng"])
        else:
            epoch = max((e for r in tree["ranks"] for e, _ in json.loads(r["positions"]).values()), default=0)
            log.warning("resuming with a different world size or worker count: data restarts at epoch %d", epoch + 1)
            self.positions = {k: (epoch + 1, 0) for k in range(self.workers)}
        if not run_state.restore_best(self.out, self.best_step, self.best_val):
            self.best_val, self.best_step = math.inf, None  # the next validation starts best/ again
        log.info("resumed from %s at step %d", checkpoint, self.step)

    def checkpoint(self) -> None:
        ranks = self._gather(self._rank_state())
        if not self.ctx.main:
            return
        val = self.validate()
        root = self.out / "checkpoints"
        final = root / run_state.step_name(self.step)
        tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        extra = {"step": self.step, "run": str(self.out), "val": val, "dataset": str(self.data)}
        if self.reader.manifest.identity is not None:  # a one-identity (personalised) student says whose it is
            extra["identity"] = Identity.from_record(self.reader.manifest.identity, "dataset manifest").to_record()
        from pocketswap.student.checkpoint import save_checkpoint

        improved = bool(val) and val["loss"] < self.best_val
        if improved:
            self.best_val, self.best_step = val["loss"], self.step
        try:
            save_checkpoint(tmp, self.ema, self.scfg, extra=extra)
            run_state.save_state(tmp, self._train_state(ranks))
            replace_dir(tmp, final)
        finally:  # a checkpoint that could not be written (full disk) leaves nothing half-written behind
            shutil.rmtree(tmp, ignore_errors=True)
        run_state.point_last(self.out, final)
        self.last_checkpoint = final
        if improved:
            run_state.copy_model(final, self.out / "best", {"step": self.step, "val": val})
        run_state.prune(self.out, self.cfg.keep_last)
        if val:
            assert self.metrics is not None and self.tb is not None
            self.metrics.write(self.step, "val", val)
            self.tb.scalars(self.step, {f"val/{k}": v for k, v in val.items() if k != "samples"})
            log.info("step %d: val loss %.4f, face PSNR %.2f dB%s", self.step, val["loss"], val["psnr_face"],
                     " (best)" if improved else "")  # fmt: skip

    def _finished_summary(self) -> RunSummary | None:
        """The recorded summary of a run resumed after it completed (nothing is trained or rewritten)."""
        path = self.out / "summary.json"
        if self.resume_from is None or self.step < self.cfg.steps or not path.is_file():
            return None
        try:
            summary = RunSummary(**read_json(path, "run summary", schema=dict))
        except (PocketswapError, TypeError):
            return None  # an unreadable summary is rewritten from the checkpoint
        if self.tb is not None:
            self.tb.close()
        log.info("%s is already complete (step %d/%d): nothing to do", self.out, self.step, self.cfg.steps)
        return summary

    def _summary(self, stopped: str, train_seconds: float, trained: int, wall: float) -> RunSummary:
        if self.ctx.world > 1:  # BN statistics are per rank; make every rank hold rank 0's
            for module in (self.ema, self.trainee):
                for buffer in module.buffers():
                    dist.broadcast(buffer, 0)
        digest = weights_digest(self.ema)
        digests = self._gather(digest)
        if len(set(digests)) > 1:
            log.error("ranks finished with different weights: %s", digests)
        best = self.out / "best"
        summary = RunSummary(
            out=str(self.out),
            step=self.step,
            steps=self.cfg.steps,
            stopped=stopped,
            final_loss=self.last_loss,
            best_step=self.best_step,
            best_val_loss=self.best_val if math.isfinite(self.best_val) else None,
            last_checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
            best_checkpoint=str(best) if best.is_dir() else None,
            samples_per_s=self.cfg.batch_size * self.ctx.world * trained / max(train_seconds, 1e-9),
            train_seconds=train_seconds,
            wall_seconds=wall,
            world_size=self.ctx.world,
            weights_sha256=digest,
            rank_weights_sha256=digests,
        )
        if self.ctx.main:
            atomic_write_json(self.out / "summary.json", summary.to_dict())
        return summary
