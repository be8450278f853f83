"""Compiled kernels for the per-frame geometry: a triangle rasteriser (what a GPU does for one
textured-mesh draw) and point-to-polygon distances. Both are Numba functions compiled on first use and
cached next to this file, so the live path pays neither Python loops nor per-triangle Python calls.

The rasteriser's rule, which the artifact manifest states for clients (``swap_spec.identity_warp``): a
pixel belongs to a triangle when its centre (pixel ``i`` is centred on coordinate ``i``) is inside it or at
most ``EDGE_REACH`` px outside it, and takes that triangle's affine map (extrapolated out there); where
triangles overlap (a folded mesh) the later triangle in the list wins; a pixel no triangle covers keeps its
own coordinates (samples the texture where it is)."""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

EDGE_REACH = 0.5  # px: a pixel whose centre is this close outside a triangle is drawn by it (as a polygon
# rasteriser's pixel coverage does; inside the mesh the map is continuous, so only the outline grows by it)


@numba.njit(cache=True, nogil=True)
def _rasterise(dst, src, triangles, reach, map_x, map_y, covered):  # pragma: no cover - compiled
    height, width = map_x.shape
    for t in range(triangles.shape[0]):
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
        y_lo = max(0, int(np.ceil(min(ay, by, cy) - reach)))
        y_hi = min(height - 1, int(np.floor(max(ay, by, cy) + reach)))
        x_lo = max(0, int(np.ceil(min(ax, bx, cx) - reach)))
        x_hi = min(width - 1, int(np.floor(max(ax, bx, cx) + reach)))
        for y in range(y_lo, y_hi + 1):
            for x in range(x_lo, x_hi + 1):
                wa = ((bx - x) * (cy - y) - (by - y) * (cx - x)) * inv
                wb = ((cx - x) * (ay - y) - (cy - y) * (ax - x)) * inv
                wc = 1.0 - wa - wb
                if wa * ha >= -reach and wb * hb >= -reach and wc * hc >= -reach:
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
