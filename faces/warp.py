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

from pocketswap.faces.shape import transfer_shape

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
    """(T, 2, 3) matrices mapping each destination triangle onto its source triangle (closed form;
    degenerate, zero-area destination triangles get a least-squares map)."""
    (x0, y0), (x1, y1), (x2, y2) = (dst[triangles[:, k]].T for k in range(3))
    (u0, v0), (u1, v1), (u2, v2) = (src[triangles[:, k]].T for k in range(3))
    ax, ay, bx, by = x1 - x0, y1 - y0, x2 - x0, y2 - y0  # destination edge vectors
    det = ax * by - bx * ay
    good = np.abs(det) > 1e-6
    inv = 1.0 / np.where(good, det, 1.0)
    out = np.empty((len(triangles), 2, 3))
    for row, (s0, s1, s2) in enumerate(((u0, u1, u2), (v0, v1, v2))):
        su, sv = s1 - s0, s2 - s0  # the source's edge vectors, this coordinate
        out[:, row, 0] = (su * by - sv * ay) * inv
        out[:, row, 1] = (sv * ax - su * bx) * inv
        out[:, row, 2] = s0 - out[:, row, 0] * x0 - out[:, row, 1] * y0
    if not good.all():
        ones = np.ones((int((~good).sum()), 1, 3))
        dst_h = np.concatenate([dst[triangles[~good]].transpose(0, 2, 1), ones], axis=1)
        out[~good] = src[triangles[~good]].transpose(0, 2, 1) @ np.linalg.pinv(dst_h)
    return out


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
        self.triangle_map = ids.astype(np.int32) - 1  # each pixel's triangle, -1 outside the mesh
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


def triangle_neighbours(triangles: np.ndarray) -> np.ndarray:
    """(T, 3) int32: the triangle across the edge opposite each vertex of each triangle, -1 on the mesh border."""
    triangles = np.asarray(triangles, np.int64)
    count = int(triangles.max()) + 1
    edges = np.stack([triangles[:, [1, 2]], triangles[:, [2, 0]], triangles[:, [0, 1]]], axis=1)  # (T, 3, 2)
    keys = (edges.min(-1) * count + edges.max(-1)).ravel()
    order = np.argsort(keys, kind="stable")
    shared = keys[order][1:] == keys[order][:-1]  # an inner edge appears twice, a border edge once
    neighbours = np.full(keys.shape, -1, np.int64)
    first, second = order[:-1][shared], order[1:][shared]
    neighbours[first], neighbours[second] = second // 3, first // 3
    return neighbours.reshape(-1, 3).astype(np.int32)


def _edge_distances(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T, 9) float32: per triangle of ``points``, rows ``[d0 | d1 | d2]`` of ``(x, y, 1)`` coefficients giving
    a pixel's signed distance (pixels, positive inside) to the edge opposite each vertex (closed form; a
    degenerate triangle gives -inf-like distances, so no pixel is in it)."""
    a, b, c = (points[triangles[:, k]] for k in range(3))
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    good = np.abs(cross) > 1e-6
    sign = np.where(cross < 0, -1.0, 1.0)
    columns = []
    for p, q in ((b, c), (c, a), (a, b)):  # the line through p and q, its normal pointing at the third vertex
        length = np.maximum(np.hypot(p[:, 0] - q[:, 0], p[:, 1] - q[:, 1]), 1e-9)
        scale = np.where(good, sign / length, 0.0)
        columns += [(p[:, 1] - q[:, 1]) * scale, (q[:, 0] - p[:, 0]) * scale,
                    np.where(good, (p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]) * scale, -1e6)]  # fmt: skip
    return np.stack(columns, 1).astype(np.float32)


def _distances(rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, P) signed edge distances of pixels (x, y) from their triangles' rows (P, 9) of
    :func:`_edge_distances`, and each pixel's smallest (row by row: numpy's axis reductions are slow on 3 rows)."""
    out = np.empty((3, len(x)), np.float32)
    for k in range(3):
        out[k] = rows[:, 3 * k] * x + rows[:, 3 * k + 1] * y + rows[:, 3 * k + 2]
    return out, np.minimum(np.minimum(out[0], out[1]), out[2])


