"""Compiled kernels for the per-frame geometry: a triangle rasteriser (what a GPU does for one
textured-mesh draw) and point-to-polygon distances. Both are Numba functions compiled on first use and
cached next to this file, so the live path pays neither Python loops nor per-triangle Python calls.

The rasteriser's rule, which the artifact manifest states for clients (``swap_spec.identity_warp``): a
pixel whose centre (pixel ``i`` is centred on coordinate ``i``) is inside a triangle or on its edge takes that
triangle's affine map, the later triangle in the list winning where triangles overlap (a folded mesh); a pixel
no triangle holds but within ``EDGE_REACH`` px of one (the mesh's outline, as a polygon rasteriser's coverage
draws it) takes that triangle's map extrapolated; any other pixel keeps its own coordinates (samples the
texture where it is)."""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

EDGE_REACH = 0.5  # px: how far outside the mesh's outline pixels are still drawn (as a polygon rasteriser's
# pixel coverage draws them)


@numba.njit(cache=True, nogil=True)
def _rasterise(dst, src, triangles, outline, reach, map_x, map_y, covered):  # pragma: no cover - compiled
    # Pass 0: pixels inside a triangle (or on its edge). Pass 1: pixels no triangle holds, within `reach` px of one
    # of the triangles on the mesh's outline.
    height, width = map_x.shape
    for border in range(2):
        slack = reach if border else 0.0
        for t in range(triangles.shape[0]):
            if border and not outline[t]:
                continue
            i, j, k = triangles[t, 0], triangles[t, 1], triangles[t, 2]
            ax, ay, bx, by, cx, cy = dst[i, 0], dst[i, 1], dst[j, 0], dst[j, 1], dst[k, 0], dst[k, 1]
            area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            if abs(area) < 1e-9:
                continue
            inv = 1.0 / area
            # barycentric weight -> pixels from the opposite edge: |area| / that edge's length
            ha = abs(area) / max(np.hypot(cx - bx, cy - by), 1e-12)
            hb = abs(area) / max(np.hypot(ax - cx, ay - cy), 1e-12)
            hc = abs(area) / max(np.hypot(bx - ax, by - ay), 1e-12)
            y_lo = max(0, int(np.ceil(min(ay, by, cy) - slack)))
            y_hi = min(height - 1, int(np.floor(max(ay, by, cy) + slack)))
            x_lo = max(0, int(np.ceil(min(ax, bx, cx) - slack)))
            x_hi = min(width - 1, int(np.floor(max(ax, bx, cx) + slack)))
            for y in range(y_lo, y_hi + 1):
                for x in range(x_lo, x_hi + 1):
                    if border and covered[y, x] == 1:
                        continue
                    wa = ((bx - x) * (cy - y) - (by - y) * (cx - x)) * inv
                    wb = ((cx - x) * (ay - y) - (cy - y) * (ax - x)) * inv
                    wc = 1.0 - wa - wb
                    tolerance = slack if border else 1e-9
                    if wa * ha >= -tolerance and wb * hb >= -tolerance and wc * hc >= -tolerance:
                        map_x[y, x] = wa * src[i, 0] + wb * src[j, 0] + wc * src[k, 0]
                        map_y[y, x] = wa * src[i, 1] + wb * src[j, 1] + wc * src[k, 1]
                        covered[y, x] = 1 + border


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return grid_x, grid_y


@lru_cache(maxsize=256)  # a mesh's triangles are fixed per identity
def outline_triangles(triangles: bytes) -> np.ndarray:
    """(T,) bool: the triangles (of (T, 3) int32 indices, as bytes) with an edge no other triangle shares."""
    tris = np.frombuffer(triangles, np.int32).reshape(-1, 3).astype(np.int64)
    edges = np.sort(np.stack([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]], axis=1), axis=-1)  # (T, 3, 2)
    keys = edges[..., 0] * (int(tris.max(initial=0)) + 1) + edges[..., 1]
    unique, counts = np.unique(keys, return_counts=True)
    single = np.isin(keys, unique[counts == 1])
    return single.any(axis=1)


def mesh_maps(
    src: np.ndarray, dst: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (float32 HxW x and y) of the piecewise-affine warp that takes each triangle of
    ``src`` onto the same triangle of ``dst`` ((N, 2+) points, (T, 3) indices), and the HxW uint8 map of
    the pixels a triangle covers (1: inside one, 2: within EDGE_REACH of the outline; 0 map to themselves)."""
    height, width = int(shape[0]), int(shape[1])
    map_x, map_y = (grid.copy() for grid in _pixel_grid(height, width))
    covered = np.zeros((height, width), np.uint8)
    triangles = np.ascontiguousarray(triangles, np.int32)
    _rasterise(
        np.ascontiguousarray(np.asarray(dst, np.float64)[:, :2]),
        np.ascontiguousarray(np.asarray(src, np.float64)[:, :2]),
        triangles,
        outline_triangles(triangles.tobytes()),
        EDGE_REACH,
        map_x,
        map_y,
        covered,
    )
    return map_x, map_y, covered


@numba.njit(cache=True, nogil=True)
def _polygon_distances(points, polygon, beyond, out):  # pragma: no cover - compiled
    count = polygon.shape[0]
    x_lo, x_hi = polygon[:, 0].min() - beyond, polygon[:, 0].max() + beyond
    y_lo, y_hi = polygon[:, 1].min() - beyond, polygon[:, 1].max() + beyond
    for p in range(points.shape[0]):
        px, py = points[p, 0], points[p, 1]
        if px < x_lo or px > x_hi or py < y_lo or py > y_hi:
            out[p] = -np.inf
            continue
        nearest, inside = np.inf, False
        for e in range(count):
            ax, ay = polygon[e, 0], polygon[e, 1]
            bx, by = polygon[(e + 1) % count, 0], polygon[(e + 1) % count, 1]
            ex, ey = bx - ax, by - ay
            t = ((px - ax) * ex + (py - ay) * ey) / max(ex * ex + ey * ey, 1e-12)
            t = min(max(t, 0.0), 1.0)
            dx, dy = px - ax - t * ex, py - ay - t * ey
            nearest = min(nearest, dx * dx + dy * dy)
            if (ay > py) != (by > py) and px < ax + (py - ay) * ex / ey:
                inside = not inside
        out[p] = np.sqrt(nearest) if inside else -np.sqrt(nearest)


def polygon_distances(points: np.ndarray, polygon: np.ndarray, beyond: float = np.inf) -> np.ndarray:
    """Distance of each of ``points`` (N, 2) to the closed ``polygon`` (M, 2): positive inside, negative
    outside (the sign convention of ``cv2.pointPolygonTest``); -inf for points more than ``beyond`` outside
    the polygon's bounding box."""
    points = np.ascontiguousarray(np.asarray(points, np.float64)[:, :2])
    out = np.empty(len(points), np.float64)
    _polygon_distances(points, np.ascontiguousarray(np.asarray(polygon, np.float64)[:, :2]), float(beyond), out)
    return out


__all__ = ["EDGE_REACH", "mesh_maps", "polygon_distances"]
