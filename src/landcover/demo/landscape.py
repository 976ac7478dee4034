"""A procedural 1 m landscape: land-cover materials laid out as vectors and noise, then rendered as R, G, B, NIR.

Layout: a brick pattern of fields (crops, pastures, ploughed soil, woodlots; grass margins, hedgerows and dirt
tracks), woods on the high ground of a smooth random field, a meandering river with riparian woods, a lake and
farm ponds, a town and a hamlet on rotated street grids (rows of gabled houses, flat-roofed commercial blocks, a
park, a construction site), a highway, country roads, and farmsteads with yards, barns and silos.

Rendering: NAIP-like digital numbers per material (water dark with little NIR, vegetation bright in NIR, roofs and
asphalt flat across the bands), per-field and per-roof variation, crop rows and furrows, tree crowns lit from the
sun's side, shallow water at the banks, shadows cast to the north-north-west by buildings and trees, haze, the
sensor's point-spread (which mixes class edges) and noise.

Everything is vectorised numpy (FFT noise and filters, shifted masks: see :mod:`landcover.demo.filters`) plus
``rasterio.features.rasterize`` for the vector objects; all randomness comes from one seeded generator, so a seed
always gives the same scene.
Coordinates are pixels (x = column, y = row, 1 px = 1 m, rows run south).
"""

from __future__ import annotations

import math

import numpy as np
from rasterio import features
from rasterio.transform import Affine
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import unary_union
from shapely.prepared import prep

from .filters import fractal_noise, freqs, gauss, psf, shift

# Materials: finer than classes, because each has its own spectrum and texture.
CROP, PASTURE, LAWN, FOREST, BARE, CONSTRUCTION, TRACK, RIVER, LAKE, POND, ROAD, MARKING, ROOF = range(13)
#: Chesapeake class value of each material: 1 Water, 3 Tree Canopy, 5 Low Vegetation, 6 Barren,
#: 7 Impervious Structures, 9 Impervious Roads.
MATERIAL_CLASS = np.array([5, 5, 5, 3, 6, 6, 6, 1, 1, 1, 9, 9, 7], dtype=np.uint8)

# Base digital numbers (R, G, B, NIR) per material before texture, shadow and haze.
_BASE = np.array([
    (110, 140, 80, 185),   # crop (replaced by a per-field mix of dry and lush)
    (102, 126, 76, 166),   # pasture and grass margins
    (94, 128, 70, 176),    # lawn
    (60, 92, 50, 165),     # forest (modulated by the crown field)
    (158, 134, 106, 152),  # ploughed soil
    (186, 172, 150, 176),  # construction site
    (168, 152, 128, 160),  # dirt track
    (44, 62, 56, 16),      # river
    (36, 56, 62, 12),      # lake
    (48, 70, 50, 20),      # pond
    (102, 102, 104, 92),   # asphalt
    (214, 214, 204, 196),  # lane marking
    (150, 150, 150, 130),  # roof (replaced by a per-building colour)
], dtype=np.float32)
_DRY_CROP = np.array([166, 156, 112, 188], dtype=np.float32)
_LUSH_CROP = np.array([64, 98, 48, 190], dtype=np.float32)
_SHALLOW = np.array([74, 86, 68, 40], dtype=np.float32)
_ROOFS = np.array([
    (205, 204, 198), (160, 160, 158), (98, 98, 104), (152, 80, 64), (122, 102, 88), (176, 168, 144),
    (86, 100, 116), (190, 120, 96), (176, 160, 130), (140, 120, 100),
], dtype=np.float32)
_HAZE = np.array([8, 9, 14, 3], dtype=np.float32)
_SHADOW = np.array([0.42, 0.45, 0.56, 0.5], dtype=np.float32)
# Sun in the south-south-east at 52 degrees: shadows fall to azimuth 335 degrees, 0.78 m per metre of height.
_SUN_AZIMUTH, _SHADOW_PER_METRE = math.radians(155.0), 1.0 / math.tan(math.radians(52.0))
# Target shares of the field uses per region (crop, pasture, ploughed, woodlot).
_FIELD_USES, _FIELD_SHARES = (CROP, PASTURE, BARE, FOREST), np.array([0.40, 0.25, 0.14, 0.21])


