"""CarRacing-v3 with the observation drawn straight into the 96x96 frame (not identical).

:class:`DirectCarRacing` keeps Gymnasium's physics, tracks, rewards and episode ends (the
renderer never touches them), but draws the ``state_pixels`` observation with OpenCV into
a small supersampled canvas and box-averages it to 96x96, instead of drawing a
1000x800 window with pygame and shrinking it. Its frames therefore differ slightly
from Gymnasium's (``benchmarks/car_racing.py`` prints the mean absolute difference);
use it where steps per second matter more than exact pixels, and check that what is
trained in it works in Gymnasium's env (docs/performance.md). ``render()`` for
``rgb_array`` and ``human`` still uses the exact renderer of :mod:`envs.fast_car_racing`.

Geometry: a window point (X, Y) of Gymnasium's 1000x800 drawing surface, which is
flipped upside down before it is shrunk, lands at canvas point
``(X * sx, (800 - Y) * sy)`` with ``sx = 96 s / 1000`` and ``sy = 96 s / 800`` for a
canvas of ``96 s`` x ``96 s`` pixels (``s`` = ``supersample``). The dashboard is drawn
after the flip, so its points need no flip.
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

    Same constructor arguments as ``CarRacing`` plus ``supersample`` (the canvas is
    ``96 * supersample`` pixels square, then area-averaged to 96x96; >= 1; default 2).
    """

    def __init__(self, *args, supersample: int = 2, **kwargs):
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        super().__init__(*args, **kwargs)
        self.supersample = int(supersample)
        side = cr.STATE_W * self.supersample
        self._canvas = np.zeros((side, side, 3), dtype=np.uint8)
        self._scale = np.array([side / cr.WINDOW_W, side / cr.WINDOW_H])
        self._text_key: tuple[str, int] | None = None
        self._text: tuple[np.ndarray, np.ndarray] | None = None
        self._car_key: object = None
        self._car_cache: tuple = ()
        self._car_poly_owner: list[int] = []
        self._road_color_rows = np.zeros((0, 3))

    def _create_track(self) -> bool:
        if not super()._create_track():
            return False
        # The colour of every road polygon (tiles and their kerbs) becomes a row of one
        # array, so that a frame reads them all at once. The contact listener repaints
        # tiles in place (``tile.color[:] = ...``), which now writes into that array.
        self._road_color_rows = np.array([c for _, c in self.road_poly], dtype=np.float64)
        row_of = {id(c): i for i, (_, c) in enumerate(self.road_poly)}
        for tile in self.road:
            i = row_of[id(tile.color)]
            tile.color = self._road_color_rows[i]
            self.road_poly[i] = (self.road_poly[i][0], tile.color)
        self._road_colors = list(self._road_color_rows)
        return True

    def _render(self, mode: str):
        if mode != "state_pixels" or "t" not in self.__dict__:
            return super()._render(mode)
        return self._draw_state()

    # -- drawing --------------------------------------------------------------------

    def _to_canvas(self, world: np.ndarray, zoom: float, angle: float) -> np.ndarray:
        """World points float64 (N, 2) -> fixed-point canvas points int32 (N, 2).

        Gymnasium's view: rotate by ``angle`` about the car, scale by ``zoom``, put the
        car at window point (W/2, H/4); then flip and scale to the canvas.
        """
        assert self.car is not None
        c, s = math.cos(angle), math.sin(angle)
        px, py = self.car.hull.position
        x, y = world[:, 0] - px, world[:, 1] - py
        out = np.empty(world.shape, dtype=np.float64)
        out[:, 0] = ((c * x - s * y) * zoom + cr.WINDOW_W / 2) * self._scale[0] - 0.5
        out[:, 1] = (cr.WINDOW_H * 3 / 4 - (s * x + c * y) * zoom) * self._scale[1] - 0.5
        out *= _ONE
        return np.rint(out).astype(np.int32)

    def _fill(self, points: list[np.ndarray], color) -> None:
        """Fill fixed-point canvas polygons (each int32 (V, 2)) with one colour."""
        if len(points):
            cv2.fillPoly(self._canvas, points, tuple(int(c) for c in color), cv2.LINE_8, _SHIFT)

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
        car_world, car_polys = self._car_world()
        # every point of the frame in one transform: field, grass, road, car
        world = [FIELD_POLYGON[0], GRASS_POLYGONS[grass].reshape(-1, 2),
                 self._road_xy[road].reshape(-1, 2), car_world]
        points = self._to_canvas(np.concatenate(world), zoom, angle)
        field, points = points[:4], points[4:]
        grass_points, points = points[: 4 * len(grass)], points[4 * len(grass):]
        road_points, car_points = points[: 4 * len(road)], points[4 * len(road):]

        canvas = self._canvas
        side = canvas.shape[0]
        if field_edge:  # black beyond the field
            cv2.rectangle(canvas, (0, 0), (side, side), (0, 0, 0), -1)
            self._fill([field], self.bg_color)
        else:
            cv2.rectangle(canvas, (0, 0), (side, side), tuple(int(c) for c in self.bg_color), -1)
        self._fill(list(grass_points.reshape(-1, 4, 2)), self.grass_color)
        if len(road):
            # Gymnasium draws tile colours as ints; one fill per distinct colour
            rgb = self._road_color_rows[road].astype(np.int64)
            key = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
            quads = road_points.reshape(-1, 4, 2)
            for k in np.unique(key).tolist():
                self._fill(list(quads[key == k]), ((k >> 16) & 255, (k >> 8) & 255, k & 255))
        self._draw_car(car_points, car_polys)
        self._draw_dashboard()
        frame = cv2.resize(canvas, (cr.STATE_W, cr.STATE_H), interpolation=cv2.INTER_AREA)
        return cv2.LUT(frame, smoothscale_levels())

    def _car_parts(self) -> tuple[np.ndarray, np.ndarray, list[int], list[tuple]]:
        """The car's polygons in body coordinates, made once per car.

        Returns local vertices float64 (M, 2), each vertex's index in ``car.drawlist``
        int (M,), the vertex count of each polygon and each polygon's colour.
        """
        assert self.car is not None
        if self._car_key is not self.car:
            local, owner, counts, colors, poly_owner = [], [], [], [], []
            for k, obj in enumerate(self.car.drawlist):
                for fixture in obj.fixtures:
                    vertices = np.asarray(fixture.shape.vertices, dtype=np.float64)
                    local.append(vertices)
                    owner += [k] * len(vertices)
                    counts.append(len(vertices))
                    colors.append(tuple(int(c * 255) for c in obj.color))
                    poly_owner.append(k)
            self._car_cache = (np.concatenate(local), np.asarray(owner), counts, colors)
            self._car_poly_owner = poly_owner
            self._car_key = self.car
        return self._car_cache

    def _car_world(self) -> tuple[np.ndarray, list[tuple[int, tuple]]]:
        """World vertices float64 (M, 2) of the car's polygons as ``Car.draw`` draws
        them for ``state_pixels`` (no particles), and each polygon's (vertex count,
        colour) in drawing order: wheels, their grey stripes, then the hull."""
        assert self.car is not None
        local, owner, counts, colors = self._car_parts()
        bodies = self.car.drawlist
        pose = np.array([(b.angle, *b.position) for b in bodies])  # (bodies, 3)
        w, r = cd.WHEEL_W * cd.SIZE, cd.WHEEL_R * cd.SIZE
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
            stripes += [(-w, r * c1), (w, r * c1), (w, r * c2), (-w, r * c2)]
            stripe_owner += [k] * 4
        polys = list(zip(counts, colors, strict=True))
        hull = [p for p, k in zip(polys, self._car_poly_owner, strict=True) if k == len(bodies) - 1]
        wheels = polys[: len(polys) - len(hull)]
        if stripes:
            local = np.concatenate([local[: sum(n for n, _ in wheels)], stripes,
                                    local[sum(n for n, _ in wheels):]])
            owner = np.concatenate([owner[: sum(n for n, _ in wheels)], stripe_owner,
                                    owner[sum(n for n, _ in wheels):]])
            polys = wheels + [(4, cd.WHEEL_WHITE)] * (len(stripes) // 4) + hull
        c, s = np.cos(pose[owner, 0]), np.sin(pose[owner, 0])
        world = np.empty_like(local)
        world[:, 0] = c * local[:, 0] - s * local[:, 1] + pose[owner, 1]
        world[:, 1] = s * local[:, 0] + c * local[:, 1] + pose[owner, 2]
        return world, polys

    def _draw_car(self, points: np.ndarray, polys: list[tuple[int, tuple]]) -> None:
        """Fill the car's canvas polygons, one fill per run of one colour.

        Car.draw draws each wheel and then its stripe; wheels do not overlap each other,
        so all wheels, then all stripes, then the hull give the same picture.
        """
        start, run, run_color = 0, [], None
        for count, color in polys:
            if color != run_color and run:
                self._fill(run, run_color)
                run = []
            run.append(points[start: start + count])
            run_color = color
            start += count
        self._fill(run, run_color)

    def _draw_dashboard(self) -> None:
        """``CarRacing._render_indicators`` and the score text, at canvas scale."""
        assert self.car is not None
        width, height = cr.WINDOW_W, cr.WINDOW_H
        s, h = width / 40.0, height / 40.0
        top = int(round((height - 5 * h) * self._scale[1]))
        self._canvas[top:] = 0
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
        canvas, (sx, sy) = self._canvas, self._scale
        for value, place, val, color, vertical in bars:
            if abs(value) <= 1e-4:
                continue
            if vertical:
                x0, x1, y0, y1 = place * s, (place + 1) * s, height - (h + h * val), height - h
            else:
                x0, x1, y0, y1 = place * s, (place + val) * s, height - 4 * h, height - 2 * h
            # an axis-aligned bar: the canvas pixels whose centres it covers
            u0, u1 = sorted((x0 * sx - 0.5, x1 * sx - 0.5))
            v0, v1 = sorted((y0 * sy - 0.5, y1 * sy - 0.5))
            canvas[math.ceil(v0): math.floor(v1) + 1, math.ceil(u0): math.floor(u1) + 1] = color
        self._draw_score()

    def _draw_score(self) -> None:
        """The score text, rendered by pygame once per change and area-scaled."""
        key = (f"{self.reward:04.0f}", self.supersample)
        if self._text_key != key:
            pygame.font.init()
            text = self._score()  # pygame surface, as FastCarRacing renders it
            pixels = np.transpose(pygame.surfarray.array3d(text), (1, 0, 2))
            w = max(1, round(pixels.shape[1] * self._scale[0]))
            h = max(1, round(pixels.shape[0] * self._scale[1]))
            small = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
            cx, cy = 60 * self._scale[0], (cr.WINDOW_H - cr.WINDOW_H * 2.5 / 40.0) * self._scale[1]
            x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
            self._text = (small, np.array([x0, y0]))
            self._text_key = key
        assert self._text is not None
        small, (x0, y0) = self._text
        side = self._canvas.shape[0]
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + small.shape[0], side), min(x0 + small.shape[1], side)
        self._canvas[ys:ye, xs:xe] = small[ys - y0: ye - y0, xs - x0: xe - x0]
