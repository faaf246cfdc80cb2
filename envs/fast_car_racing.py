"""CarRacing-v3 with the same frames, several times faster to render.

:class:`FastCarRacing` is Gymnasium's ``CarRacing`` with the same physics, tracks,
rewards and pixel-identical observations (``tests/test_fast_car_racing.py`` checks
this frame by frame against Gymnasium's env). Only the renderer's wasted work goes:

* off-screen culling of the ~400 grass patches and ~600 road polygons is one numpy
  pass per frame instead of rotating and bound-checking each vertex in Python; the
  rotation replicates ``pygame.math.Vector2.rotate_rad`` bit for bit, so the same
  polygons are drawn at the same float coordinates;
* once the field covers the window (after the first second's zoom-in), its polygon
  fill is a plain ``Surface.fill`` with the same colour;
* the 100 rows that the dashboard's black band paints over are neither filled nor
  flipped (polygon fills are clipped there; anti-aliased outlines are not, because
  SDL_gfx clipping would change their pixels elsewhere);
* the 1000x800 drawing surface, the flipped copy and the 96x96 output surface are
  allocated once and reused instead of per frame;
* the score font is loaded once, not from disk every frame, and the score text
  surface is re-rendered only when the text changes.

Every other pixel is drawn by the same pygame calls with the same arguments in the
same order, which is what keeps the frames identical. What remains (about 2.2 ms a
frame on the benchmark machine) is pygame's C drawing at 1000x800 and the 1000x800
-> 96x96 smoothscale; see docs/performance.md.
"""

from __future__ import annotations

import math

import numpy as np
import pygame
from gymnasium.envs.box2d import car_racing as cr
from gymnasium.envs.box2d.car_racing import CarRacing
from pygame import gfxdraw

#: pygame's Vector2 epsilon: rotations this close to a multiple of pi/2 are exact swaps
_VECTOR_EPSILON = 1e-6


def _grass_polygons() -> np.ndarray:
    """The grass patches of ``CarRacing._render_road``: float64 (400, 4, 2), world units."""
    d = cr.GRASS_DIM
    return np.array([
        [(d * x + d, d * y + 0), (d * x + 0, d * y + 0),
         (d * x + 0, d * y + d), (d * x + d, d * y + d)]
        for x in range(-20, 20, 2) for y in range(-20, 20, 2)
    ], dtype=np.float64)


GRASS_POLYGONS = _grass_polygons()


def polygon_circles(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres float64 (N, 2) and radii float64 (N,) of circles around world polygons
    float64 (N, V, 2): a cheap first test of which polygons can be on screen."""
    centre = polys.mean(axis=1)
    radius = np.linalg.norm(polys - centre[:, None, :], axis=-1).max(axis=1)
    return centre, radius


GRASS_CIRCLES = polygon_circles(GRASS_POLYGONS)


def near(circles: tuple[np.ndarray, np.ndarray], point: tuple[float, float],
         reach: float) -> np.ndarray:
    """Indices (ascending) of the ``circles`` that come within ``reach`` of ``point``."""
    centre, radius = circles
    d2 = (centre[:, 0] - point[0]) ** 2 + (centre[:, 1] - point[1]) ** 2
    return np.flatnonzero(d2 <= (reach + radius) ** 2)

#: The background field of ``CarRacing._render_road``: float64 (1, 4, 2), world units.
FIELD_POLYGON = np.array([[(cr.PLAYFIELD, cr.PLAYFIELD), (cr.PLAYFIELD, -cr.PLAYFIELD),
                           (-cr.PLAYFIELD, -cr.PLAYFIELD), (-cr.PLAYFIELD, cr.PLAYFIELD)]])

#: Rows at the top of the (unflipped) drawing surface that become the bottom of the
#: frame, which ``CarRacing._render_indicators`` paints black before drawing the
#: dashboard: whatever the road drawing leaves there is never seen.
HIDDEN_ROWS = int(5 * cr.WINDOW_H / 40.0)
SHOWN_RECT = pygame.Rect(0, HIDDEN_ROWS, cr.WINDOW_W, cr.WINDOW_H - HIDDEN_ROWS)


def rotate_like_pygame(xy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate points as ``pygame.math.Vector2(p).rotate_rad(angle)`` does, bit for bit.

    ``xy``: float64 (..., 2). Returns the rotated x and y, each float64 (...).
    pygame reduces the angle to [0, 2 pi), swaps coordinates exactly within 1e-6 of a
    quarter turn, and otherwise computes ``c x - s y, s x + c y`` in double precision
    (no fused multiply-add), which numpy's elementwise operations reproduce.
    """
    x, y = xy[..., 0], xy[..., 1]
    a = math.fmod(angle, 2 * math.pi)
    if a < 0:
        a += 2 * math.pi
    if math.fmod(a + _VECTOR_EPSILON, math.pi / 2) < 2 * _VECTOR_EPSILON:
        quarter = int((a + _VECTOR_EPSILON) / (math.pi / 2)) % 4
        return [(x, y), (-y, x), (-x, -y), (y, -x)][quarter]
    c, s = math.cos(a), math.sin(a)
    return c * x - s * y, s * x + c * y


def to_screen(xy: np.ndarray, zoom: float, translation: tuple[float, float],
              angle: float) -> np.ndarray:
    """World polygons -> window pixel coordinates as ``CarRacing._draw_colored_polygon``.

    ``xy``: float64 (N, 4, 2) world units. Returns float64 (N, 4, 2) pixels.
    """
    rx, ry = rotate_like_pygame(xy, angle)
    return np.stack([rx * zoom + translation[0], ry * zoom + translation[1]], axis=-1)


def on_screen(poly: np.ndarray) -> np.ndarray:
    """Gymnasium's culling test, vectorised: bool (N,), any vertex inside the padded window.

    ``poly``: float64 (N, 4, 2) pixels.
    """
    pad = cr.MAX_SHAPE_DIM
    x, y = poly[..., 0], poly[..., 1]
    inside = (-pad <= x) & (x <= cr.WINDOW_W + pad) & (-pad <= y) & (y <= cr.WINDOW_H + pad)
    return inside.any(axis=-1)


def covers_window(quad: np.ndarray, margin: float = 4.0) -> bool:
    """Whether the convex ``quad`` (float64 (4, 2) pixels) contains the whole window.

    With ``margin`` pixels to spare, so that none of its edges is drawn on screen.
    """
    corners = np.array([(-margin, -margin), (cr.WINDOW_W + margin, -margin),
                        (cr.WINDOW_W + margin, cr.WINDOW_H + margin),
                        (-margin, cr.WINDOW_H + margin)])
    edge = np.roll(quad, -1, axis=0) - quad  # (4, 2)
    rel = corners[:, None, :] - quad[None, :, :]  # (corner, edge, 2)
    cross = edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]
    return bool((cross > 0).all() or (cross < 0).all())


