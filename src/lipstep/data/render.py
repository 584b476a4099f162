"""Procedural face renderer of the synthetic world: identity parameters + mouth + pose -> RGB frame.

Everything is drawn as polygons in *head-local* coordinates (units of the image side, origin at the
head centre, y down), moved by a pseudo-3D head pose (yaw, pitch, roll in radians), rasterised with
PIL at `supersample`× the output size and box-filtered down (anti-aliasing). The mouth follows a
3-number state (openness, width, roundness; each in [0, 1], see `data/visemes.py`): lips, a dark
interior, upper and lower teeth and a tongue appear as it opens. Blinks close the eyelids.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Skin tones (light -> dark), hair, eye, clothing and background palettes (RGB 0-255).
SKIN = np.array([[247, 219, 196], [240, 200, 170], [224, 172, 140], [198, 140, 104],
                 [160, 106, 74], [120, 78, 52], [92, 58, 40]], np.float32)
HAIR = np.array([[20, 16, 14], [58, 38, 24], [104, 70, 40], [160, 110, 60], [215, 180, 120],
                 [150, 60, 30], [128, 128, 128], [230, 230, 225]], np.float32)
IRIS = np.array([[70, 45, 25], [100, 70, 40], [60, 110, 160], [70, 120, 80], [110, 110, 110]], np.float32)
HAIR_STYLES = ("short", "long", "buzz", "volume", "bun")
INTERIOR = (38, 8, 12)  # mouth interior: darker than any lip or skin tone, so openness is measurable


@dataclass
class Identity:
    """One synthetic person. Every field is a number so the identity is also a vector."""

    face_w: float = 0.25        # half width of the face (image units)
    face_h: float = 0.32        # half height of the face
    jaw: float = 0.5            # 0 = pointed chin, 1 = square jaw
    skin_r: float = 224.0
    skin_g: float = 172.0
    skin_b: float = 140.0
    eye_dx: float = 0.095       # eye centre distance from the midline
    eye_y: float = -0.04        # eye height relative to head centre
    eye_size: float = 0.03      # eye half width
    iris_r: float = 70.0
    iris_g: float = 45.0
    iris_b: float = 25.0
    brow_thick: float = 0.012
    brow_tilt: float = 0.0      # radians; positive raises the outer ends
    nose_len: float = 0.08
    nose_w: float = 0.03
    mouth_y: float = 0.15       # mouth centre below head centre
    mouth_w: float = 0.075      # mouth half width at neutral width
    lip_thick: float = 0.016
    lip_r: float = 190.0
    lip_g: float = 100.0
    lip_b: float = 100.0
    hair_style: float = 0.0     # index into HAIR_STYLES
    hair_r: float = 58.0
    hair_g: float = 38.0
    hair_b: float = 24.0
    hairline: float = 0.55      # fraction of the upper face covered by hair
    cloth_r: float = 60.0
    cloth_g: float = 90.0
    cloth_b: float = 150.0
    collar: float = 0.0         # 0 crew neck, 1 v-neck, 2 shirt collar
    bg1_r: float = 180.0
    bg1_g: float = 190.0
    bg1_b: float = 200.0
    bg2_r: float = 120.0
    bg2_g: float = 130.0
    bg2_b: float = 150.0
    bg_pattern: float = 0.0     # 0 gradient, 1 stripes, 2 soft spots
    glasses: float = 0.0        # 0 none, 1 round, 2 rectangular
    ear_size: float = 0.04

    def to_vector(self) -> np.ndarray:
        return np.array(dataclasses.astuple(self), np.float32)

    @classmethod
    def from_vector(cls, vec) -> "Identity":
        return cls(*[float(v) for v in vec])

    def color(self, prefix: str) -> tuple[int, int, int]:
        return tuple(int(round(getattr(self, f"{prefix}_{c}"))) for c in "rgb")


def _jitter(rng, base, spread):
    return np.clip(base + rng.normal(0, spread, size=np.shape(base)), 0, 255)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity (face shape, colours, hair, clothes, background, glasses)."""
    skin = _jitter(rng, SKIN[rng.integers(len(SKIN))], 8)
    hair = _jitter(rng, HAIR[rng.integers(len(HAIR))], 10)
    iris = _jitter(rng, IRIS[rng.integers(len(IRIS))], 8)
    lip = np.clip(skin * np.array([0.82, 0.55, 0.58]) + np.array([20, 5, 10]), 0, 255)
    cloth = rng.uniform(20, 235, 3)
    bg1 = rng.uniform(60, 240, 3)
    bg2 = np.clip(bg1 * rng.uniform(0.55, 0.95) + rng.normal(0, 15, 3), 0, 255)
    face_w = rng.uniform(0.24, 0.285)
    values = dict(
        face_w=face_w, face_h=face_w * rng.uniform(1.18, 1.38), jaw=rng.uniform(0, 1),
        eye_dx=face_w * rng.uniform(0.36, 0.44), eye_y=rng.uniform(-0.06, -0.025),
        eye_size=face_w * rng.uniform(0.12, 0.15), brow_thick=rng.uniform(0.008, 0.016),
        brow_tilt=rng.uniform(-0.25, 0.2), nose_len=rng.uniform(0.06, 0.1), nose_w=rng.uniform(0.022, 0.036),
        mouth_y=rng.uniform(0.13, 0.17), mouth_w=face_w * rng.uniform(0.28, 0.36),
        lip_thick=rng.uniform(0.012, 0.02), hair_style=float(rng.integers(len(HAIR_STYLES))),
        hairline=rng.uniform(0.4, 0.7), collar=float(rng.integers(3)), bg_pattern=float(rng.integers(3)),
        glasses=float(rng.choice([0, 0, 1, 2])), ear_size=rng.uniform(0.033, 0.047),
    )
    for prefix, rgb in dict(skin=skin, hair=hair, iris=iris, lip=lip, cloth=cloth, bg1=bg1, bg2=bg2).items():
        values.update({f"{prefix}_{c}": float(v) for c, v in zip("rgb", rgb)})
    return Identity(**values)