def render_landscape(size: int, seed: int, test_column: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image, materials): a (4, size, size) uint8 R, G, B, NIR image and its (size, size) material map.

    ``test_column`` marks where the held-out block starts; field uses are balanced on each side of it and a
    farmstead and a pond are placed in it, so every class occurs in both parts.
    """
    land = _Landscape(size, np.random.default_rng(seed), test_column or round(size * 0.75))
    land.lay_out()
    return land.render(), land.mat


# --- geometry helpers ------------------------------------------------------------------------------------

def _rect(center, w: float, d: float, angle: float) -> Polygon:
    """A w x d rectangle around ``center``, rotated by ``angle`` radians."""
    cx, cy = center
    return affinity.rotate(box(cx - w / 2, cy - d / 2, cx + w / 2, cy + d / 2), angle, use_radians=True)


def _long_axis(poly: Polygon) -> float:
    """Direction (radians) of a footprint's longer side: the ridge of a gabled roof."""
    xy = np.asarray(poly.minimum_rotated_rectangle.exterior.coords)
    edges = np.diff(xy[:3], axis=0)
    e = edges[np.argmax(np.hypot(edges[:, 0], edges[:, 1]))]
    return math.atan2(e[1], e[0])


class _Grid:
    """A rotated street grid: (p, q) block coordinates around a centre, and the way back to pixels."""

    def __init__(self, center, angle: float):
        self.cx, self.cy = center
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.angle = angle

    def xy(self, p: float, q: float) -> tuple[float, float]:
        return self.cx + p * self.cos - q * self.sin, self.cy + p * self.sin + q * self.cos


# --- the landscape -----------------------------------------------------------------------------------------

