"""A reader for dlib's serialized network files (``.dat``): the layers of dlib's face-recognition ResNet, bottom-up,
with their weights as numpy arrays (no dlib, no pickle). :mod:`pocketswap.faces.dlib_resnet` builds the network."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pocketswap.core.errors import CheckpointError


class _Reader:
    """Reads dlib's serialization format from a bytes buffer."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.name}: {what} at byte {self.pos}; not dlib's face-recognition ResNet v1")

    def _take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise CheckpointError(
                f"{self.name}: file is truncated (needs byte {self.pos + count}, has {len(self.data)}); "
                "re-install face-recognition-models or pass a complete file"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def read_int(self) -> int:
        """One control byte (low nibble: number of bytes, 0x80: negative), then little-endian magnitude."""
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            self.pos -= 1
            raise self.fail(f"invalid integer control byte 0x{control:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def read_float(self) -> float:
        """Mantissa and base-2 exponent as two integers."""
        mantissa, exponent = self.read_int(), self.read_int()
        if exponent >= 32000:  # dlib's markers for inf, -inf and nan
            return (float("inf"), float("-inf"), float("nan"))[min(exponent - 32000, 2)]
        return float(mantissa) * 2.0**exponent

    def read_str(self) -> str:
        size = self.read_int()
        if not 0 <= size < 256:
            raise self.fail(f"implausible string length {size}")
        raw = self._take(size)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-ASCII string") from None

    def read_bool(self) -> bool:
        raw = self._take(1)
        if raw not in (b"0", b"1"):
            self.pos -= 1
            raise self.fail(f"invalid boolean byte {raw!r}")
        return raw == b"1"

    def read_tensor(self) -> np.ndarray:
        """Version 2, dims (n, k, nr, nc), then raw little-endian float32."""
        if (version := self.read_int()) != 2:
            raise self.fail(f"unsupported tensor version {version}")
        dims = tuple(self.read_int() for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dims {dims}")
        count = int(np.prod(dims))
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(dims)

    def read_alias(self) -> tuple[int, ...]:
        """An alias_tensor: version 1 and its dims (n, k, nr, nc)."""
        if (version := self.read_int()) != 1:
            raise self.fail(f"unsupported alias_tensor version {version}")
        return tuple(self.read_int() for _ in range(4))

    def expect_str(self, expected: str) -> None:
        start = self.pos
        found = self.read_str()
        if found != expected:
            self.pos = start
            raise self.fail(f"expected '{expected}', found '{found}'")


@dataclass
class DatLayer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    ints: dict[str, int] = field(default_factory=dict)


def _read_layer(r: _Reader) -> DatLayer:
    tag = r.read_str()
    if tag == "con_4":
        params = r.read_tensor()
        names = ("num_filters", "nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
        ints = {name: r.read_int() for name in names}
        filters, biases = r.read_alias(), r.read_alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.read_float()
        n_weights = int(np.prod(filters))
        flat = params.reshape(-1)
        nf = ints["num_filters"]
        if filters[0] != nf or filters[2:] != (ints["nr"], ints["nc"]) or flat.size != n_weights + nf:
            raise r.fail(f"inconsistent con_ layer (filters {filters}, biases {biases}, {flat.size} params)")
        weight = flat[:n_weights].reshape(filters)
        return DatLayer("con", {"weight": weight, "bias": flat[n_weights:]}, ints)
    if tag == "affine_":
        params = r.read_tensor().reshape(-1)
        gamma, beta = r.read_alias(), r.read_alias()
        mode = r.read_int()
        k = gamma[1]
        if mode != 0 or params.size != 2 * k or beta[1] != k:
            raise r.fail(f"unsupported affine_ layer (mode {mode}, gamma {gamma}, {params.size} params)")
        return DatLayer("affine", {"gamma": params[:k], "beta": params[k:]})
    if tag in ("max_pool_2", "avg_pool_2"):
        names = ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
        return DatLayer(tag[:-2], ints={name: r.read_int() for name in names})
    if tag in ("relu_", "add_prev_"):
        return DatLayer(tag[:-1])
    if tag == "fc_2":
        num_outputs, num_inputs = r.read_int(), r.read_int()
        params = r.read_tensor()
        weights, _biases = r.read_alias(), r.read_alias()
        bias_mode = r.read_int()
        for _ in range(4):
            r.read_float()
        if bias_mode != 1 or weights[:2] != (num_inputs, num_outputs) or params.size != num_inputs * num_outputs:
            raise r.fail(f"unsupported fc_ layer (bias mode {bias_mode}, weights {weights}, {params.size} params)")
        return DatLayer("fc", {"weight": params.reshape(num_inputs, num_outputs)})
    raise r.fail(f"unexpected layer tag '{tag}'")


def parse_dat(data: bytes, name: str, chip_size: int) -> tuple[list[DatLayer], tuple[float, float, float]]:
    """Layers bottom-up (input side first) and the input mean, read from the serialized network (whose input
    must be ``chip_size`` square).

    dlib writes the loss layer, then every layer's version number top-down (2 for a computational
    layer, 1 for tag/skip layers, 3 for the bottom layer that owns the input layer), then the input
    layer and each computational layer's details bottom-up, each followed by its runtime state."""
    r = _Reader(data, name)
    if r.read_int() != 1:
        raise r.fail("unexpected file version")
    r.expect_str("loss_metric_2")
    for _ in range(2):  # margin and distance threshold (training only)
        r.read_float()
    input_tag = b"\x01\x15input_rgb_image_sized"
    versions = []
    while not data.startswith(input_tag, r.pos):
        versions.append(r.read_int())
        if len(versions) > 1000 or versions[-1] not in (1, 2, 3):
            raise r.fail("unexpected network structure")
    if not versions or versions[-1] != 3 or 3 in versions[:-1]:
        raise r.fail("unexpected network structure")
    r.expect_str("input_rgb_image_sized")
    mean = (r.read_float(), r.read_float(), r.read_float())
    if (size := (r.read_int(), r.read_int())) != (chip_size, chip_size):
        raise r.fail(f"input size {size}, expected {chip_size}x{chip_size}")
    layers = []
    for index in range(sum(v in (2, 3) for v in versions)):
        layers.append(_read_layer(r))
        for _ in range(3):  # flags: setup done, gradient stale, output disabled
            r.read_bool()
        for _ in range(3):  # runtime buffers (empty in a saved model)
            r.read_tensor()
        if index == 0:
            r.read_int()  # sample expansion factor of the input-owning layer
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    return layers, mean
