"""The distillation trainer: ``train(TrainConfig, data, out, resume=False) -> RunSummary``.

One process or many under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA). AdamW with linear warmup
and a cosine schedule, gradient clipping, EMA weights (what is validated, checkpointed and
exported), autocast only on CUDA. Runs are seeded; on CPU they are bit-for-bit deterministic, and
``resume=True`` continues exactly where the newest checkpoint left off (weights, optimiser,
scheduler, EMA, RNGs and every data stream's position). A non-finite loss or gradient stops the
run with :class:`TrainingDivergedError` before the bad update, leaving the last good checkpoint.
See :mod:`pocketswap.distill.state` for the RUN_DIR layout.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pocketswap.core.dataset import DatasetReader
from pocketswap.core.errors import ConfigError, PocketswapError
from pocketswap.core.files import exclusive_folder
from pocketswap.distill import state as run_state
from pocketswap.distill.adversarial import PatchDiscriminator, d_hinge_loss, g_hinge_loss
from pocketswap.distill.checkpointing import RunPersistence
from pocketswap.distill.config import TrainConfig
from pocketswap.distill.data import (
    Split,
    TrainStream,
    batch_to_device,
    check_dataset,
    iter_split,
    make_split,
    stream_loader,
)
from pocketswap.distill.features import FeatureDistiller, Trainee, load_teacher_module
from pocketswap.distill.logs import MetricsLog, TensorBoard, write_png
from pocketswap.distill.losses import DistillLoss
from pocketswap.distill.setup import (
    Dist,
    auto_threads,
    defer_interrupts,
    load_initial_weights,
    make_optimizer,
    seed_everything,
    setup_distributed,
    stop_requested,
    use_deterministic_algorithms,
)
from pocketswap.distill.state import RunSummary, read_run_file
from pocketswap.distill.validation import ValidationGrid, validate

log = logging.getLogger(__name__)


class TrainingDivergedError(PocketswapError):
    """The loss or the gradient became NaN/inf; the run stopped before applying that update."""


# -- the trainer ---------------------------------------------------------------------------------
class _Trainer(RunPersistence):
    def __init__(self, config: TrainConfig, data: Path, out: Path, ctx: Dist, resume: bool, progress: bool) -> None:
        self.cfg, self.data, self.out, self.ctx, self.progress = config, data, out, ctx, progress
        self.device = ctx.device
        self.reader = DatasetReader(data)
        self.scfg = config.student_config(embed_dim=self.reader.embedding_dim)
        check_dataset(self.reader, self.scfg, config.preset)
        self.resume_from = self._resume_checkpoint(resume)
        self.split = self._make_split()
        self.workers = max(1, config.num_workers)

        from pocketswap.student import StudentNet

        torch.manual_seed(config.seed)
        student = StudentNet(self.scfg)
        if config.init_from and self.resume_from is None:
            load_initial_weights(student, config.init_from)
        student = student.to(self.device)
        distiller = None
        if config.w_feat > 0:
            teacher = load_teacher_module(config.feature_teacher).to(self.device)
            probe = (torch.zeros(1, 3, self.scfg.size, self.scfg.size, device=self.device),
                     torch.ones(1, self.scfg.embed_dim, device=self.device) / self.scfg.embed_dim**0.5)  # fmt: skip
            distiller = FeatureDistiller(teacher, student, config.feature_layers, probe).to(self.device)
        self.trainee = Trainee(student, distiller)
        self.ema = copy.deepcopy(student).eval().requires_grad_(False)
        self.loss_fn = DistillLoss(config, self.scfg.size).to(self.device)
        self.optimizer, self.scheduler = make_optimizer(self.trainee, config)
        self.disc: nn.Module | None = None
        self.d_optimizer: torch.optim.Optimizer | None = None
        if config.w_adv > 0:
            self.disc = PatchDiscriminator(config.d_channels).to(self.device)
            self.d_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=config.d_lr, betas=(0.5, 0.99))
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.step = 0
        self.batches = 0
        self.positions: dict[int, tuple[int, int]] = {}
        self.best_val = math.inf
        self.best_step: int | None = None
        self.last_checkpoint: Path | None = None
        self.last_loss: float | None = None
        if self.resume_from is not None:
            self._load(self.resume_from)
        else:
            seed_everything(config.seed + 1000 * ctx.rank)

        self.model: nn.Module = self.trainee
        self.d_model: nn.Module | None = self.disc
        if ctx.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.trainee, device_ids=ids)
            if self.disc is not None:
                self.d_model = DDP(self.disc, device_ids=ids)
        if ctx.main:
            self._write_run_files()
        self.metrics = MetricsLog(out / "metrics.jsonl", resume_step=self.step) if ctx.main else None
        self.tb = TensorBoard(out / "tb", purge_step=self.step if self.resume_from else None) if ctx.main else None
        self.grid = ValidationGrid(data, self.split, self.scfg.warp_shape, self.device)

    # -- setup helpers ---------------------------------------------------------------------------
    def _make_split(self) -> Split:
        run_json = self.out / "run.json"
        if self.resume_from is not None and run_json.is_file():
            return Split.from_dict(read_run_file(self.out)["split"])
        return make_split(
            self.reader.manifest.identities, self.cfg.val_fraction, self.cfg.split_seed, self.cfg.val_strict, self.cfg.split_by,
            self.cfg.holdout,
        )  # fmt: skip

    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or self.cfg.amp == "off":
            return None
        if self.cfg.amp == "fp16":
            return torch.float16
        if self.cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    # -- data ------------------------------------------------------------------------------------
    def _loader(self) -> Iterator[dict[str, Any]]:
        stream = TrainStream(
            self.data, self.split, self.cfg.batch_size, self.cfg.seed, self.cfg.shuffle_buffer,
            self.ctx.rank, self.ctx.world, self.cfg.num_workers, self.positions, self.batches % self.workers,
            warp_shape=self.scfg.warp_shape,
        )  # fmt: skip
        return stream_loader(stream, self.cfg.num_workers, self.cfg.seed + self.ctx.rank)

    def _prepare(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return batch_to_device(batch, self.device)

    # -- one step --------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.amp_dtype is None else torch.autocast("cuda", dtype=self.amp_dtype)

    def _train_step(self, t: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        teacher_features = None
        if self.trainee.distiller is not None:
            teacher_features = self.trainee.distiller.teacher_features(t["attribute"], t["embedding"])
        with self._autocast():
            image, mask, feat = self.model(t["attribute"], t["embedding"], teacher_features, t["identity_input"])
        terms = self.loss_fn(image, mask, t)
        terms["feat"] = feat.float()
        total = terms["total"] + cfg.w_feat * terms["feat"]
        adversarial = self.disc is not None and self.step >= cfg.adv_start
        if adversarial:
            self.disc.requires_grad_(False)
            terms["adv"] = g_hinge_loss(self.disc(image.float()))
            self.disc.requires_grad_(True)
            total = total + cfg.w_adv * terms["adv"]
        terms["total"] = total
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(total) if self.scaler is not None else total).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainee.parameters(), clip)
        names = sorted(terms)
        values = torch.stack([terms[k].detach().float().reshape(()) for k in names] + [grad_norm.float().reshape(())])
        if self.ctx.world > 1:
            dist.all_reduce(values)
            values /= self.ctx.world
        logged = dict(zip([*names, "grad_norm"], values.tolist(), strict=True))
        finite_loss = math.isfinite(logged["total"])
        if not finite_loss or (self.scaler is None and not math.isfinite(logged["grad_norm"])):
            self._diverged(logged)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if adversarial:
            logged["d_loss"] = self._disc_step(t["output"], image.detach().float())
        self._update_ema()
        return logged

    def _disc_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        assert self.d_model is not None and self.d_optimizer is not None
        logits = self.d_model(torch.cat([real, fake]))
        loss = d_hinge_loss(*logits.chunk(2))
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.d_optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        student = self.trainee.student
        for e, p in zip(self.ema.parameters(), student.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), student.buffers(), strict=True):
            e.copy_(b)

    def _diverged(self, logged: dict[str, float]) -> None:
        step = self.step + 1
        terms = ", ".join(f"{k}={v:.4g}" for k, v in logged.items())
        where = str(self.last_checkpoint) if self.last_checkpoint else "none (it diverged before the first checkpoint)"
        message = (
            f"non-finite loss or gradient at step {step} ({terms}); the update was not applied and nothing was "
            f"saved. Last good checkpoint: {where}. Lower 'lr' (now {self.cfg.lr:g}) or set 'grad_clip'."
        )
        if self.metrics is not None:
            self.metrics.write(step, "event", {"event": "diverged", **logged})
        raise TrainingDivergedError(message)

    # -- validation, grids, checkpoints ----------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Loss terms and face-region PSNR of the EMA student on up to ``val_samples`` held-out pairs."""
        if self.cfg.val_samples == 0 or not self.split.val_names:
            return {}
        return validate(self.ema, self.loss_fn, iter_split(self.data, self.split, "val", limit=self.cfg.val_samples),
                        self.cfg.batch_size, self.scfg.warp_shape, self.device)  # fmt: skip

    def _grid(self, batch: dict[str, Any]) -> None:
        grid = self.grid.render(self.ema, batch)
        write_png(self.out / "samples" / f"{run_state.step_name(self.step)}.png", grid)
        if self.tb is not None:
            self.tb.image(self.step, "val/identity|attribute|teacher|student pasted|mask", grid)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop_after: int | None) -> RunSummary:
        cfg = self.cfg
        started = time.perf_counter()
        finished = self._finished_summary()
        if finished is not None:
            return finished
        stop_at = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        stopped = "completed" if stop_at == cfg.steps else "stop_after"
        bar = None
        if self.ctx.main and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True, desc="distill")
        batches = self._loader() if self.step < stop_at else iter(())
        train_seconds, trained, window_t, window_n = 0.0, 0, time.perf_counter(), 0
        checkpointed = self.step
        try:
            while self.step < stop_at:
                if stop_requested():  # Ctrl-C / SIGTERM, taken at a step boundary (exact resume)
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                batch = next(batches)
                self.positions[int(batch["_part"])] = (int(batch["_epoch"]), int(batch["_offset"]))
                self.batches += 1
                logged = self._train_step(self._prepare(batch))
                self.step += 1
                self.last_loss = logged["total"]
                train_seconds += time.perf_counter() - t0
                trained += 1
                window_n += 1
                if bar is not None:
                    rate = cfg.batch_size * self.ctx.world * trained / max(train_seconds, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{logged['total']:.4f}", sps=f"{rate:.1f}")
                if self.step % cfg.log_every == 0 and self.ctx.main:
                    now = time.perf_counter()
                    rate = cfg.batch_size * self.ctx.world * window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    values = {**logged, "lr": self.scheduler.get_last_lr()[0], "samples_per_s": rate}
                    assert self.metrics is not None and self.tb is not None
                    self.metrics.write(self.step, "train", values)
                    self.tb.scalars(self.step, {f"train/{k}": v for k, v in values.items()})
                if self.step % cfg.image_every == 0 and self.ctx.main:
                    self._grid(batch)
                if self.step % cfg.checkpoint_every == 0 or self.step == stop_at:
                    self.checkpoint()
                    checkpointed = self.step
        except KeyboardInterrupt:
            stopped = "interrupted"
            if self.ctx.world == 1 and self.step > checkpointed:
                log.warning("interrupted: saving a checkpoint at step %d", self.step)
                self.checkpoint()
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
            del batches
        return self._summary(stopped, train_seconds, trained, time.perf_counter() - started)


def train(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> RunSummary:
    """Distil a student from the paired dataset at ``data`` into the run directory ``out``.

    ``resume``: continue from the newest checkpoint in ``out`` (exactly, given the same config,
    data, world size and worker count). ``stop_after``: stop (with a checkpoint) after this many
    steps of this call; the schedule still spans ``config.steps``. Under ``torchrun`` every rank
    calls this; rank 0 writes the run directory. Raises ConfigError, DatasetError, CheckpointError
    or TrainingDivergedError (all PocketswapError)."""
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be >= 1, got {stop_after}")
    data, out = Path(data), Path(out)
    ctx = setup_distributed(config)
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    if ctx.device.type == "cpu":
        torch.set_num_threads(config.threads or auto_threads(config.num_workers))
    if config.deterministic:
        use_deterministic_algorithms(ctx)
    restore_signals = defer_interrupts() if ctx.world == 1 else None
    try:
        if ctx.main:
            out.mkdir(parents=True, exist_ok=True)
        with exclusive_folder(out) if ctx.main else contextlib.nullcontext():  # one run writes OUT at a time
            trainer = _Trainer(config, data, out, ctx, resume, progress)
            summary = trainer.run(stop_after)
        if ctx.world > 1:
            # The DDP wrappers go before the group they use, and every rank is done with the group before any
            # tears it down: gloo aborted a rank at exit once in CI ("terminate called without an active exception").
            del trainer
            gc.collect()
            dist.barrier()
        log.info("%s at step %d/%d: %.1f samples/s; EMA weights %s", summary.stopped, summary.step, summary.steps,
                 summary.samples_per_s, summary.weights_sha256[:12])  # fmt: skip
        return summary
    finally:
        if restore_signals is not None:
            restore_signals()
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["TrainingDivergedError", "train"]