class TextureWarp:
    """Moves a texture of one geometry (an identity crop's landmarks) onto any other, with fixed triangles.

    Built once per texture geometry: its triangles are rasterised *in texture space*, every crop pixel
    labelled with its (nearest) triangle. A frame's pixel (only those in the hull of the frame's points) guesses
    its triangle from that label map, at the place where it lands when moved like the landmarks around it
    (a coarse displacement grid), and a short vectorised walk across triangle edges corrects the guesses
    that were wrong: a closed-form solve per triangle, a few array operations per pixel and one remap, no
    per-triangle Python loop. Pixels outside the frame's mesh keep the texture's own; the result is
    :class:`MeshWarp`'s with the same triangles within half a grey level on average (they differ on pixels on
    an edge, most of all where the frame's mesh folds)."""

    EDGE = 0.5  # a pixel this close outside a triangle is in it (as a polygon rasteriser draws it; the map is
    # continuous, so the neighbour's affine differs by a hair there) and outside the mesh border, in the mesh
    MAX_STEPS = 6  # edge crossings per pixel; one still outside its triangle then is in the hull, not the mesh
    CELL = 8  # pixels per cell of the displacement grid

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, int], triangles: np.ndarray | None = None) -> None:
        from scipy import ndimage

        self.shape = (int(shape[0]), int(shape[1]))
        self.source = np.ascontiguousarray(np.asarray(landmarks, np.float64)[:, :2])
        self.triangles = triangulate(self.source) if triangles is None else np.asarray(triangles, np.int32)
        self.neighbours = triangle_neighbours(self.triangles)
        label = MeshWarp(self.source, self.shape, self.triangles).triangle_map
        nearest = ndimage.distance_transform_edt(label < 0, return_distances=False, return_indices=True)
        self.label = label[nearest[0], nearest[1]]  # outside the mesh: the nearest pixel's triangle
        self._grid = (-(-self.shape[0] // self.CELL), -(-self.shape[1] // self.CELL))  # rows, columns

    def _displacement(self, dst: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How far the texture is from the frame's geometry at pixels (ys, xs): the landmark displacements
        averaged over each pixel's grid cell and its neighbours (the overall mean where no landmark is near)."""
        rows, cols = self._grid
        cell = np.minimum(dst[:, 1] // self.CELL, rows - 1).clip(0).astype(np.int64) * cols + np.minimum(
            dst[:, 0] // self.CELL, cols - 1
        ).clip(0).astype(np.int64)
        moved = self.source - dst

        def spread(values: np.ndarray | None) -> np.ndarray:
            grid = np.bincount(cell, values, rows * cols).reshape(rows, cols).astype(np.float32)
            return cv2.boxFilter(grid, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT).ravel()

        count = spread(None) + 0.5
        at = (ys // self.CELL) * cols + xs // self.CELL
        return tuple(((spread(moved[:, k]) + 0.5 * moved[:, k].mean()) / count)[at] for k in (0, 1))

    def maps(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`cv2.remap` maps (float32 HxW x and y) sampling the texture for each pixel of the frame's geometry."""
        dst = np.asarray(landmarks, np.float64)[:, :2]
        height, width = self.shape
        edges = _edge_distances(dst, self.triangles)
        hull = np.zeros(self.shape, np.uint8)  # every triangle lies in the hull of its points: only pixels there
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(dst * 16).astype(np.int32)), 1, cv2.LINE_8, SUBPIXEL_BITS)
        ys, xs = np.nonzero(hull)
        shift_x, shift_y = self._displacement(dst, ys, xs)
        tri = self.label[np.clip(np.rint(ys + shift_y), 0, height - 1).astype(np.int64),
                         np.clip(np.rint(xs + shift_x), 0, width - 1).astype(np.int64)]  # fmt: skip
        x, y = xs.astype(np.float32), ys.astype(np.float32)
        distances, least = _distances(edges[tri], x, y)
        todo = np.flatnonzero(least < -self.EDGE)
        for _ in range(self.MAX_STEPS):
            if not len(todo):
                break
            step = self.neighbours[tri[todo], distances[:, todo].argmin(0)]
            tri[todo[step < 0]] = -1  # walked out across the mesh border
            todo, step = todo[step >= 0], step[step >= 0]
            tri[todo] = step
            distances[:, todo], least = _distances(edges[step], x[todo], y[todo])
            todo = todo[least < -self.EDGE]
        tri[todo] = -1  # still outside every triangle it crossed: in the hull, not the mesh
        inside = tri >= 0
        affine = _affines(self.source, dst, self.triangles).reshape(-1, 6).astype(np.float32)[tri[inside]]
        xi, yi = x[inside], y[inside]
        map_x, map_y = (grid.copy() for grid in _pixel_grid(height, width))
        map_x[ys[inside], xs[inside]] = affine[:, 0] * xi + affine[:, 1] * yi + affine[:, 2]
        map_y[ys[inside], xs[inside]] = affine[:, 3] * xi + affine[:, 4] * yi + affine[:, 5]
        return map_x, map_y

    def warp(self, image: np.ndarray, landmarks: np.ndarray, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
        """``image`` (the texture, features at this warp's landmarks) with its features moved to ``landmarks``."""
        map_x, map_y = self.maps(landmarks)
        return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT101)


@lru_cache(maxsize=256)  # a training set's identities (a few hundred KB each at 224 px)
def _texture_warp(landmarks: bytes, shape: tuple[int, int], triangles: bytes | None) -> TextureWarp:
    points = np.frombuffer(landmarks, np.float64).reshape(-1, 2)
    return TextureWarp(points, shape, None if triangles is None else np.frombuffer(triangles, np.int32).reshape(-1, 3))


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
    landmarks; they are rasterised once per identity (:class:`TextureWarp`), so a frame costs a few
    vectorised solves and one (bicubic: the crop is at the face's own scale, where a bilinear remap's
    sub-pixel shifts blur) remap."""
    source = np.ascontiguousarray(np.asarray(identity_landmarks, np.float64)[:, :2])
    landmarks = np.asarray(landmarks, np.float64)[:, :2]
    if not np.isfinite(landmarks).all() or landmarks.shape != source.shape:
        raise ValueError(
            f"landmarks must be finite and shaped like the identity's {source.shape}, got {landmarks.shape}"
        )
    if shape:
        landmarks = transfer_shape(source, landmarks, shape).astype(np.float64)
    mesh = None if triangles is None else np.ascontiguousarray(triangles, np.int32).tobytes()
    return _texture_warp(source.tobytes(), identity.shape[:2], mesh).warp(identity, landmarks)