# ---------------------------------------------------------------------------------------------
# geometry


def _ellipse(cx, cy, a, b, n=36, start=0.0, stop=2 * math.pi):
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * math.pi - 1e-9)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], 1)


def _ellipse_cap(cx, cy, a, b, y_cut, above=True, n=24):
    """Region of an ellipse above (or below) the horizontal line y = y_cut, as a polygon."""
    rel = float(np.clip((y_cut - cy) / b, -1.0, 1.0))
    phi = math.asin(rel)  # angle where the ellipse meets the cut line (y = cy + b sin t)
    if above:  # y < y_cut: angles from pi - phi ... 2pi + phi going through 3pi/2 (top)
        t = np.linspace(math.pi - phi, 2 * math.pi + phi, n)
    else:
        t = np.linspace(phi, math.pi - phi, n)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], 1)


def _face_outline(idn: Identity, n=64):
    """Face silhouette: rounder forehead, chin shaped by `jaw`."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = np.cos(t), np.sin(t)
    lower = y > 0
    power = 2.0 + 1.6 * idn.jaw  # superellipse exponent for the lower half: squarer jaw
    xl = np.sign(x) * np.abs(x) ** (2.0 / power)
    taper = 1.0 - (0.28 - 0.18 * idn.jaw) * np.clip(y, 0, 1) ** 2
    x = np.where(lower, xl * taper, x)
    return np.stack([x * idn.face_w, y * idn.face_h], 1)


@dataclass
class Pose:
    """Head pose: yaw (turn), pitch (nod), roll (tilt) in radians and an image-plane shift."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    dx: float = 0.0
    dy: float = 0.0


