"""Compiled kernels for the per-frame geometry: a triangle rasteriser (what a GPU does for one
textured-mesh draw) and point-to-polygon distances. Both are Numba functions compiled on first use and
cached next to this file, so the live path pays neither Python loops nor per-triangle Python calls.

The rasteriser's rule, which the artifact manifest states for clients (``swap_spec.identity_warp``): a
pixel belongs to a triangle when its centre (pixel ``i`` is centred on coordinate ``i``) is inside it or on
an edge; where triangles overlap (a folded mesh) the later triangle in the list wins; a pixel no triangle
covers keeps its own coordinates (samples the texture where it is)."""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

INSIDE_TOLERANCE = 1e-6  # barycentric slack: a centre on a shared edge belongs to both triangles


@numba.njit(cache=True, nogil=True)
def _rasterise(dst, src, triangles, map_x, map_y, covered):  # pragma: no cover - compiled
    height, width = map_x.shape
    for t in range(triangles.shape[0]):
        i, j, k = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        ax, ay, bx, by, cx, cy = dst[i, 0], dst[i, 1], dst[j, 0], dst[j, 1], dst[k, 0], dst[k, 1]
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if abs(area) < 1e-9:
            continue
        inv = 1.0 / area
        y_lo = max(0, int(np.ceil(min(ay, by, cy))))
        y_hi = min(height - 1, int(np.floor(max(ay, by, cy))))
        x_lo = max(0, int(np.ceil(min(ax, bx, cx))))
        x_hi = min(width - 1, int(np.floor(max(ax, bx, cx))))
        for y in range(y_lo, y_hi + 1):
            for x in range(x_lo, x_hi + 1):
                wa = ((bx - x) * (cy - y) - (by - y) * (cx - x)) * inv
                wb = ((cx - x) * (ay - y) - (cy - y) * (ax - x)) * inv
                wc = 1.0 - wa - wb
                if wa >= -INSIDE_TOLERANCE and wb >= -INSIDE_TOLERANCE and wc >= -INSIDE_TOLERANCE:
                    map_x[y, x] = wa * src[i, 0] + wb * src[j, 0] + wc * src[k, 0]
                    map_y[y, x] = wa * src[i, 1] + wb * src[j, 1] + wc * src[k, 1]
                    covered[y, x] = 1


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return grid_x, grid_y


def mesh_maps(
    src: np.ndarray, dst: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (float32 HxW x and y) of the piecewise-affine warp that takes each triangle of
    ``src`` onto the same triangle of ``dst`` ((N, 2+) points, (T, 3) indices), and the HxW uint8 map of
    the pixels a triangle covers (the others map to themselves)."""
    height, width = int(shape[0]), int(shape[1])
    map_x, map_y = (grid.copy() for grid in _pixel_grid(height, width))
    covered = np.zeros((height, width), np.uint8)
    _rasterise(
        np.ascontiguousarray(np.asarray(dst, np.float64)[:, :2]),
        np.ascontiguousarray(np.asarray(src, np.float64)[:, :2]),
        np.ascontiguousarray(triangles, np.int32),
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


__all__ = ["INSIDE_TOLERANCE", "mesh_maps", "polygon_distances"]
