"""CarRacing-v3 with the observation drawn straight at low resolution (not identical).

:class:`DirectCarRacing` keeps Gymnasium's physics, tracks, rewards and episode ends (the
renderer never touches them), but draws the ``state_pixels`` observation with OpenCV
into a small canvas and area-averages it to 96x96, instead of drawing a 1000x800 window
with pygame and shrinking it. Its frames therefore differ slightly from Gymnasium's
(``benchmarks/car_racing.py`` prints the mean absolute difference); use it where steps
per second matter more than exact pixels, and check that what is trained in it works
in Gymnasium's env (docs/performance.md). ``render()`` for ``rgb_array`` and ``human``
still uses the exact renderer of :mod:`envs.fast_car_racing`.

Geometry: Gymnasium draws the world into a 1000x800 window, flips it upside down, draws
the dashboard and shrinks the result to 96x96. The canvas is ``96 s`` pixels square
(``s = supersample``), so a window point (X, Y) of the unflipped world lands at canvas
point ``(0.096 s X, 0.12 s (800 - Y))``, and the frame is an exact s x s area average of
the canvas. Shapes are shrunk by about half a canvas pixel (see :func:`inset`) once, in
world units, rather than every frame.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import pygame
from gymnasium.envs.box2d import car_dynamics as cd
from gymnasium.envs.box2d import car_racing as cr

from envs.fast_car_racing import (
    FIELD_POLYGON,
    GRASS_CIRCLES,
    GRASS_POLYGONS,
    FastCarRacing,
    near,
)

#: fixed-point bits of the vertex coordinates handed to ``cv2.fillPoly``
_SHIFT = 4
_ONE = 1 << _SHIFT
#: Gymnasium's zoom once the first second's zoom-in is over
_STEADY_ZOOM = cr.ZOOM * cr.SCALE
#: the dashboard band: the window's bottom eighth (rows 700-799 after the flip)
_BAND = 7 / 8
#: shrunk score texts kept per env (the scores of a few episodes)
_MAX_TEXTS = 4096


Insets = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def inset_geometry(polys: np.ndarray) -> Insets:
    """What :func:`inset` needs of convex polygons float64 (N, V, 2), whatever ``d``:
    (the polygons, each vertex's inward shift (N, V, 2) and its divisor (N, V, 1), and
    the largest inset each polygon takes (N,)). Indexing every array by the same
    polygon index gives those polygons' geometry."""
    n = polys.shape[1]
    after, before = (np.arange(n) + 1) % n, (np.arange(n) - 1) % n
    edge = polys[:, after] - polys  # edge k runs from vertex k to k + 1
    length = np.sqrt(edge[..., 0] ** 2 + edge[..., 1] ** 2)[..., None]
    t = edge / np.maximum(length, 1e-9)  # a repeated vertex gives a zero edge: t = 0
    x, y = polys[..., 0], polys[..., 1]
    area = (x * y[:, after] - x[:, after] * y).sum(axis=1)
    sign = np.where(area >= 0, 1.0, -1.0)[:, None]
    normal = np.empty_like(t)  # inward, per edge
    normal[..., 0] = -sign * t[..., 1]
    normal[..., 1] = sign * t[..., 0]
    # width: over edges, the largest distance of a vertex from the edge's line
    rel = polys[:, None, :, :] - polys[:, :, None, :]  # (N, edge, vertex, 2)
    dist = np.abs(t[:, :, None, 0] * rel[..., 1] - t[:, :, None, 1] * rel[..., 0])
    farthest = np.where(length[..., 0] > 1e-9, dist.max(axis=2), np.inf)
    n_in = normal[:, before]  # the edges into and out of each vertex
    denom = np.maximum(1.0 + (n_in * normal).sum(axis=-1, keepdims=True), 0.2)
    return polys, n_in + normal, denom, 0.45 * farthest.min(axis=1)


def apply_inset(geometry: Insets, d: float) -> np.ndarray:
    """The polygons of :func:`inset_geometry` inset by ``d``, as :func:`inset`."""
    polys, shift, denom, most = geometry
    step = np.minimum(d, most)[:, None, None]
    return polys + step * shift / denom