class _Projector:
    """Maps head-local points with a depth to pixel coordinates of the supersampled canvas."""

    def __init__(self, pose: Pose, scale: float, center=(0.5, 0.47)):
        self.pose, self.scale = pose, scale
        self.cx, self.cy = center[0] + pose.dx, center[1] + pose.dy
        self.cr, self.sr = math.cos(pose.roll), math.sin(pose.roll)

    def __call__(self, pts, depth=0.0) -> list[tuple[float, float]]:
        pts = np.asarray(pts, np.float64)
        x, y = pts[:, 0], pts[:, 1]
        p = self.pose
        x = x * math.cos(p.yaw) + depth * math.sin(p.yaw)        # turn: front features move more
        y = y * math.cos(p.pitch) - depth * math.sin(p.pitch)     # nod
        xr, yr = x * self.cr - y * self.sr, x * self.sr + y * self.cr
        return list(zip(((xr + self.cx) * self.scale).tolist(), ((yr + self.cy) * self.scale).tolist()))


# ---------------------------------------------------------------------------------------------
# drawing


def _shade(rgb, f, add=0):
    return tuple(int(np.clip(c * f + add, 0, 255)) for c in rgb)


def _background(idn: Identity, px: int) -> Image.Image:
    y = np.linspace(0, 1, px, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, px, dtype=np.float32)[None, :, None]
    c1, c2 = np.array(idn.color("bg1"), np.float32), np.array(idn.color("bg2"), np.float32)
    img = c1 * (1 - y) + c2 * y + 0 * x
    pattern = int(idn.bg_pattern)
    if pattern == 1:  # soft diagonal stripes
        img = img + 12 * np.sin((x + y) * 2 * math.pi * 4)
    elif pattern == 2:  # vignette with a bright spot
        r2 = (x - 0.2) ** 2 + (y - 0.2) ** 2
        img = img + 40 * np.exp(-r2 / 0.05) - 30 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _draw_body(d, proj_body, idn: Identity):
    cloth = idn.color("cloth")
    skin = idn.color("skin")
    neck_w = idn.face_w * 0.52
    neck = [(-neck_w, idn.face_h * 0.55), (neck_w, idn.face_h * 0.55), (neck_w * 1.05, 0.5), (-neck_w * 1.05, 0.5)]
    d.polygon(proj_body(neck), fill=_shade(skin, 0.85))
    top = idn.face_h + 0.07
    shoulders = np.concatenate([_ellipse(0, top + 0.2, 0.46, 0.2, 40, math.pi, 2 * math.pi),
                                [[0.5, 0.6], [-0.5, 0.6]]])
    d.polygon(proj_body(shoulders), fill=cloth)
    collar = int(idn.collar)
    if collar == 1:
        d.polygon(proj_body([(-neck_w, top - 0.01), (neck_w, top - 0.01), (0, top + 0.09)]), fill=_shade(skin, 0.85))
    elif collar == 2:
        for s in (-1, 1):
            d.polygon(proj_body([(0, top + 0.04), (s * neck_w * 1.3, top - 0.03), (s * neck_w * 1.6, top + 0.07)]),
                      fill=_shade(cloth, 1.0, 70))
    else:
        d.polygon(proj_body(_ellipse_cap(0, top - 0.01, neck_w * 1.05, 0.035, top - 0.01, above=False)),
                  fill=_shade(skin, 0.8))


def _draw_hair_back(d, proj, idn: Identity):
    style = HAIR_STYLES[int(idn.hair_style) % len(HAIR_STYLES)]
    hair = idn.color("hair")
    fw, fh = idn.face_w, idn.face_h
    if style == "long":
        back = np.concatenate([_ellipse(0, -0.02, fw * 1.22, fh * 1.12, 40, math.pi, 2 * math.pi),
                               [[fw * 1.25, fh * 1.25], [-fw * 1.25, fh * 1.25]]])
        d.polygon(proj(back, -0.05), fill=_shade(hair, 0.85))
    elif style == "volume":
        d.polygon(proj(_ellipse(0, -0.06, fw * 1.45, fh * 1.1), -0.05), fill=_shade(hair, 0.9))
    elif style == "bun":
        d.polygon(proj(_ellipse(0, -fh * 1.12, fw * 0.45, fw * 0.4), -0.05), fill=hair)


