"""dlib's face-recognition ResNet (128-d, CC0 weights) re-implemented in PyTorch.

The weights come from `dlib_face_recognition_resnet_model_v1.dat` of the `face-recognition-models`
package, parsed here directly (no dlib, no pickle, no network). The network is the ResNet-29 of
dlib's `dnn_face_recognition_ex`: a 150x150 RGB chip made by `get_face_chip(size=150, padding=0.25)`,
mean-subtracted and divided by 256, gives a 128-d descriptor; two descriptors closer than 0.6
(Euclidean) are dlib's "same person".

The model is differentiable with respect to its input, so `DlibEncoder.embed_chip_tensor` can serve
as an identity loss.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pocketswap.core.errors import CheckpointError
from pocketswap.faces.dlib_dat import DatLayer, parse_dat
from pocketswap.faces.identity import as_chip_batch

logger = logging.getLogger(__name__)

# 5-point template of a dlib 150 px chip (`get_face_chip(size=150, padding=0.25)` aligned with the
# 5-point shape predictor), in chip pixels (pixel centres at integer coordinates), in ArcFace order:
# image-left eye centre, image-right eye centre, nose tip, image-left mouth corner, image-right mouth
# corner. Derived empirically with dlib 20.0: on the 96 bundled sample faces dlib detects (astronaut,
# grace_hopper, 94 lfw faces), dlib's 68-point predictor was run on the original image, its points
# mapped into each chip through the chip's exact image->chip transform (fitted to coordinate maps
# sampled with `extract_image_chip`, residual < 1e-12 px), then averaged over faces: eye centre = mean
# of the 6 eye points (36-41, 42-47), nose tip = point 30, mouth corners = points 48 and 54. Per-face
# standard deviation: eyes 1.5 px, nose tip 5.3 px, mouth corners 5-6 px. Not mirror-symmetrised on
# purpose: dlib's chips put the eyes' midpoint at x = 73.6, not at the centre 74.5 (the 5-point
# eye corners average there too).
DLIB_CHIP_TEMPLATE_150: list[list[float]] = [
    [46.98, 46.71],
    [100.13, 46.11],
    [71.62, 75.32],
    [50.66, 104.02],
    [98.35, 103.79],
]

EMBEDDING_DIM = 128
CHIP_SIZE = 150
# dlib's input layer: the per-channel mean the .dat file stores (R, G, B) subtracted, then divided by 256.
INPUT_SCALE = 256.0
# dlib's documented decision threshold on raw descriptors (Euclidean distance).
DLIB_EUCLIDEAN_THRESHOLD = 0.6
# Raw dlib descriptors are NOT unit norm: 1.25 to 1.51 on the 96 sample faces dlib detects, mean
# squared norm 1.90. For two descriptors of norms |a| ~ |b| ~ r, |a - b|^2 ~ 2 r^2 (1 - cos), so
# dlib's rule |a - b| < 0.6 becomes 1 - cos < 0.6^2 / (2 * 1.90) = 0.095 on L2-normalised embeddings.
# The naive unit-norm value 0.6^2 / 2 = 0.18 would accept 89% of the different-face sample pairs
# (dlib itself accepts 7.5% of those blurry LFW thumbnails). Measured on those faces (4560
# different-face pairs plus 384 flip/rescale/JPEG/rotate pairs of the same face), 0.095 agrees with
# dlib's Euclidean decision on 98% of pairs and is the best-agreeing cosine threshold.
RAW_DESCRIPTOR_MEAN_SQUARED_NORM = 1.90
# Same person if the cosine distance (1 - cos) of L2-normalised embeddings is below this.
SAME_PERSON_THRESHOLD = round(DLIB_EUCLIDEAN_THRESHOLD**2 / (2.0 * RAW_DESCRIPTOR_MEAN_SQUARED_NORM), 3)

MODEL_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"

# Channel width of each residual block, bottom-up, and whether it downsamples (dnn_face_recognition_ex:
# 3x32, then 64 down + 3x64, 128 down + 2x128, 256 down + 2x256, 256 down).
_EXPECTED_BLOCKS: tuple[tuple[int, bool], ...] = (
    (32, False),
    (32, False),
    (32, False),
    (64, True),
    (64, False),
    (64, False),
    (64, False),
    (128, True),
    (128, False),
    (128, False),
    (256, True),
    (256, False),
    (256, False),
    (256, True),
)


def default_model_path() -> Path:
    """Path of the `.dat` file inside the installed `face-recognition-models` package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the dlib face-recognition weights are missing: install `face-recognition-models` "
            "(pip install face-recognition-models==0.3.0) or pass the path of " + MODEL_FILENAME
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / MODEL_FILENAME
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{MODEL_FILENAME} not found in the face_recognition_models package")


# ----------------------------------------------------------------------------------------------- model


