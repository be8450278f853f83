"""Piecewise-affine warps over a triangulated landmark mesh.

A warp rasterises the destination mesh once (:func:`pocketswap.faces.raster.mesh_maps`, a compiled
software version of one textured-mesh draw) into `cv2.remap` maps, then remaps the source image.

`warp_identity` is the one definition of the warped-identity input of students with
``identity_warp``: the identity crop's texture moved onto the frame's 468 landmarks (crop pixels).
Training pairs, evaluation, export parity and the live pipeline all call it.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from pocketswap.faces.raster import mesh_maps
from pocketswap.faces.shape import transfer_shape


def triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles (T, 3) int32 of (N, 2+) points; coincident points are left out."""
    from scipy.spatial import Delaunay

    return Delaunay(np.asarray(points, dtype=np.float64)[:, :2]).simplices.astype(np.int32)


def border_anchors(height: int, width: int, per_side: int = 4) -> np.ndarray:
    """(4 * per_side, 2) fixed points along the image border (corners included), so a triangulation
    of landmarks + anchors covers the whole image."""
    t = np.linspace(0.0, 1.0, per_side + 1)[:-1]
    x1, y1 = width - 1.0, height - 1.0
    top = np.stack([t * x1, np.zeros_like(t)], 1)
    right = np.stack([np.full_like(t, x1), t * y1], 1)
    bottom = np.stack([(1 - t) * x1, np.full_like(t, y1)], 1)
    left = np.stack([np.zeros_like(t), (1 - t) * y1], 1)
    return np.concatenate([top, right, bottom, left]).astype(np.float32)


class MeshWarp:
    """Warps images from any source geometry onto one destination geometry.

    dst: (N, 2+) destination points in pixels; triangles: (T, 3) indices (default: Delaunay of dst);
    shape: (height, width) of the output. Pixels outside every triangle keep their own coordinates
    (the rasteriser's rule: :mod:`pocketswap.faces.raster`).
    """

    def __init__(self, dst: np.ndarray, shape: tuple[int, int], triangles: np.ndarray | None = None) -> None:
        self.dst = np.asarray(dst, dtype=np.float64)[:, :2]
        self.shape = (int(shape[0]), int(shape[1]))
        self.triangles = triangulate(self.dst) if triangles is None else np.asarray(triangles, np.int32)

    @property
    def inside(self) -> np.ndarray:
        """HxW bool: the pixels the destination mesh covers."""
        return mesh_maps(self.dst, self.dst, self.triangles, self.shape)[2] > 0

    def maps(self, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`cv2.remap` maps (float32 HxW x and y) sampling source points for each output pixel."""
        return mesh_maps(src, self.dst, self.triangles, self.shape)[:2]

    def warp(
        self,
        image: np.ndarray,
        src: np.ndarray,
        interpolation: int = cv2.INTER_LINEAR,
        border: int = cv2.BORDER_REFLECT101,
    ) -> np.ndarray:
        """`image` (whose features sit at `src`) warped so they sit at the destination points."""
        map_x, map_y = self.maps(src)
        return cv2.remap(image, map_x, map_y, interpolation, borderMode=border)


def warp_with_anchors(image: np.ndarray, src: np.ndarray, dst: np.ndarray, per_side: int = 4) -> np.ndarray:
    """Warp a whole image so that points `src` move to `dst`; the image border stays fixed."""
    height, width = image.shape[:2]
    anchors = border_anchors(height, width, per_side)
    src_all = np.concatenate([np.asarray(src, np.float32)[:, :2], anchors])
    dst_all = np.concatenate([np.asarray(dst, np.float32)[:, :2], anchors])
    return MeshWarp(dst_all, (height, width)).warp(image, src_all)


@lru_cache(maxsize=256)  # a training set's identities
def _delaunay(landmarks: bytes) -> np.ndarray:
    return triangulate(np.frombuffer(landmarks, np.float64).reshape(-1, 2))


def warp_identity(
    identity: np.ndarray,
    identity_landmarks: np.ndarray,
    landmarks: np.ndarray,
    triangles: np.ndarray | None = None,
    shape: float = 0.0,
) -> np.ndarray:
    """The SxSx3 identity crop mesh-warped so that its features (at ``identity_landmarks``, (468, 2+)
    crop pixels) sit at ``landmarks`` (the attribute face's, same crop frame) moved ``shape`` of the way
    to the identity's own face shape (:func:`pocketswap.faces.shape.transfer_shape`); pixels outside the
    face mesh keep the identity crop's own. The mesh's ``triangles`` ((T, 3) landmark indices, fixed per
    identity: an artifact's manifest stores them) default to the Delaunay triangulation of the identity's
    landmarks. A frame costs one rasterisation of the frame's mesh and one (bicubic: the crop is at the
    face's own scale, where a bilinear remap's sub-pixel shifts blur) remap of the texture."""
    source = np.ascontiguousarray(np.asarray(identity_landmarks, np.float64)[:, :2])
    landmarks = np.asarray(landmarks, np.float64)[:, :2]
    if not np.isfinite(landmarks).all() or landmarks.shape != source.shape:
        raise ValueError(
            f"landmarks must be finite and shaped like the identity's {source.shape}, got {landmarks.shape}"
        )
    if shape:
        landmarks = transfer_shape(source, landmarks, shape).astype(np.float64)
    mesh = _delaunay(source.tobytes()) if triangles is None else triangles
    map_x, map_y, _ = mesh_maps(source, landmarks, mesh, identity.shape[:2])
    return cv2.remap(identity, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