def _draw_head(d, proj, idn: Identity):
    skin = idn.color("skin")
    fw, fh = idn.face_w, idn.face_h
    for s in (-1, 1):  # ears
        d.polygon(proj(_ellipse(s * fw * 0.98, idn.eye_y + 0.02, idn.ear_size * 0.6, idn.ear_size), -0.02),
                  fill=_shade(skin, 0.9))
    d.polygon(proj(_face_outline(idn), 0.0), fill=skin)
    # soft jaw shadow and cheeks for depth
    d.polygon(proj(_ellipse_cap(0, fh * 0.35, fw * 0.9, fh * 0.62, fh * 0.78, above=False), 0.03),
              fill=(*_shade(skin, 0.8), 90))
    for s in (-1, 1):
        d.polygon(proj(_ellipse(s * fw * 0.55, idn.mouth_y - 0.04, fw * 0.2, fw * 0.13), 0.08),
                  fill=(220, 90, 90, 28))


def _draw_hair_front(d, proj, idn: Identity):
    style = HAIR_STYLES[int(idn.hair_style) % len(HAIR_STYLES)]
    hair = idn.color("hair")
    fw, fh = idn.face_w, idn.face_h
    cut = -fh + 2 * fh * idn.hairline * 0.5  # hairline height
    alpha = 120 if style == "buzz" else 255
    cap = _ellipse_cap(0, -0.005, fw * 1.06, fh * 1.06, cut, above=True, n=40)
    d.polygon(proj(cap, 0.02), fill=(*hair, alpha))
    if style in ("short", "long", "volume"):  # a side fringe
        fringe = [(-fw * 0.95, cut), (fw * 0.3, cut - 0.01), (-fw * 0.2, cut + 0.05), (-fw * 0.9, cut + 0.09)]
        d.polygon(proj(fringe, 0.05), fill=(*hair, alpha))


def _draw_eyes(d, proj, idn: Identity, blink: float, px: float):
    skin = idn.color("skin")
    a, b = idn.eye_size, idn.eye_size * 0.55
    for s in (-1, 1):
        cx, cy = s * idn.eye_dx, idn.eye_y
        d.polygon(proj(_ellipse(cx, cy, a * 1.25, b * 1.6), 0.1), fill=(*_shade(skin, 0.85), 110))  # socket
        d.polygon(proj(_ellipse(cx, cy, a, b), 0.12), fill=(245, 245, 240))
        d.polygon(proj(_ellipse(cx, cy, b * 0.95, b * 0.95), 0.13), fill=idn.color("iris"))
        d.polygon(proj(_ellipse(cx, cy, b * 0.45, b * 0.45), 0.14), fill=(15, 12, 12))
        d.polygon(proj(_ellipse(cx + b * 0.3, cy - b * 0.35, b * 0.18, b * 0.18), 0.15), fill=(255, 255, 255))
        lid_y = cy - b + 2 * b * float(np.clip(blink, 0, 1))
        if blink > 0.02:
            d.polygon(proj(_ellipse_cap(cx, cy, a * 1.04, b * 1.08, lid_y, above=True), 0.15), fill=_shade(skin, 0.95))
        lash = _ellipse(cx, cy, a * 1.02, b * 1.05, 16, math.pi, 2 * math.pi)
        if blink > 0.02:
            lash = [(x, max(y, lid_y)) for x, y in lash]
        d.line(proj(lash, 0.15), fill=(30, 22, 20), width=max(1, int(px * 0.008)))
        # brow
        tilt = idn.brow_tilt * s
        bx = np.linspace(-a * 1.2, a * 1.3, 8)
        by = cy - b * 2.3 - 0.012 * (1 - (bx / (a * 1.3)) ** 2) - tilt * bx * s
        brow = np.concatenate([np.stack([cx + s * bx, by], 1),
                               np.stack([cx + s * bx[::-1], by[::-1] + idn.brow_thick], 1)])
        d.polygon(proj(brow, 0.12), fill=_shade(idn.color("hair"), 0.75))