class FastCarRacing(CarRacing):
    """Gymnasium's ``CarRacing`` (v3) with a faster renderer and identical frames.

    Same constructor arguments, spaces, physics and rewards; observations are uint8
    (96, 96, 3) ``state_pixels`` equal to Gymnasium's for the same seed and actions.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._road_xy = np.zeros((0, 4, 2))
        self._road_circles = (np.zeros((0, 2)), np.zeros(0))
        self._road_colors: list = []
        self._font: pygame.font.Font | None = None
        self._score_text = ""
        self._score_surface: pygame.Surface | None = None
        self._world: pygame.Surface | None = None
        self._flipped: pygame.Surface | None = None
        self._scaled: dict[tuple[int, int], pygame.Surface] = {}

    def _create_track(self) -> bool:
        if not super()._create_track():
            return False
        self._road_xy = np.array([poly for poly, _ in self.road_poly], dtype=np.float64)
        self._road_circles = polygon_circles(self._road_xy)
        # the tiles' colour arrays are live: the contact listener repaints touched tiles
        self._road_colors = [color for _, color in self.road_poly]
        return True

    def _render(self, mode: str):
        assert mode in self.metadata["render_modes"]
        if self.screen is None and mode == "human":
            pygame.display.init()
            self.screen = pygame.display.set_mode((cr.WINDOW_W, cr.WINDOW_H))
        if self.clock is None:
            self.clock = pygame.time.Clock()
        if "t" not in self.__dict__:
            return  # reset() not called yet

        if self._world is None:
            self._world = pygame.Surface((cr.WINDOW_W, cr.WINDOW_H))
            self._flipped = pygame.Surface((cr.WINDOW_W, cr.WINDOW_H))
        self.surf = self._world

        assert self.car is not None
        angle = -self.car.hull.angle
        zoom = 0.1 * cr.SCALE * max(1 - self.t, 0) + cr.ZOOM * cr.SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (cr.WINDOW_W / 2 + trans[0], cr.WINDOW_H / 4 + trans[1])

        self._render_road(zoom, trans, angle)
        self.car.draw(self.surf, zoom, trans, angle,
                      mode not in ["state_pixels_list", "state_pixels"])

        self.surf = self._flip(self._world)
        self._render_indicators(cr.WINDOW_W, cr.WINDOW_H)
        text = self._score()
        text_rect = text.get_rect()
        text_rect.center = (60, cr.WINDOW_H - cr.WINDOW_H * 2.5 / 40.0)
        self.surf.blit(text, text_rect)

        if mode == "human":
            pygame.event.pump()
            self.clock.tick(self.metadata["render_fps"])
            assert self.screen is not None
            self.screen.fill(0)
            self.screen.blit(self.surf, (0, 0))
            pygame.display.flip()
        elif mode == "rgb_array":
            return self._create_image_array(self.surf, (cr.VIDEO_W, cr.VIDEO_H))
        elif mode == "state_pixels":
            return self._create_image_array(self.surf, (cr.STATE_W, cr.STATE_H))
        else:
            return self.isopen

    def _flip(self, surface: pygame.Surface) -> pygame.Surface:
        """Upside-down copy of ``surface``'s shown rows into the reused second surface.

        The world surface's first :data:`HIDDEN_ROWS` rows end up under the dashboard,
        so only the rows below them are copied.
        """
        assert self._flipped is not None
        src = pygame.surfarray.pixels2d(surface)
        dst = pygame.surfarray.pixels2d(self._flipped)
        np.copyto(dst[:, : cr.WINDOW_H - HIDDEN_ROWS], src[:, HIDDEN_ROWS:][:, ::-1])
        del src, dst  # release the surface locks before blitting
        return self._flipped

    def _score(self) -> pygame.Surface:
        """The score text surface, rendered only when the text changes."""
        text = f"{self.reward:04.0f}"
        if self._score_surface is None or text != self._score_text:
            if not pygame.font.get_init():
                pygame.font.init()
            try:
                self._score_surface = self._text_surface(text)
            except pygame.error:
                # another CarRacing's close() ran pygame.quit(), which leaves the font
                # loaded before it unusable ("Invalid font"), even once fonts are
                # initialised again: load it again
                self._font = None
                pygame.font.init()
                self._score_surface = self._text_surface(text)
            self._score_text = text
        return self._score_surface

    def _text_surface(self, text: str) -> pygame.Surface:
        if self._font is None:
            self._font = pygame.font.Font(pygame.font.get_default_font(), 42)
        return self._font.render(text, True, (255, 255, 255), (0, 0, 0))

    def _render_road(self, zoom: float, translation: tuple[float, float], angle: float):
        field = to_screen(FIELD_POLYGON, zoom, translation, angle)[0]
        if covers_window(field):
            # the same pixels as Gymnasium's fill of the field polygon, whose edges are
            # all off screen; the hidden rows are left as they are
            self.surf.fill(self.bg_color, SHOWN_RECT)
        else:  # the first second's zoom-in shows the field's edges
            self.surf.fill((0, 0, 0))
            self._draw_colored_polygon(self.surf, FIELD_POLYGON[0].tolist(), self.bg_color,
                                       zoom, translation, angle, clip=False)
        # Gymnasium draws a polygon if a vertex is within MAX_SHAPE_DIM of the window; a
        # circle test around the car first leaves a few dozen of the ~1,000 polygons
        assert self.car is not None
        pad = cr.MAX_SHAPE_DIM
        reach = math.hypot(cr.WINDOW_W / 2 + pad, cr.WINDOW_H * 3 / 4 + pad) / zoom
        car = tuple(self.car.hull.position)
        for polys, circles, colors in ((GRASS_POLYGONS, GRASS_CIRCLES, None),
                                       (self._road_xy, self._road_circles, self._road_colors)):
            index = near(circles, car, reach)
            screen = to_screen(polys[index], zoom, translation, angle)
            for i, low in self._visible(screen):
                color = self.grass_color if colors is None else \
                    [int(c) for c in colors[index[i]]]
                self._draw_polygon(screen[i].tolist(), color, low)

    @staticmethod
    def _visible(polys: np.ndarray) -> list[tuple[int, bool]]:
        """(index, reaches the hidden rows) of each polygon to draw, in drawing order.

        ``polys``: float64 (N, 4, 2) pixels. Drawn are those Gymnasium draws
        (:func:`on_screen`) minus those wholly inside the hidden rows (2 pixels' margin
        for SDL_gfx's integer conversion and anti-aliasing).
        """
        y = polys[..., 1]
        draw = on_screen(polys) & (y.max(axis=-1) >= HIDDEN_ROWS - 2)
        index = np.flatnonzero(draw)
        low = y.min(axis=-1)[index] < HIDDEN_ROWS + 2
        return list(zip(index.tolist(), low.tolist(), strict=True))

    def _draw_polygon(self, points: list, color, low: bool) -> None:
        """An anti-aliased outline, then a fill, as ``CarRacing._draw_colored_polygon``.

        A fill reaching into the hidden rows is clipped to the shown ones (a fill's
        pixels do not depend on the clip); outlines never are, since SDL_gfx moves a
        clipped line's end points and so changes its anti-aliasing.
        """
        surf = self.surf
        gfxdraw.aapolygon(surf, points, color)
        if low:
            surf.set_clip(SHOWN_RECT)
            gfxdraw.filled_polygon(surf, points, color)
            surf.set_clip(None)
        else:
            gfxdraw.filled_polygon(surf, points, color)

    def _create_image_array(self, screen: pygame.Surface, size: tuple[int, int]) -> np.ndarray:
        """``screen`` smooth-scaled to ``size``: uint8 (size[1], size[0], 3)."""
        if size not in self._scaled:
            self._scaled[size] = pygame.Surface(size, 0, screen)
        scaled = pygame.transform.smoothscale(screen, size, self._scaled[size])
        return np.transpose(np.array(pygame.surfarray.pixels3d(scaled)), axes=(1, 0, 2))