class _Landscape:
    """Lays out the scene as materials and object ids, then renders its spectra."""

    def __init__(self, n: int, rng: np.random.Generator, test_column: int):
        self.n, self.rng, self.test_column = n, rng, test_column
        self.mat = np.full((n, n), PASTURE, dtype=np.uint8)
        self.patch = np.zeros((n, n), dtype=np.int32)  # field / block / yard id: per-patch colour
        self.buildings: list[tuple[Polygon, float, bool]] = []  # footprint, height (m), gabled
        self.roads: list[tuple[LineString, float, int, str]] = []  # centre line, width (m), material, cap style
        self.trees: list[Polygon] = []
        self.lawns: list[Polygon] = []
        self.construction: list[Polygon] = []
        self.settlements: list[Polygon] = []

    def _burn(self, shapes, dtype="uint8") -> np.ndarray:
        shapes = list(shapes)
        if not shapes:
            return np.zeros((self.n, self.n), dtype=dtype)
        return features.rasterize(shapes, out_shape=(self.n, self.n), transform=Affine.identity(), fill=0,
                                  dtype=dtype)

    # layout ------------------------------------------------------------------------------------------------

    def lay_out(self) -> None:
        n, rng = self.n, self.rng
        self.detail = fractal_noise(rng, n, 1.6)
        self.town_center = (n * rng.uniform(0.62, 0.68), n * rng.uniform(0.60, 0.66))
        self.hamlet_center = (n * rng.uniform(0.16, 0.26), n * rng.uniform(0.13, 0.17))
        self._fields()
        self._forest()
        self._water()
        self._road_network()
        self._settlement(self.town_center, 0.24 * n, 0.18 * n, commercial=0.55)
        self._settlement(self.hamlet_center, 0.10 * n, 0.07 * n, commercial=0.0)
        self._farmsteads()
        self._burn_objects()

    def _fields(self) -> None:
        """A brick pattern of parcels on a rotated axis: crops, pastures, ploughed fields and woodlots."""
        n, rng = self.n, self.rng
        ang = rng.uniform(-0.35, 0.35)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
        u = xx * math.cos(ang) + yy * math.sin(ang)
        v = -xx * math.sin(ang) + yy * math.cos(ang)
        del yy
        ub = np.cumsum(np.r_[u.min() - 1, rng.uniform(90, 240, int(n * 1.5 / 90) + 2)])
        iu = np.searchsorted(ub, u)
        vs = v + rng.uniform(0, 400, len(ub) + 1).astype(np.float32)[iu]  # each strip has its own offsets
        vb = np.cumsum(np.r_[v.min() - 1, rng.uniform(130, 360, int((n * 1.5 + 400) / 130) + 2)])
        iv = np.searchsorted(vb, vs)
        del v
        count = (len(ub) + 1) * (len(vb) + 1) + 1
        parcel = (iu * (len(vb) + 1) + iv).astype(np.int32) + 1
        self.mat = self._field_uses(parcel, xx, count)[parcel]
        del xx
        self.patch = parcel
        self.n_patches = count
        # Crop rows and furrows run along one of the parcel's axes.
        along_u = rng.random(count) < 0.5
        self.stripe = np.where(along_u[parcel], u, vs).astype(np.float32)
        # Distances to the parcel's edges, for grass margins and hedgerows.
        du_lo, du_hi = u - ub[iu - 1], ub[np.minimum(iu, len(ub) - 1)] - u
        dv_lo, dv_hi = vs - vb[iv - 1], vb[np.minimum(iv, len(vb) - 1)] - vs
        edge = np.minimum(np.minimum(du_lo, du_hi), np.minimum(dv_lo, dv_hi))
        margin = rng.uniform(2, 5, count).astype(np.float32)
        self.mat[np.isin(self.mat, (CROP, BARE)) & (edge < margin[parcel])] = PASTURE
        hedge_u, hedge_v = rng.random(len(ub) + 1) < 0.4, rng.random(count) < 0.3
        width = 3.0 + 1.2 * self.detail
        hedge = ((du_lo < width) & hedge_u[iu - 1]) | ((du_hi < width) & hedge_u[iu])
        hedge |= (dv_lo < width) & hedge_v[parcel]
        self.mat[hedge] = FOREST
        # A few dirt tracks along parcel boundaries.
        for b in rng.choice(ub[1:-1], size=min(3, len(ub) - 2), replace=False):
            q0 = rng.uniform(0, n * 0.6)
            ends = [(b, q0), (b, q0 + rng.uniform(0.3, 0.6) * n)]
            xy = [(p * math.cos(ang) - q * math.sin(ang), p * math.sin(ang) + q * math.cos(ang)) for p, q in ends]
            self.roads.append((LineString(xy), 3.0, TRACK, "flat"))

    def _field_uses(self, parcel: np.ndarray, xx: np.ndarray, count: int) -> np.ndarray:
        """A use per parcel, balanced by visible area on each side of the test column.

        Parcels are taken in random order and each gets a use drawn in proportion to how far that use lags
        behind its target share, so even a small scene has ploughed fields on both sides.
        """
        rng = self.rng
        area = np.bincount(parcel.ravel(), minlength=count).astype(float)
        right = np.bincount(parcel.ravel(), weights=(xx >= self.test_column).ravel(), minlength=count)
        in_test = right > area / 2
        uses = np.full(count, PASTURE, dtype=np.uint8)
        for side in (False, True):
            done = np.zeros(len(_FIELD_USES))
            for pid in rng.permutation(np.nonzero((area > 0) & (in_test == side))[0]):
                lag = np.clip(_FIELD_SHARES * (done.sum() + area[pid]) - done, 0, None) + 1e-6
                k = rng.choice(len(_FIELD_USES), p=lag / lag.sum())
                uses[pid] = _FIELD_USES[k]
                done[k] += area[pid]
        return uses

    def _forest(self) -> None:
        """Woods on the high ground of a smooth random field, with ragged edges; lone trees in pastures."""
        n, rng = self.n, self.rng
        field = fractal_noise(rng, n, 3.6, lowres=max(64, n // 8))
        field += 0.15 * fractal_noise(rng, n, 2.6, lowres=max(64, n // 2))
        self.mat[field > np.quantile(field[::4, ::4], 0.78)] = FOREST
        for _ in range(n * n // 9000):
            x, y = rng.uniform(0, n, 2)
            if self.mat[int(y), int(x)] == PASTURE:
                self.trees.append(Point(x, y).buffer(rng.uniform(3, 6), quad_segs=4))

    def _water(self) -> None:
        """A meandering river across the scene with riparian woods, a lake and farm ponds."""
        n, rng = self.n, self.rng
        x = np.arange(n, dtype=np.float32) + 0.5
        ph = rng.uniform(0, 2 * math.pi, 4)
        yc = (n * rng.uniform(0.32, 0.38) + 0.07 * n * np.sin(2 * math.pi * x / (0.9 * n) + ph[0])
              + 0.025 * n * np.sin(2 * math.pi * x / (0.31 * n) + ph[1]))
        # Vertical half-width that keeps the width across the flow constant where the river runs at a slant.
        half = (18 + 5 * np.sin(2 * math.pi * x / (0.5 * n) + ph[2])) * np.sqrt(1 + np.gradient(yc) ** 2)
        dist = np.abs(np.arange(n, dtype=np.float32)[:, None] + 0.5 - yc[None, :]) / half[None, :]
        riparian = 1 + (14 + 10 * np.sin(2 * math.pi * x / (0.23 * n) + ph[3]))[None, :] / half[None, :]
        self.mat[dist < riparian + 0.15 * self.detail] = FOREST
        water = np.zeros((n, n), dtype=np.uint8)
        water[dist < 1] = RIVER
        lake = (n * rng.uniform(0.15, 0.25), n * rng.uniform(0.74, 0.78))
        self._blob(water, lake, 0.085 * n, LAKE, shore_woods=18)
        wanted, placed = max(2, n * n // 700_000), 0
        for attempt in range(300):
            if placed >= wanted:
                break
            # The first pond goes into the held-out block, so it has water besides the river.
            lo = self.test_column / n + 0.02 if placed == 0 and attempt < 150 else 0.05
            c = (rng.uniform(lo, 0.95) * n, rng.uniform(0.05, 0.95) * n)
            if (abs(c[1] - np.interp(c[0], x, yc)) < 0.1 * n or math.dist(c, lake) < 0.15 * n
                    or math.dist(c, self.town_center) < 0.3 * n or math.dist(c, self.hamlet_center) < 0.14 * n):
                continue
            self._blob(water, c, rng.uniform(12, 24), POND, shore_woods=6 if rng.random() < 0.5 else 0)
            placed += 1
        self.water, self.water_mat = water > 0, water
        self.mat[self.water] = water[self.water]
        self.near_water = gauss(self.water, 3.0) > 0.02  # buildings keep off the water and its banks

    def _blob(self, water: np.ndarray, center, radius: float, material: int, shore_woods: float) -> None:
        """An irregular round water body, optionally with woods on part of its shore."""
        n, rng = self.n, self.rng
        pad = radius * 1.6 + shore_woods
        r0, r1 = max(0, int(center[1] - pad)), min(n, int(center[1] + pad) + 1)
        c0, c1 = max(0, int(center[0] - pad)), min(n, int(center[0] + pad) + 1)
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
        rho = np.hypot(xx - center[0], yy - center[1])
        theta = np.arctan2(yy - center[1], xx - center[0])
        shape = np.ones_like(rho)
        for k in range(2, 6):
            shape += rng.uniform(0.04, 0.28) / k * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        rel = rho / (radius * shape)
        if shore_woods:
            woods = (rel < 1 + shore_woods / radius) & (np.cos(theta - rng.uniform(0, 2 * math.pi)) > -0.3)
            self.mat[r0:r1, c0:c1][woods] = FOREST
        water[r0:r1, c0:c1][rel < 1] = material

    def _settlement(self, center, rx: float, ry: float, commercial: float) -> None:
        """A town on a rotated street grid: the blocks whose centres fall inside an irregular ellipse.

        Blocks are rows of gabled houses with yard trees, flat-roofed commercial blocks (more likely near the
        centre), a park or a construction site; streets run along the edges of the chosen blocks.
        """
        n, rng = self.n, self.rng
        theta = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        shape = 1 + sum(rng.uniform(0.03, 0.09) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 4))
        outline = Polygon(np.c_[center[0] + rx * shape * np.cos(theta), center[1] + ry * shape * np.sin(theta)])
        grid = _Grid(center, rng.uniform(-0.45, 0.45))
        pitch_p, pitch_q, street = rng.uniform(105, 125), rng.uniform(74, 86), 8.0
        reach_p, reach_q = int(1.3 * rx / pitch_p) + 1, int(1.3 * rx / pitch_q) + 1
        scene = box(0, 0, n, n)
        edges_p, edges_q = set(), set()
        area = []
        for i in range(-reach_p, reach_p):
            for j in range(-reach_q, reach_q):
                mid = grid.xy((i + 0.5) * pitch_p, (j + 0.5) * pitch_q)
                if not outline.contains(Point(mid)) or not scene.contains(Point(mid)):
                    continue
                edges_p.update({(i, j), (i + 1, j)})  # (line, step): constant p, one block along q
                edges_q.update({(j, i), (j + 1, i)})  # constant q, one block along p
                p0, q0 = i * pitch_p + street / 2 + 1, j * pitch_q + street / 2 + 1
                p1, q1 = (i + 1) * pitch_p - street / 2 - 1, (j + 1) * pitch_q - street / 2 - 1
                block = Polygon([grid.xy(p0, q0), grid.xy(p1, q0), grid.xy(p1, q1), grid.xy(p0, q1)])
                area.append(Polygon([grid.xy(i * pitch_p, j * pitch_q), grid.xy((i + 1) * pitch_p, j * pitch_q),
                                     grid.xy((i + 1) * pitch_p, (j + 1) * pitch_q),
                                     grid.xy(i * pitch_p, (j + 1) * pitch_q)]))
                central = math.dist(mid, center) < 0.35 * rx
                kind = rng.choice(4, p=[commercial, 0.1, 0.035, 0.865 - commercial] if central
                                  else [commercial / 8, 0.06, 0.035, 0.905 - commercial / 8])
                if kind == 0:
                    self._commercial(grid, p0, q0, p1, q1)
                elif kind == 1:  # park
                    for _ in range(int(block.area / 40)):
                        if rng.random() < 0.75:
                            pt = Point(grid.xy(rng.uniform(p0, p1), rng.uniform(q0, q1)))
                            self.trees.append(pt.buffer(rng.uniform(3.5, 6.5), quad_segs=4))
                elif kind == 2:
                    self.construction.append(block)
                else:
                    self._houses(grid, p0, q0, p1, q1)
        if not area:
            return
        # Streets: maximal straight runs of block edges, with square caps that close the corners.
        for edges, along_p in ((edges_p, False), (edges_q, True)):
            for line, runs in _runs(edges).items():
                for a, b in runs:
                    if along_p:
                        ends = grid.xy(a * pitch_p, line * pitch_q), grid.xy(b * pitch_p, line * pitch_q)
                    else:
                        ends = grid.xy(line * pitch_p, a * pitch_q), grid.xy(line * pitch_p, b * pitch_q)
                    self.roads.append((LineString(ends), street, ROAD, "square"))
        self.settlements.append(Polygon(outline))
        self.lawns.extend(area)

    def _add_building(self, poly: Polygon, height: float, gabled: bool) -> bool:
        """Keep a building that lies inside the scene, clear of the water and of the roads."""
        x0, y0, x1, y1 = poly.bounds
        if x0 < 1 or y0 < 1 or x1 > self.n - 1 or y1 > self.n - 1:
            return False
        if self.near_water[int(y0):int(y1) + 1, int(x0):int(x1) + 1].any() or self.road_guard.intersects(poly):
            return False
        self.buildings.append((poly, height, gabled))
        return True

    def _houses(self, grid: _Grid, p0, q0, p1, q1) -> None:
        """Two rows of houses facing the long streets, some with a garage or shed, and yard trees."""
        rng = self.rng
        for side in (1, -1):
            p = p0 + rng.uniform(0, 4)
            while p < p1 - 14:
                lot = rng.uniform(15, 21)
                w, d, setback = rng.uniform(9, min(15, lot - 2)), rng.uniform(9, 14), rng.uniform(4, 7)
                q = q0 + setback + d / 2 if side == 1 else q1 - setback - d / 2
                if rng.random() < 0.92:
                    house = _rect(grid.xy(p + lot / 2, q), w, d, grid.angle + rng.uniform(-0.06, 0.06))
                    self._add_building(house, rng.uniform(5, 9), True)
                    if rng.random() < 0.4:
                        back = q + side * (d / 2 + rng.uniform(5, 9))
                        shed = _rect(grid.xy(p + lot / 2 + rng.uniform(-3, 3), back), rng.uniform(4, 7),
                                     rng.uniform(4, 7), grid.angle + rng.uniform(-0.3, 0.3))
                        self._add_building(shed, rng.uniform(3, 4), False)
                    for _ in range(rng.integers(0, 3)):
                        pt = Point(grid.xy(p + rng.uniform(0, lot), q + side * (d / 2 + rng.uniform(3, 16))))
                        self.trees.append(pt.buffer(rng.uniform(2.5, 5.5), quad_segs=4))
                p += lot

    def _commercial(self, grid: _Grid, p0, q0, p1, q1) -> None:
        """One or two big flat-roofed buildings."""
        rng = self.rng
        parts = 1 if rng.random() < 0.6 else 2
        span = (p1 - p0) / parts
        for k in range(parts):
            w, d = span * rng.uniform(0.5, 0.8), (q1 - q0) * rng.uniform(0.45, 0.75)
            c = grid.xy(p0 + span * (k + 0.5) + rng.uniform(-3, 3), (q0 + q1) / 2 + rng.uniform(-5, 5))
            self._add_building(_rect(c, w, d, grid.angle), rng.uniform(6, 13), False)

    def _road_network(self) -> None:
        """A highway through the town, two north-south and two east-west country roads."""
        n, rng = self.n, self.rng
        cx, cy = self.town_center
        self.highway = _curve([(-30, n * rng.uniform(0.5, 0.6)), (0.35 * n, n * rng.uniform(0.55, 0.65)),
                               (cx, cy + rng.uniform(-10, 10)), (n + 30, n * rng.uniform(0.5, 0.7))])
        self.roads.append((self.highway, 10.0, ROAD, "flat"))
        self.country_roads = [
            _curve([(n * rng.uniform(0.38, 0.45), -30), (n * rng.uniform(0.38, 0.46), 0.5 * n),
                    (n * rng.uniform(0.36, 0.46), n + 30)], swap=True),
            _curve([(n * rng.uniform(0.86, 0.9), -30), (n * rng.uniform(0.85, 0.9), 0.5 * n),
                    (n * rng.uniform(0.86, 0.9), n + 30)], swap=True),
            _curve([(-30, n * rng.uniform(0.06, 0.09)), (0.5 * n, n * rng.uniform(0.06, 0.1)),
                    (n + 30, n * rng.uniform(0.06, 0.09))]),
            _curve([(-30, n * rng.uniform(0.95, 0.97)), (0.5 * n, n * rng.uniform(0.93, 0.96)),
                    (n + 30, n * rng.uniform(0.94, 0.97))]),
        ]
        self.roads.extend((line, float(rng.uniform(6, 7.5)), ROAD, "flat") for line in self.country_roads)
        # Buildings keep 2 m off these roads (the town's own streets are laid out around its blocks).
        self.road_guard = prep(unary_union([line.buffer(w / 2 + 2) for line, w, _, _ in self.roads]))

    def _farmsteads(self) -> None:
        """Farm houses, barns and silos beside the country roads, with yards, driveways and trees."""
        n, rng = self.n, self.rng
        count = max(2, n * n // 450_000)
        away = [s.buffer(60) for s in self.settlements]
        candidates = []
        for line in self.country_roads:
            for dist in np.arange(40, line.length - 40, 50.0):
                p, q = line.interpolate(dist), line.interpolate(dist + 1)
                tx, ty = q.x - p.x, q.y - p.y
                side = 1 if rng.random() < 0.5 else -1
                h = (p.x - ty * side * 38, p.y + tx * side * 38)
                if not (45 < h[0] < n - 45 and 45 < h[1] < n - 45) or any(a.contains(Point(h)) for a in away):
                    continue
                if self.near_water[int(h[1]) - 40:int(h[1]) + 40, int(h[0]) - 40:int(h[0]) + 40].any():
                    continue
                candidates.append((p, h, math.atan2(ty, tx)))
        order = [int(i) for i in rng.permutation(len(candidates))]
        held_out = [i for i in order if candidates[i][1][0] > self.test_column + 30][: max(1, count // 3)]
        chosen: list = []
        for i in held_out + [i for i in order if i not in held_out]:
            if len(chosen) < count and all(math.dist(candidates[i][1], c[1]) > 200 for c in chosen):
                chosen.append(candidates[i])
        for road_pt, (hx, hy), ang in chosen:
            ux, uy = math.cos(ang), math.sin(ang)  # along the road
            vx, vy = (hx - road_pt.x) / 38, (hy - road_pt.y) / 38  # away from it
            self.lawns.append(_rect((hx + vx * 12, hy + vy * 12), rng.uniform(80, 110), rng.uniform(70, 90), ang))
            self.roads.append((LineString([(road_pt.x, road_pt.y), (hx, hy)]), 4.0, ROAD, "flat"))
            self._add_building(_rect((hx, hy), rng.uniform(12, 16), rng.uniform(9, 11), ang), 7.0, True)
            bx, by = hx + vx * 28 + ux * rng.uniform(-18, 18), hy + vy * 28 + uy * rng.uniform(-18, 18)
            self._add_building(_rect((bx, by), rng.uniform(22, 32), rng.uniform(12, 18), ang), 9.0, True)
            self._add_building(Point(bx + ux * 22, by + uy * 22).buffer(3.5, quad_segs=6), 14.0, False)  # silo
            for _ in range(rng.integers(4, 9)):
                a, r = rng.uniform(0, 2 * math.pi), rng.uniform(25, 42)
                tree = Point(hx + vx * 12 + r * math.cos(a), hy + vy * 12 + r * math.sin(a))
                self.trees.append(tree.buffer(rng.uniform(3, 6), quad_segs=4))

    def _burn_objects(self) -> None:
        """Paint lawns, trees, construction sites, water, roads and buildings over the fields, in that order."""
        lawns = self._burn((g, i + 1) for i, g in enumerate(self.lawns))
        self.mat[lawns > 0] = LAWN
        self.patch[lawns > 0] = lawns[lawns > 0].astype(np.int32) + self.n_patches
        self.mat[self._burn((g, 1) for g in self.trees).astype(bool)] = FOREST
        self.mat[self._burn((g, 1) for g in self.construction).astype(bool)] = CONSTRUCTION
        self.mat[self.water] = self.water_mat[self.water]  # nothing so far covers water
        self.road_id = self._burn(((line.buffer(w / 2, cap_style=cap), i + 1)
                                   for i, (line, w, _, cap) in enumerate(self.roads)), dtype="int32")
        on_road = self.road_id > 0
        self.mat[on_road] = np.array([0] + [m for _, _, m, _ in self.roads], dtype=np.uint8)[self.road_id[on_road]]
        # Dashed centre line on the highway: a 0.6 m wide line burns one pixel wide.
        stops = [self.highway.interpolate(d) for d in np.arange(0, self.highway.length, 12.0)]
        marks = [LineString([a, b]).buffer(0.3) for a, b in zip(stops[::2], stops[1::2], strict=False)]
        self.mat[self._burn((g, 1) for g in marks).astype(bool) & on_road] = MARKING
        self.bld = self._burn(((g, i + 1) for i, (g, _, _) in enumerate(self.buildings)), dtype="int32")
        self.mat[self.bld > 0] = ROOF

    # rendering ---------------------------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """Spectra, texture, shadows, haze, point-spread and noise: a (4, n, n) uint8 image."""
        n, rng, mat = self.n, self.rng, self.mat
        img = _BASE[mat]  # (n, n, 4)
        patches = int(self.patch.max()) + 1
        detail = self.detail
        smooth = fractal_noise(rng, n, 3.0, lowres=max(64, n // 8))

        crop = mat == CROP
        idx = self.patch[crop]
        vigour = rng.uniform(0, 1, patches).astype(np.float32)[idx][:, None]
        period = rng.uniform(3, 7, patches).astype(np.float32)
        amp = rng.uniform(0.04, 0.12, patches).astype(np.float32)
        img[crop] = ((_DRY_CROP * (1 - vigour) + _LUSH_CROP * vigour)
                     * (1 + amp[idx] * np.sin(2 * math.pi * self.stripe[crop] / period[idx]))[:, None])

        bare = mat == BARE
        furrow = rng.uniform(2, 3.5, patches).astype(np.float32)[self.patch[bare]]
        moist = rng.normal(1.0, 0.1, patches).astype(np.float32)[self.patch[bare]]
        img[bare] *= (moist + 0.11 * np.sin(2 * math.pi * self.stripe[bare] / furrow)
                      + 0.07 * smooth[bare] + 0.04 * detail[bare])[:, None]

        # Per-field and per-block brightness, with clumps and moisture.
        ground = np.isin(mat, (CROP, PASTURE, LAWN, BARE, CONSTRUCTION, TRACK))
        bright = rng.normal(1.0, 0.08, patches).astype(np.float32)[self.patch[ground]]
        img[ground] *= (bright * (1 + 0.05 * detail[ground] + 0.04 * smooth[ground]))[:, None]

        self._crowns(img)
        self._water_colour(img, smooth)
        roads = np.isin(mat, (ROAD, MARKING))
        tone = rng.uniform(0.85, 1.25, len(self.roads) + 1).astype(np.float32)
        img[roads] *= (tone[self.road_id[roads]] * (1 + 0.04 * detail[roads]))[:, None]
        self._roofs(img)
        self._shadows(img)
        img = img * (1 + 0.03 * smooth)[..., None] + _HAZE
        img = psf(img)
        img += rng.standard_normal(img.shape, dtype=np.float32) * 3.0
        return np.clip(np.rint(img), 1, 255).astype(np.uint8).transpose(2, 0, 1).copy()

    def _crowns(self, img: np.ndarray) -> None:
        """Tree crowns: a field of Gaussian domes of two sizes, lit from the sun's side, with per-crown colour."""
        n, rng = self.n, self.rng
        f2 = freqs(n)
        draw = rng.random((n, n), dtype=np.float32)
        small = (draw < 1 / 22).astype(np.float32)
        large = (draw > 1 - 1 / 70).astype(np.float32)
        spec = np.fft.rfft2(small) * np.exp(-2 * math.pi**2 * 2.0**2 * f2)
        spec += np.fft.rfft2(large) * (1.5 * np.exp(-2 * math.pi**2 * 3.4**2 * f2))
        height = np.fft.irfft2(spec, s=(n, n))
        height /= np.quantile(height[::7, ::7], 0.98) + 1e-6
        signed = (small + large) * rng.choice(np.array([-1, 1], dtype=np.float32), (n, n))
        hue = np.fft.irfft2(np.fft.rfft2(signed) * np.exp(-2 * math.pi**2 * 2.5**2 * f2), s=(n, n))
        hue /= hue[::7, ::7].std() + 1e-6
        gy, gx = np.gradient(height)
        sun_x, sun_y = math.sin(_SUN_AZIMUTH), -math.cos(_SUN_AZIMUTH)  # towards the sun, rows run south
        lit = np.clip(1 - 3.5 * (gx * sun_x + gy * sun_y), 0.4, 1.7)
        trees = self.mat == FOREST
        h = np.clip(height[trees], 0, 1.3)
        shade = ((0.38 + 0.9 * h) * lit[trees])[:, None]
        tint = hue[trees]
        colour = np.stack([1 + 0.14 * tint, 1 + 0.08 * tint, 1 + 0.02 * tint, 1 + 0.06 * tint], 1)
        stand = 1 + 0.15 * fractal_noise(rng, n, 3.4, lowres=max(64, n // 8))[trees][:, None]
        img[trees] *= shade * colour * stand
        self.tree_height = np.where(trees, 6 + 10 * np.clip(height, 0, 1), 0).astype(np.float32)

    def _water_colour(self, img: np.ndarray, smooth: np.ndarray) -> None:
        """Turbidity, and shallow, brighter water along the banks."""
        water = np.isin(self.mat, (RIVER, LAKE, POND))
        depth = gauss(self.water, 3.0)[water]
        shallow = np.clip((1 - depth) * 1.8, 0, 1)[:, None]
        turbid = (1 + 0.12 * smooth[water])[:, None] * np.array([1.1, 1.0, 0.95, 1.2], dtype=np.float32)
        img[water] = img[water] * turbid * (1 - shallow) + _SHALLOW * shallow

    def _roofs(self, img: np.ndarray) -> None:
        """Per-building roof colours; gabled roofs show a lit and a shaded slope; edges darker."""
        rng, bld = self.rng, self.bld
        count = len(self.buildings) + 1
        rgb = _ROOFS[rng.integers(0, len(_ROOFS), count)] * rng.normal(1, 0.05, (count, 1)).astype(np.float32)
        nir = rgb.mean(1, keepdims=True) * rng.uniform(0.75, 0.95, (count, 1)).astype(np.float32)
        roof_rgbn = np.concatenate([rgb, nir], 1)
        roof = bld > 0
        ids = bld[roof]
        rows, cols = np.nonzero(roof)
        centres = np.array([(0, 0)] + [g.centroid.coords[0] for g, _, _ in self.buildings], dtype=np.float32)
        ridge = np.array([0] + [_long_axis(g) for g, _, _ in self.buildings], dtype=np.float32)[ids]
        gabled = np.array([False] + [gb for _, _, gb in self.buildings])[ids]
        # Which side of the ridge a pixel is on, and whether that slope faces the sun.
        dx, dy = cols + 0.5 - centres[ids, 0], rows + 0.5 - centres[ids, 1]
        side = np.sign(-dx * np.sin(ridge) + dy * np.cos(ridge))
        facing = (-np.sin(ridge) * math.sin(_SUN_AZIMUTH) - np.cos(ridge) * math.cos(_SUN_AZIMUTH)) * side
        slope = np.where(gabled, 1 + 0.16 * np.sign(facing), 1.0)
        inner = shift(roof, 1, 0) & shift(roof, -1, 0) & shift(roof, 0, 1) & shift(roof, 0, -1)
        img[roof] = roof_rgbn[ids] * (slope * np.where(inner[roof], 1.0, 0.88))[:, None]

    def _shadows(self, img: np.ndarray) -> None:
        """Buildings and trees darken the ground on the side away from the sun, as far as their height reaches."""
        heights = np.array([0] + [h for _, h, _ in self.buildings], dtype=np.float32)[self.bld]
        reach = np.maximum(heights, self.tree_height) * _SHADOW_PER_METRE
        shadow = np.zeros(reach.shape, dtype=bool)
        away_x, away_y = -math.sin(_SUN_AZIMUTH), math.cos(_SUN_AZIMUTH)
        for step in range(1, int(np.ceil(reach.max())) + 1):
            shadow |= shift(reach >= step, round(away_y * step), round(away_x * step))
        shadow &= (self.bld == 0) & (self.mat != FOREST)  # the casters themselves are not shaded
        img[shadow] *= _SHADOW


def _curve(ctrl, swap: bool = False) -> LineString:
    """A smooth road through control points (x, y); ``swap`` for roads that run north-south."""
    ctrl = np.array(ctrl, dtype=float)
    a, b = (ctrl[:, 1], ctrl[:, 0]) if swap else (ctrl[:, 0], ctrl[:, 1])
    t = np.arange(a.min(), a.max() + 1, 4.0)
    s = np.interp(t, a, b)
    k = 31  # a 120 m moving average rounds the corners into curves
    s = np.convolve(np.pad(s, k // 2, mode="edge"), np.ones(k) / k, mode="valid")
    return LineString(np.c_[s, t] if swap else np.c_[t, s])


def _runs(edges: set[tuple[int, int]]) -> dict[int, list[tuple[int, int]]]:
    """Group unit edges (line, step) into maximal runs [start, end) of steps per line."""
    by_line: dict[int, list[int]] = {}
    for line, k in sorted(edges):
        by_line.setdefault(line, []).append(k)
    runs: dict[int, list[tuple[int, int]]] = {}
    for line, ks in by_line.items():
        start = prev = ks[0]
        for k in ks[1:] + [None]:
            if k is None or k != prev + 1:
                runs.setdefault(line, []).append((start, prev + 1))
                if k is not None:
                    start = k
            if k is not None:
                prev = k
    return runs