def inset(polys: np.ndarray, d: float) -> np.ndarray:
    """Convex polygons float64 (N, V, 2) with every edge moved ``d`` inward.

    ``cv2.fillPoly`` fills every pixel whose centre is within about half a pixel of a
    polygon, so a shape inset by half a pixel fills the pixels whose centres it covers.
    Polygons thinner than ``2 d`` are inset by less, so that they do not turn inside out.
    A polygon may repeat its last vertex (to pad polygons to one vertex count): the
    corner there is bevelled. Insetting the same polygons by many ``d`` (the first
    second's zoom-in) is cheaper with :func:`inset_geometry` once and
    :func:`apply_inset` per ``d``.
    """
    return apply_inset(inset_geometry(polys), d)


@functools.cache
def smoothscale_levels() -> np.ndarray:
    """uint8 (256,): the level pygame's 1000x800 -> 96x96 ``smoothscale`` gives a flat
    area of each level (its fixed-point arithmetic rounds down: 204 becomes 202).

    Applied to the direct frame, it removes what would otherwise be a uniform
    brightness offset of about 2 levels against Gymnasium's frames.
    """
    big = pygame.Surface((cr.WINDOW_W, cr.WINDOW_H))
    small = pygame.Surface((cr.STATE_W, cr.STATE_H), 0, big)
    levels = np.zeros(256, dtype=np.uint8)
    for v in range(256):
        big.fill((v, v, v))
        pygame.transform.smoothscale(big, (cr.STATE_W, cr.STATE_H), small)
        levels[v] = small.get_at((cr.STATE_W // 2, cr.STATE_H // 2))[0]
    return levels


class DirectCarRacing(FastCarRacing):
    """Gymnasium's ``CarRacing`` (v3) whose observations are drawn directly at 96x96.

    Same constructor arguments as ``CarRacing`` plus ``supersample``: the canvas is
    ``96 * supersample`` pixels square, area-averaged to 96x96 (>= 1; default 2).
    """

    def __init__(self, *args, supersample: int = 2, **kwargs):
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        super().__init__(*args, **kwargs)
        self.supersample = int(supersample)
        side = cr.STATE_W * self.supersample
        self._canvas = np.zeros((side, side, 3), dtype=np.uint8)
        # canvas pixels per window pixel, across and down, and their geometric mean
        self._kx, self._ky = side / cr.WINDOW_W, side / cr.WINDOW_H
        self._k = math.sqrt(self._kx * self._ky)
        self._road_color_rows = np.zeros((0, 3))
        self._road_is_kerb = np.zeros(0, dtype=bool)
        self._steady: dict[str, np.ndarray] = {}  # inset world polygons at steady zoom
        self._geometry: dict[str, Insets] = {}  # their inset_geometry, for other zooms
        self._car_key: object = None
        self._car_parts: tuple = ()
        pygame.font.init()  # FastCarRacing._score renders the score with pygame
        # score text -> its shrunk pixels and top-left canvas corner
        self._texts: dict[str, tuple[np.ndarray, int, int]] = {}

    def _create_track(self) -> bool:
        if not super()._create_track():
            return False
        # The colour of every road polygon (tiles and their kerbs) becomes a row of one
        # array, so that a frame reads them all at once. The contact listener repaints
        # tiles in place (``tile.color[:] = ...``), which now writes into that array.
        self._road_color_rows = np.array([c for _, c in self.road_poly], dtype=np.float64)
        row_of = {id(c): i for i, (_, c) in enumerate(self.road_poly)}
        self._road_is_kerb = np.ones(len(self.road_poly), dtype=bool)
        for tile in self.road:
            i = row_of[id(tile.color)]
            tile.color = self._road_color_rows[i]
            self.road_poly[i] = (self.road_poly[i][0], tile.color)
            self._road_is_kerb[i] = False
        self._road_colors = list(self._road_color_rows)
        self._steady.pop("road", None)
        self._geometry.pop("road", None)
        return True

    def _render(self, mode: str):
        if mode != "state_pixels" or "t" not in self.__dict__:
            return super()._render(mode)
        return self._draw_state()

    # -- geometry -------------------------------------------------------------------

    def _to_canvas(self, world: np.ndarray, zoom: float, angle: float) -> np.ndarray:
        """World points float64 (N, 2) -> fixed-point canvas points int32 (N, 2), pixel
        centres at integers (OpenCV's convention).

        Gymnasium's view: rotate by ``angle`` about the car, scale by ``zoom``, put the
        car at window point (W/2, H/4); then flip and scale to the canvas.
        """
        assert self.car is not None
        c, s = math.cos(angle), math.sin(angle)
        px, py = self.car.hull.position
        x, y = world[:, 0] - px, world[:, 1] - py
        kx, ky = self._kx * _ONE, self._ky * _ONE
        out = np.empty(world.shape, dtype=np.float64)
        out[:, 0] = ((c * x - s * y) * zoom + cr.WINDOW_W / 2) * kx - _ONE / 2
        out[:, 1] = (cr.WINDOW_H * 3 / 4 - (s * x + c * y) * zoom) * ky - _ONE / 2
        return np.rint(out).astype(np.int32)

    def _half_pixel(self, zoom: float) -> float:
        """Half a canvas pixel in world units at ``zoom`` (see :meth:`_inset`)."""
        return 0.5 / (zoom * self._k)

    def _inset(self, name: str, polys: np.ndarray, index: np.ndarray, zoom: float) -> np.ndarray:
        """``polys[index]`` (world float64 (N, V, 2)) inset by half a canvas pixel; at the
        steady zoom all of ``polys`` are inset once and kept under ``name``.

        The canvas scales the window by 0.096 s across and 0.12 s down, so a world-space
        inset of half a pixel at their geometric mean is 0.45-0.56 canvas pixels
        whatever the view's rotation: close enough, and it never needs redoing.
        """
        d = self._half_pixel(zoom)
        if zoom == _STEADY_ZOOM and name in self._steady:
            return self._steady[name][index]
        if name not in self._geometry:
            self._geometry[name] = inset_geometry(polys)
        geometry = self._geometry[name]
        if zoom == _STEADY_ZOOM:
            self._steady[name] = apply_inset(geometry, d)
            return self._steady[name][index]
        # the first second's zoom-in: a new inset every frame, of the polygons in view
        return apply_inset(tuple(a[index] for a in geometry), d)  # type: ignore[arg-type]

    # -- drawing --------------------------------------------------------------------

    def _fill(self, polys: np.ndarray | list[np.ndarray], color) -> None:
        """Fill fixed-point canvas polygons (each int32 (V, 2)) with one colour."""
        if len(polys):
            cv2.fillPoly(self._canvas, list(polys), tuple(int(c) for c in color), cv2.LINE_8,
                         _SHIFT)

    def _draw_state(self) -> np.ndarray:
        """The observation: uint8 (96, 96, 3)."""
        assert self.car is not None
        angle = -self.car.hull.angle
        zoom = 0.1 * cr.SCALE * max(1 - self.t, 0) + cr.ZOOM * cr.SCALE * min(self.t, 1)
        # world distance from the car to the farthest window point, (0, 0) or (W, 0)
        reach = math.hypot(cr.WINDOW_W / 2, cr.WINDOW_H * 3 / 4) / zoom
        px, py = self.car.hull.position
        field_edge = max(abs(px), abs(py)) + reach >= cr.PLAYFIELD
        grass = near(GRASS_CIRCLES, (px, py), reach)
        road = near(self._road_circles, (px, py), reach)
        car_world, car_runs = self._car_world(zoom)
        # every point of the frame in one transform: field, grass, road, car
        world = [FIELD_POLYGON[0],
                 self._inset("grass", GRASS_POLYGONS, grass, zoom).reshape(-1, 2),
                 self._inset("road", self._road_xy, road, zoom).reshape(-1, 2),
                 car_world.reshape(-1, 2)]
        points = self._to_canvas(np.concatenate(world), zoom, angle)
        quads = points[: 4 * (1 + len(grass) + len(road))].reshape(-1, 4, 2)

        canvas = self._canvas
        height, width = canvas.shape[:2]
        if field_edge:  # black beyond the field
            cv2.rectangle(canvas, (0, 0), (width, height), (0, 0, 0), -1)
            self._fill(quads[:1], self.bg_color)
        else:
            cv2.rectangle(canvas, (0, 0), (width, height), tuple(int(c) for c in self.bg_color),
                          -1)
        self._fill(quads[1: 1 + len(grass)], self.grass_color)
        if len(road):
            self._draw_road(road, quads[1 + len(grass):])
        car = points[len(quads) * 4:].reshape(car_world.shape)
        start = 0
        for count, color in car_runs:  # wheels, their stripes, the hull
            self._fill(car[start: start + count], color)
            start += count
        canvas[round(height * _BAND):] = 0  # the dashboard's black band
        self._draw_bars()
        self._draw_score()
        frame = cv2.resize(canvas, (cr.STATE_W, cr.STATE_H), interpolation=cv2.INTER_AREA)
        return cv2.LUT(frame, smoothscale_levels())

    def _draw_road(self, index: np.ndarray, quads: np.ndarray) -> None:
        """Road tiles, then kerbs, ``index`` (ascending), fixed-point canvas quads int32
        (N, 4, 2), one fill per colour.

        Gymnasium draws each tile and then its kerb, so at a sharp corner the next tile
        can cover a kerb that is drawn over it here. Over 4 tracks x 300 steps that
        changed no frame's mean difference in its fourth decimal, and it saves about ten
        fills a frame.
        """
        rgb = self._road_color_rows[index].astype(np.int64)  # pygame truncates colours
        keys = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
        kerb = self._road_is_kerb[index]
        for part in (~kerb, kerb):
            for key in np.unique(keys[part]).tolist():
                color = ((key >> 16) & 255, (key >> 8) & 255, key & 255)
                self._fill(quads[part & (keys == key)], color)

    def _car_shapes(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, tuple]]]:
        """The car's polygons in body coordinates, made once per car, in the drawing
        order used here: the wheels, then the hull.

        Returns vertices float64 (P, V, 2), each polygon padded with its last vertex to
        the largest vertex count V (``cv2.fillPoly`` does not mind); each polygon's
        body index in ``car.drawlist`` int (P,); and (count, colour) runs of polygons.
        """
        assert self.car is not None
        if self._car_key is not self.car:
            bodies = self.car.drawlist
            shapes = [(np.asarray(f.shape.vertices, dtype=np.float64), k)
                      for k, obj in enumerate(bodies) for f in obj.fixtures]
            most = max(len(v) for v, _ in shapes)
            local = np.array([np.concatenate([v, np.repeat(v[-1:], most - len(v), axis=0)])
                              for v, _ in shapes])
            owner = np.array([k for _, k in shapes])
            hull = len(bodies) - 1  # Car.drawlist is the wheels, then the hull
            color = [tuple(int(c * 255) for c in obj.color) for obj in bodies]
            wheels = int((owner < hull).sum())
            self._car_parts = (local, owner,
                               [(wheels, color[0]), (len(owner) - wheels, color[hull])])
            self._steady.pop("car", None)
            self._geometry.pop("car", None)
            self._car_key = self.car
        return self._car_parts

    def _car_world(self, zoom: float) -> tuple[np.ndarray, list[tuple[int, tuple]]]:
        """The car's polygons as ``Car.draw`` draws them for ``state_pixels`` (no
        particles), inset by half a canvas pixel: world vertices float64 (Q, V, 2) in
        drawing order, the wheels, their grey stripes, then the hull, and the (count,
        colour) runs of those polygons.

        Car.draw draws each wheel and then its stripe; wheels do not overlap each other,
        so all wheels, then all stripes, then the hull give the same picture.
        """
        assert self.car is not None
        local, owner, (wheels, hull) = self._car_shapes()
        local = self._inset("car", local, slice(None), zoom)
        bodies = self.car.drawlist
        d = self._half_pixel(zoom)
        w, r = cd.WHEEL_W * cd.SIZE, cd.WHEEL_R * cd.SIZE
        dx = min(d, 0.9 * w)
        stripes, stripe_owner = [], []
        for k, obj in enumerate(bodies):
            if "phase" not in obj.__dict__:
                continue
            a1, a2 = obj.phase, obj.phase + 1.2
            s1, s2, c1, c2 = math.sin(a1), math.sin(a2), math.cos(a1), math.cos(a2)
            if s1 > 0 and s2 > 0:
                continue
            c1 = math.copysign(1.0, c1) if s1 > 0 else c1
            c2 = math.copysign(1.0, c2) if s2 > 0 else c2
            # Car.draw's stripe: an axis-aligned rectangle in the wheel's frame, inset
            y0, y1 = sorted((r * c1, r * c2))
            dy = min(d, 0.45 * (y1 - y0))
            corners = [(-w + dx, y0 + dy), (w - dx, y0 + dy), (w - dx, y1 - dy),
                       (-w + dx, y1 - dy)]
            stripes.append(corners + corners[-1:] * (local.shape[1] - 4))
            stripe_owner.append(k)
        runs = [wheels]
        if stripes:
            n = wheels[0]
            local = np.concatenate([local[:n], stripes, local[n:]])
            owner = np.concatenate([owner[:n], stripe_owner, owner[n:]])
            runs.append((len(stripes), cd.WHEEL_WHITE))
        runs.append(hull)
        pose = np.array([(b.angle, *b.position) for b in bodies])[owner]  # (Q, 3)
        c, s = np.cos(pose[:, 0:1]), np.sin(pose[:, 0:1])
        world = np.empty_like(local)
        world[..., 0] = c * local[..., 0] - s * local[..., 1] + pose[:, 1:2]
        world[..., 1] = s * local[..., 0] + c * local[..., 1] + pose[:, 2:3]
        return world, runs

    def _draw_bars(self) -> None:
        """``CarRacing._render_indicators``' bars on the canvas's dashboard band.

        pygame fills a bar's first and last pixel rows and columns, so a bar from window
        x0 to x1 covers [x0, x1 + 1); filled are the canvas pixels whose centres it
        covers.
        """
        assert self.car is not None
        s, h, height = cr.WINDOW_W / 40.0, cr.WINDOW_H / 40.0, cr.WINDOW_H
        car = self.car
        speed = math.hypot(*car.hull.linearVelocity)
        # (value, place, length, colour, vertical): Gymnasium's bars, in its order
        bars = [(speed, 5, 0.02 * speed, (255, 255, 255), True)]
        for k, place, color in ((0, 7, (0, 0, 255)), (1, 8, (0, 0, 255)),
                                (2, 9, (51, 0, 255)), (3, 10, (51, 0, 255))):
            omega = car.wheels[k].omega
            bars.append((omega, place, 0.01 * omega, color, True))
        steer = car.wheels[0].joint.angle
        bars.append((steer, 20, -10.0 * steer, (0, 255, 0), False))
        spin = car.hull.angularVelocity
        bars.append((spin, 30, -0.8 * spin, (255, 0, 0), False))
        canvas, kx, ky = self._canvas, self._kx, self._ky
        rows, cols = canvas.shape[:2]
        for value, place, val, color, vertical in bars:
            if abs(value) <= 1e-4:
                continue
            if vertical:
                x0, x1, y0, y1 = place * s, (place + 1) * s, height - (h + h * val), height - h
            else:
                x0, x1, y0, y1 = place * s, (place + val) * s, height - 4 * h, height - 2 * h
            (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
            # pixel i's centre is at window (i + 0.5) / k: inside if x0 <= it < x1 + 1
            c0, c1 = max(math.ceil(x0 * kx - 0.5), 0), min(math.ceil((x1 + 1) * kx - 0.5), cols)
            r0, r1 = max(math.ceil(y0 * ky - 0.5), 0), min(math.ceil((y1 + 1) * ky - 0.5), rows)
            canvas[r0:r1, c0:c1] = color

    def _draw_score(self) -> None:
        """The score text, rendered by pygame and area-scaled once per text (the same
        few hundred texts come back every episode)."""
        text = f"{self.reward:04.0f}"  # FastCarRacing._score's text
        placed = self._texts.get(text)
        if placed is None:
            surface = self._score()  # pygame renders the text now
            pixels = np.transpose(pygame.surfarray.array3d(surface), (1, 0, 2))
            w = max(1, round(pixels.shape[1] * self._kx))
            h = max(1, round(pixels.shape[0] * self._ky))
            small = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
            cx, cy = 60 * self._kx, (cr.WINDOW_H - cr.WINDOW_H * 2.5 / 40.0) * self._ky
            if len(self._texts) >= _MAX_TEXTS:
                self._texts.clear()
            placed = self._texts[text] = (small, int(round(cx - w / 2)),
                                          int(round(cy - h / 2)))
        small, x0, y0 = placed
        height, width = self._canvas.shape[:2]
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + small.shape[0], height), min(x0 + small.shape[1], width)
        self._canvas[ys:ye, xs:xe] = small[ys - y0: ye - y0, xs - x0: xe - x0]