def _draw_nose(d, proj, idn: Identity, px: float):
    skin = idn.color("skin")
    top, tip = idn.eye_y + 0.01, idn.eye_y + 0.01 + idn.nose_len
    w = idn.nose_w
    bridge = [(-w * 0.3, top), (w * 0.1, top), (w * 0.55, tip), (-w * 0.05, tip + 0.005)]
    d.polygon(proj(bridge, 0.16), fill=(*_shade(skin, 0.85), 110))
    d.polygon(proj(_ellipse(0, tip - 0.004, w * 0.9, w * 0.5), 0.18), fill=_shade(skin, 0.93))
    for s in (-1, 1):
        d.polygon(proj(_ellipse(s * w * 0.45, tip + 0.002, w * 0.22, w * 0.13), 0.17), fill=_shade(skin, 0.45))


def mouth_geometry(idn: Identity, mouth) -> dict:
    """Lip and opening sizes (head-local units) for a mouth state (openness, width, roundness)."""
    openness, width, rnd = (float(np.clip(v, 0, 1)) for v in mouth)
    hw = idn.mouth_w * (0.8 + 0.45 * width) * (1.0 - 0.38 * rnd)
    oh = openness * idn.face_h * 0.30 * (1.0 + 0.25 * rnd)
    lt = idn.lip_thick * (1.0 + 0.5 * rnd)
    return dict(hw=hw, oh=oh, lt=lt, cy=idn.mouth_y + 0.35 * oh)  # the jaw drops: centre moves down


def _draw_mouth(d, proj, idn: Identity, mouth, px: float):
    g = mouth_geometry(idn, mouth)
    hw, oh, lt, cy = g["hw"], g["oh"], g["lt"], g["cy"]
    lip, lip_dark = idn.color("lip"), _shade(idn.color("lip"), 0.72)
    depth = 0.15
    # outer contour: upper lip with a cupid's bow, fuller lower lip
    xs = np.linspace(-1, 1, 21)
    bow = 0.25 * np.exp(-((np.abs(xs) - 0.25) / 0.18) ** 2)
    upper = cy - oh / 2 - lt * (1 - xs**2) ** 0.6 * (0.8 + bow)
    lower = cy + oh / 2 + lt * 1.25 * (1 - xs**2) ** 0.6
    outer = np.concatenate([np.stack([xs * hw * 1.08, upper], 1), np.stack([xs[::-1] * hw * 1.08, lower[::-1]], 1)])
    d.polygon(proj(outer, depth), fill=lip)
    if oh < 0.004:  # closed: a seam line
        seam = np.stack([xs * hw, cy + 0.002 * np.cos(xs * math.pi)], 1)
        d.line(proj(seam, depth), fill=_shade(lip, 0.45), width=max(1, int(px * 0.007)))
        return
    a, b = hw * 0.92, oh / 2
    d.polygon(proj(_ellipse(0, cy, a, b, 40), depth), fill=INTERIOR)
    tongue_top = cy + b * 0.55
    if oh > 0.02:
        d.polygon(proj(_ellipse_cap(0, cy, a * 0.8, b * 0.95, tongue_top, above=False), depth), fill=(185, 80, 90))
    teeth_h = min(b * 0.45, 0.013)
    d.polygon(proj(_ellipse_cap(0, cy, a * 0.97, b * 0.98, cy - b + teeth_h, above=True), depth), fill=(240, 238, 228))
    if oh > 0.04:
        d.polygon(proj(_ellipse_cap(0, cy, a * 0.9, b * 0.97, cy + b - teeth_h * 0.4, above=False), depth),
                  fill=(225, 222, 212))
    d.line(proj(np.stack([xs * hw * 1.0, cy - b + 0.0 * xs], 1)[[0, -1]], depth), fill=lip_dark, width=1)


