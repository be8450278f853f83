"""Piecewise-affine warps over a triangulated landmark mesh, fully vectorised.

A `MeshWarp` is built once for a destination geometry: it rasterises each triangle's id into a
map (one `cv2.fillConvexPoly` per triangle), so warping any source image that carries the same
landmarks costs one batched affine solve, one per-pixel gather and one `cv2.remap`.

`warp_identity` is the one definition of the warped-identity input of students with
``identity_warp``: the identity crop's texture moved onto the frame's 468 landmarks (crop pixels).
Training pairs, evaluation, export parity and the live pipeline all call it.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

SUBPIXEL_BITS = 4


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


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    grid_x.setflags(write=False)
    grid_y.setflags(write=False)
    return grid_x, grid_y


def _affines(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T, 2, 3) matrices mapping each destination triangle onto its source triangle."""
    ones = np.ones((len(triangles), 1, 3))
    dst_h = np.concatenate([dst[triangles].transpose(0, 2, 1), ones], axis=1)  # (T, 3, 3) columns = vertices
    src_t = src[triangles].transpose(0, 2, 1)  # (T, 2, 3)
    det = np.linalg.det(dst_h)
    good = np.abs(det) > 1e-6
    inverse = np.empty_like(dst_h)
    inverse[good] = np.linalg.inv(dst_h[good])
    if not good.all():  # degenerate (zero-area) triangles: least-squares map
        inverse[~good] = np.linalg.pinv(dst_h[~good])
    return src_t @ inverse


class MeshWarp:
    """Warps images from any source geometry onto one destination geometry.

    dst: (N, 2+) destination points in pixels; triangles: (T, 3) indices (default: Delaunay of dst);
    shape: (height, width) of the output. Pixels outside every triangle keep their own coordinates.
    """

    def __init__(self, dst: np.ndarray, shape: tuple[int, int], triangles: np.ndarray | None = None) -> None:
        self.dst = np.asarray(dst, dtype=np.float64)[:, :2]
        self.shape = (int(shape[0]), int(shape[1]))
        self.triangles = triangulate(self.dst) if triangles is None else np.asarray(triangles, np.int32)
        ids = np.zeros(self.shape, dtype=np.uint16)
        fixed = np.round(self.dst * (1 << SUBPIXEL_BITS)).astype(np.int32)
        for index, tri in enumerate(self.triangles):
            cv2.fillConvexPoly(ids, fixed[tri], index + 1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        self.inside = ids > 0
        ys, xs = np.nonzero(self.inside)
        self._ys, self._xs = ys, xs
        self._tid = ids[ys, xs].astype(np.int64) - 1
        self._xy1 = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)  # (P, 3)
        self._grid = _pixel_grid(*self.shape)

    def maps(self, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`cv2.remap` maps (float32 HxW x and y) sampling source points for each output pixel."""
        matrices = _affines(np.asarray(src, dtype=np.float64)[:, :2], self.dst, self.triangles)
        per_pixel = matrices[self._tid]  # (P, 2, 3)
        coords = np.einsum("pij,pj->pi", per_pixel, self._xy1)
        map_x, map_y = self._grid[0].copy(), self._grid[1].copy()
        map_x[self._ys, self._xs] = coords[:, 0]
        map_y[self._ys, self._xs] = coords[:, 1]
        return map_x, map_y

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


@lru_cache(maxsize=64)
def _triangles_of(points: bytes, count: int) -> np.ndarray:
    return triangulate(np.frombuffer(points, np.float64).reshape(count, 2))


def warp_identity(identity: np.ndarray, identity_landmarks: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The SxSx3 identity crop mesh-warped so that its features (at ``identity_landmarks``, (468, 2+)
    crop pixels) sit at ``landmarks`` (the attribute face's, same crop frame); pixels outside the
    face mesh keep the identity crop's own. The mesh is the Delaunay triangulation of the identity's
    landmarks (computed once per identity), so a frame costs one rasterisation and one (bicubic: the crop
    is at the face's own scale, where a bilinear remap's sub-pixel shifts blur) remap."""
    source = np.ascontiguousarray(np.asarray(identity_landmarks, np.float64)[:, :2])
    landmarks = np.asarray(landmarks, np.float64)[:, :2]
    if not np.isfinite(landmarks).all() or landmarks.shape != source.shape:
        raise ValueError(
            f"landmarks must be finite and shaped like the identity's {source.shape}, got {landmarks.shape}"
        )
    triangles = _triangles_of(source.tobytes(), len(source))
    return MeshWarp(landmarks, identity.shape[:2], triangles).warp(identity, source, cv2.INTER_CUBIC)