def _fold(con: DatLayer, affine: DatLayer) -> tuple[np.ndarray, np.ndarray]:
    """Fold a per-channel affine (gamma * x + beta) into the preceding convolution."""
    gamma, beta = affine.arrays["gamma"], affine.arrays["beta"]
    if gamma.size != con.ints["num_filters"]:
        raise CheckpointError(f"affine of {gamma.size} channels after a {con.ints['num_filters']}-filter convolution")
    weight = con.arrays["weight"] * gamma[:, None, None, None]
    bias = con.arrays["bias"] * gamma + beta
    return weight.astype(np.float32), bias.astype(np.float32)


def _conv_from(con: DatLayer, affine: DatLayer) -> nn.Conv2d:
    weight, bias = _fold(con, affine)
    i = con.ints
    conv = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        (i["nr"], i["nc"]),
        stride=(i["stride_y"], i["stride_x"]),
        padding=(i["pad_y"], i["pad_x"]),
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        conv.bias.copy_(torch.from_numpy(bias))
    return conv


def _padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: sum over the larger shape, the smaller operand zero-padded at the end (C, H, W)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _ResBlock(nn.Module):
    """conv-affine-relu-conv-affine, plus the input (2x2 average-pooled when downsampling), then relu."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, downsample: bool) -> None:
        super().__init__()
        self.conv1, self.conv2, self.downsample = conv1, conv2, downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(_padded_add(y, skip))


class DlibResNet(nn.Module):
    """dlib's ResNet-29 face descriptor. Affine (frozen batch-norm) layers are folded into the convolutions."""

    def __init__(self, layers: list[DatLayer], mean: tuple[float, float, float]) -> None:
        super().__init__()
        kinds = [layer.kind for layer in layers]
        stem = kinds[:4]
        if stem != ["con", "affine", "relu", "max_pool"]:
            raise CheckpointError(f"unexpected stem {stem}")
        self.stem = _conv_from(layers[0], layers[1])
        pool = layers[3].ints
        self.pool_args = (pool["nr"], pool["stride_y"], pool["pad_y"])
        blocks, pos = [], 4
        plain = ["con", "affine", "relu", "con", "affine", "add_prev", "relu"]
        down = ["con", "affine", "relu", "con", "affine", "avg_pool", "add_prev", "relu"]
        while pos < len(layers) and kinds[pos] == "con":
            is_down = kinds[pos : pos + 8] == down
            if not is_down and kinds[pos : pos + 7] != plain:
                raise CheckpointError(f"unexpected residual block at layer {pos}: {kinds[pos : pos + 8]}")
            if is_down and (layers[pos + 5].ints["nr"], layers[pos + 5].ints["stride_y"]) != (2, 2):
                raise CheckpointError(f"unexpected skip pooling at layer {pos + 5}")
            conv1, conv2 = _conv_from(layers[pos], layers[pos + 1]), _conv_from(layers[pos + 3], layers[pos + 4])
            blocks.append(_ResBlock(conv1, conv2, is_down))
            pos += 8 if is_down else 7
        found = tuple((b.conv2.out_channels, b.downsample) for b in blocks)
        if found != _EXPECTED_BLOCKS:
            raise CheckpointError(f"unexpected residual blocks {found}; expected {_EXPECTED_BLOCKS}")
        self.blocks = nn.Sequential(*blocks)
        if kinds[pos:] != ["avg_pool", "fc"] or layers[pos].ints["nr"] != 0:
            raise CheckpointError(f"unexpected head {kinds[pos:]}")
        fc = layers[pos + 1].arrays["weight"]  # (inputs, outputs)
        if fc.shape != (256, EMBEDDING_DIM):
            raise CheckpointError(f"unexpected descriptor layer {fc.shape}")
        self.fc = nn.Linear(fc.shape[0], fc.shape[1], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(fc.T)))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def features(self, chips: torch.Tensor) -> torch.Tensor:
        """Bx3x150x150 RGB in 0..255 -> Bx256 pooled features of the last residual block (the layer under
        the descriptor: what a face-specific Fréchet distance compares)."""
        if chips.dim() != 4 or tuple(chips.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"expected chips of shape Bx3x{CHIP_SIZE}x{CHIP_SIZE}, got {tuple(chips.shape)}")
        x = (chips - self.mean) / INPUT_SCALE
        x = F.relu(self.stem(x))
        kernel, stride, padding = self.pool_args
        x = F.max_pool2d(x, kernel, stride, padding)
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, chips: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Bx3x150x150 RGB in 0..255 -> Bx128 raw dlib descriptors (L2-normalised if `normalize`)."""
        descriptor = self.fc(self.features(chips))
        return F.normalize(descriptor, dim=1) if normalize else descriptor


@lru_cache(maxsize=2)
def _parsed(path: str, size: int, mtime_ns: int) -> tuple[list[DatLayer], tuple[float, float, float]]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read dlib face-recognition model '{path}': {exc.strerror}") from None
    layers, mean = parse_dat(data, Path(path).name, CHIP_SIZE)
    logger.debug("parsed %s: %d layers", path, len(layers))
    return layers, mean


def load_dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """Build the descriptor network from dlib's `.dat` (default: the one in `face-recognition-models`).

    Raises `CheckpointError` when the file is missing, truncated or not this network. Parsed
    weights are cached per file; each call returns a new module in eval mode."""
    path = Path(path) if path is not None else default_model_path()
    try:
        stat = path.stat()
    except OSError as exc:
        raise CheckpointError(f"cannot read dlib face-recognition model '{path}': {exc.strerror}") from None
    if not path.is_file():
        raise CheckpointError(f"dlib face-recognition model '{path}' is not a file")
    layers, mean = _parsed(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return DlibResNet(layers, mean)


# --------------------------------------------------------------------------------------------- encoder


class DlibEncoder:
    """L2-normalised 128-d identity embeddings from dlib 150 px chips (the `"dlib"` alignment template).

    `same_person_threshold` (0.095) is the cosine distance (1 - cos) equivalent to dlib's 0.6
    Euclidean threshold on raw descriptors; see `SAME_PERSON_THRESHOLD` for its derivation.
    The network's weights are frozen; gradients flow to the input of `embed_chip_tensor`."""

    embedding_dim = EMBEDDING_DIM
    chip_size = CHIP_SIZE
    template = "dlib"
    same_person_threshold = SAME_PERSON_THRESHOLD

    def __init__(
        self, path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> None:
        self.model = load_dlib_resnet(path).to(device)
        self.model.requires_grad_(False)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.model.mean.device

    def to(self, device: str | torch.device) -> DlibEncoder:
        self.model.to(device)
        return self

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """(B, 150, 150, 3) or (150, 150, 3) uint8 RGB chips -> (B, 128) float32 L2-normalised."""
        return self._run(chips, normalize=True)

    def raw_descriptors(self, chips: np.ndarray) -> np.ndarray:
        """Like `embed_chips` but dlib's raw descriptors (not unit norm; dlib's rule: same if closer than 0.6)."""
        return self._run(chips, normalize=False)

    def penultimate(self, chips: np.ndarray) -> np.ndarray:
        """(B, 256) features under the descriptor layer (:meth:`DlibResNet.features`) of uint8 RGB chips."""
        return self._run(chips, normalize=False, head=self.model.features, width=256)

    def _run(self, chips: np.ndarray, normalize: bool, head=None, width: int = EMBEDDING_DIM) -> np.ndarray:
        chips = as_chip_batch(chips, CHIP_SIZE)
        out = [torch.zeros(0, width)]
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(chips[start : start + self.batch_size]))
                batch = batch.to(self.device).permute(0, 3, 1, 2).float()
                out.append((head(batch) if head is not None else self.model(batch, normalize=normalize)).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def embed_chip_tensor(self, chips: torch.Tensor) -> torch.Tensor:
        """Differentiable: Bx3xHxW (or 3xHxW) RGB in [-1, 1], aligned to the dlib template, -> (B, 128)
        L2-normalised. Other sizes are resized to 150 bilinearly (antialiased when shrinking)."""
        if chips.dim() == 3:
            chips = chips.unsqueeze(0)
        if chips.dim() != 4 or chips.shape[1] != 3:
            raise ValueError(f"expected Bx3xHxW RGB chips, got {tuple(chips.shape)}")
        x = (chips.to(self.device, torch.float32) + 1.0) * 127.5
        if tuple(x.shape[2:]) != (CHIP_SIZE, CHIP_SIZE):
            shrink = min(x.shape[2:]) > CHIP_SIZE
            x = F.interpolate(x, size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False, antialias=shrink)
        return self.model(x, normalize=True)

    def cosine_distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine distance between rows of `a` and `b` (broadcast): :func:`pocketswap.core.metrics.cosine_distance`."""
        from pocketswap.core.metrics import cosine_distance

        return cosine_distance(a, b)

    def is_same_person(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | bool:
        """True where the embeddings are closer than `same_person_threshold`."""
        from pocketswap.core.metrics import same_person

        return same_person(self.cosine_distance(a, b), self.same_person_threshold)


__all__ = [
    "CHIP_SIZE",
    "DLIB_CHIP_TEMPLATE_150",
    "DLIB_EUCLIDEAN_THRESHOLD",
    "EMBEDDING_DIM",
    "SAME_PERSON_THRESHOLD",
    "DlibEncoder",
    "DlibResNet",
    "default_model_path",
    "load_dlib_resnet",
]