def _draw_glasses(d, proj, idn: Identity, px: float):
    kind = int(idn.glasses)
    if kind == 0:
        return
    col, w = (25, 25, 30), max(1, int(px * 0.009))
    a, b = idn.eye_size * 1.55, idn.eye_size * 1.15
    for s in (-1, 1):
        cx, cy = s * idn.eye_dx, idn.eye_y
        if kind == 1:
            ring = _ellipse(cx, cy, a, a * 0.9, 32)
        else:
            ring = np.array([[cx - a, cy - b], [cx + a, cy - b], [cx + a, cy + b], [cx - a, cy + b]])
        pts = proj(ring, 0.2)
        d.line(pts + pts[:1], fill=col, width=w)
        d.line(proj([(s * (idn.eye_dx + a), cy), (s * idn.face_w * 0.98, cy - 0.005)], 0.1), fill=col, width=w)
    d.line(proj([(-idn.eye_dx + a, idn.eye_y), (idn.eye_dx - a, idn.eye_y)], 0.22), fill=col, width=w)


def render_frame(idn: Identity, mouth, pose: Pose, blink: float, size: int, *,
                 background: Image.Image | None = None, supersample: int | None = None) -> np.ndarray:
    """Render one RGB frame (uint8 [size, size, 3])."""
    ss = supersample or (4 if size <= 96 else 3 if size <= 160 else 2)
    px = size * ss
    img = (background.copy() if background is not None else _background(idn, px))
    d = ImageDraw.Draw(img, "RGBA")
    proj = _Projector(pose, px)
    body_pose = Pose(yaw=pose.yaw * 0.25, roll=pose.roll * 0.2, dx=pose.dx * 0.4, dy=pose.dy * 0.3)
    proj_body = _Projector(body_pose, px)
    _draw_hair_back(d, proj, idn)
    _draw_body(d, proj_body, idn)
    _draw_head(d, proj, idn)
    _draw_hair_front(d, proj, idn)
    _draw_eyes(d, proj, idn, blink, px)
    _draw_nose(d, proj, idn, px)
    _draw_mouth(d, proj, idn, mouth, px)
    _draw_glasses(d, proj, idn, px)
    return np.asarray(img.reduce(ss))


def background_for(idn: Identity, size: int, supersample: int | None = None) -> Image.Image:
    """The static background at the supersampled size (render it once per clip)."""
    ss = supersample or (4 if size <= 96 else 3 if size <= 160 else 2)
    return _background(idn, size * ss)


def mouth_box(idn: Identity, pose: Pose, size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) that contains the mouth at any openness, for pixel measurements."""
    hw = idn.mouth_w * 1.25 * 1.1
    top, bottom = idn.mouth_y - idn.lip_thick * 2.2, idn.mouth_y + idn.face_h * 0.3 * 1.6 + idn.lip_thick * 2.5
    corners = _Projector(pose, size)([(-hw, top), (hw, top), (hw, bottom), (-hw, bottom)], 0.15)
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    clamp = lambda v: int(min(max(v, 0), size))  # noqa: E731
    return clamp(math.floor(min(xs))), clamp(math.floor(min(ys))), clamp(math.ceil(max(xs))), clamp(math.ceil(max(ys)))


def _luma(rgb) -> float:
    return float(np.dot(np.asarray(rgb, np.float32), [0.299, 0.587, 0.114]))


def measure_openness(frame: np.ndarray, idn: Identity, pose: Pose) -> float:
    """Mouth opening measured from pixels: height (in pixels) of the dark interior in the mouth box.

    The mean of the three tallest columns of "interior darkness"; a pixel counts fully when it is as
    dark as the interior and partly when anti-aliasing mixed it with lips, so sub-pixel openings
    still register.
    """
    x0, y0, x1, y1 = mouth_box(idn, pose, frame.shape[0])
    patch = frame[y0:y1, x0:x1].astype(np.float32)
    luma = patch @ np.array([0.299, 0.587, 0.114], np.float32)
    ref = 0.85 * min(_luma(idn.color("skin")), _luma(idn.color("lip")))
    dark = np.clip((ref - luma) / max(ref - _luma(INTERIOR), 1.0), 0.0, 1.0)
    columns = np.sort(dark.sum(0))[::-1]  # dark height of each pixel column, tallest first
    return float(columns[:3].mean())
