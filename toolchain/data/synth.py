"""Generated driving scenes in the exact DDD17 (Ev-SegNet) file format.

The real DDD17 cannot be redistributed, so tests and the default demo use
scenes simulated here. A sequence is one street: a road with lane markings
and sidewalks (flat), building facades with windows and the sky
(construction+sky), trees and grass (nature), poles, signs and traffic lights
(object), walking pedestrians (human) and cars driving or parked (vehicle).
The camera drives forward, so the world expands from the vanishing point;
cars and pedestrians move on their own as well.

Events come from a DVS pixel model: the log brightness is rendered at several
sub-steps of the 50 ms window, and a pixel emits an event each time its log
brightness moves one contrast threshold (with per-pixel mismatch) away from
its reference. Background-activity noise and hot pixels are added. The
events go through `events.to_ddd17`, the same function that turns real
recordings into the 6-channel frames. Classes differ in texture and motion
(foliage is busy, sky is silent, windows form grids, cars and pedestrians
move against the flow), so the labels are learnable from the events, yet
not from position alone: the horizon, street width and layout vary.

Everything is numpy and deterministic per (seed, split, sequence, frame).
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.errors import ToolchainError
from .events import WINDOW_US, Events, to_ddd17

# Bump when the generator changes, so cached default sets are remade.
GENERATOR_VERSION = 2
FRAMES_PER_SEQUENCE = 16
SUBSTEPS = 4  # brightness renders per 50 ms window
FRAME_SPACING_S = 1.0  # time between exported frames of a sequence
Z_MAX = 250.0  # metres; beyond this everything is haze
CAM_HEIGHT = 1.4
SPLIT_ID = {"train": 0, "test": 1}
SEQ_BASE = {"train": 100, "test": 900}  # disjoint streets for train and test

FLAT, CONSTRUCTION, OBJECT, NATURE, HUMAN, VEHICLE, IGNORE = 0, 1, 2, 3, 4, 5, 255


def _noise(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1] on the integer lattice of (a, b)."""
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = a - ia, b - ib
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)
    ia, ib = ia.astype(np.int64), ib.astype(np.int64)

    def h(i, j):
        n = (i * 374761393 + j * 668265263 + seed * 1442695041).astype(np.uint32)
        n = (n ^ (n >> np.uint32(13))) * np.uint32(1274126177)
        return (n >> np.uint32(16)).astype(np.float32) * (1.0 / 65535.0)

    top = h(ia, ib) * (1 - fa) + h(ia + 1, ib) * fa
    bot = h(ia, ib + 1) * (1 - fa) + h(ia + 1, ib + 1) * fa
    return top * (1 - fb) + bot * fb


@dataclass
class _Obj:
    cls: int
    x: float  # lateral position, metres (right positive)
    z: float  # along the road at t = 0, metres
    vx: float
    vz: float
    parts: list  # (dx_left, dx_right, y_bottom, y_top, brightness, leg phase sign)
    gait: float = 0.0  # leg swing amplitude, metres (pedestrians)


class Street:
    """One sequence's world: layout, textures, movers, sensor properties."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.H, self.W = height, width
        self.f = 0.55 * width
        self.hy = height * rng.uniform(0.34, 0.46)
        self.vx = width * rng.uniform(0.45, 0.55)
        self.speed = rng.uniform(6.0, 14.0)
        self.rw = rng.uniform(3.5, 7.0)
        self.sw = rng.uniform(1.5, 3.5)
        self.wall = (self.rw + self.sw + rng.uniform(0, 4), self.rw + self.sw + rng.uniform(0, 4))
        self.tex = int(rng.integers(1 << 30))
        self.road_b = rng.uniform(0.22, 0.42)
        self.side_b = rng.uniform(0.45, 0.65)
        self.sky_b = rng.uniform(0.75, 0.95)
        self.gain = rng.uniform(0.7, 1.2)
        self.lanes = np.arange(-self.rw + 3.5, self.rw - 1.0, 3.5) if self.rw > 4.5 else np.array([0.0])
        self.hood = height * rng.uniform(0.9, 0.96)
        length = FRAMES_PER_SEQUENCE * FRAME_SPACING_S * self.speed + Z_MAX + 50
        self.segments = [self._segments(rng, length) for _ in range(2)]
        self.objects = self._objects(rng, length)
        # Sensor: contrast threshold with pixel mismatch, hot pixels, noise rate.
        self.C = rng.uniform(0.15, 0.25) * np.clip(1 + 0.1 * rng.standard_normal((height, width)), 0.6, 1.4)
        n_hot = max(1, int(height * width * rng.uniform(1e-4, 4e-4)))
        self.hot = rng.choice(height * width, n_hot, replace=False)
        self.hot_p = rng.random(n_hot) < 0.5
        self.ba = rng.uniform(0.002, 0.01)  # background events per pixel per window
        v = np.arange(height) + 0.5
        u = np.arange(width) + 0.5
        self.vv, self.uu = np.meshgrid(v, u, indexing="ij")

    @staticmethod
    def _segments(rng, length):
        z, rows = -20.0, []
        while z < length:
            kind = rng.choice(3, p=[0.5, 0.35, 0.15])  # building, trees, gap
            n = (rng.uniform(8, 30), rng.uniform(6, 25), rng.uniform(4, 14))[kind]
            rows.append((z, kind, (rng.uniform(6, 22), rng.uniform(3, 9), 0.0)[kind],
                         rng.uniform(0.35, 0.8) if kind == 0 else rng.uniform(0.12, 0.3),
                         rng.uniform(2.5, 4.0), rng.uniform(2.8, 3.6),
                         rng.choice([rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95)])))
            z += n
        return np.array(rows, dtype=np.float64)

    def _objects(self, rng, length) -> list[_Obj]:
        objs = []
        for side in (-1, 1):
            z = rng.uniform(0, 20)
            while z < length:  # poles, some with a sign or a traffic light
                x = side * (self.rw + rng.uniform(0.3, 0.9))
                hp = rng.uniform(4, 8)
                w = rng.uniform(0.12, 0.25)
                b = rng.choice([rng.uniform(0.05, 0.25), rng.uniform(0.65, 0.9)])
                parts = [(-w / 2, w / 2, 0, hp, b, 0)]
                r = rng.random()
                if r < 0.35:
                    d = -side * 0.3
                    parts.append((d - 0.35, d + 0.35, hp - 1.0, hp - 0.3, rng.choice([0.92, 0.1]), 0))
                elif r < 0.55:
                    parts.append((-0.18, 0.18, hp - 1.2, hp - 0.2, 0.04, 0))
                    parts.append((-0.07, 0.07, hp - 0.5, hp - 0.35, 0.95, 0))
                objs.append(_Obj(OBJECT, x, z, 0, 0, parts))
                z += rng.uniform(12, 40)
            z = rng.uniform(0, 30)
            while z < length:  # pedestrians on the sidewalk
                x = side * (self.rw + rng.uniform(0.4, self.sw))
                s = rng.uniform(0.9, 1.1)
                shirt, legs = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.5)
                parts = [(-0.15 * s, -0.02 * s, 0, 0.85 * s, legs, 1), (0.02 * s, 0.15 * s, 0, 0.85 * s, legs, -1),
                         (-0.24 * s, 0.24 * s, 0.8 * s, 1.45 * s, shirt, 0),
                         (-0.1 * s, 0.1 * s, 1.48 * s, 1.75 * s, rng.uniform(0.4, 0.75), 0)]
                crossing = rng.random() < 0.2
                vx = -side * rng.uniform(0.8, 1.6) if crossing else 0.0
                vz = 0.0 if crossing else rng.choice([-1, 1]) * rng.uniform(0.8, 1.8)
                objs.append(_Obj(HUMAN, x, z, vx, vz, parts, gait=0.12 * s))
                z += rng.exponential(25)
            if rng.random() < 0.6:
                z = rng.uniform(0, 20)
                while z < length:  # parked cars along the kerb
                    objs.append(self._car(rng, side * (self.rw - 1.1), z, 0.0))
                    z += rng.uniform(6, 40)
        for lane in self.lanes:  # traffic: same direction right of centre, oncoming left
            oncoming = lane < -0.5
            z = rng.uniform(8, 40)
            while z < length + 100:
                vz = -rng.uniform(8, 14) if oncoming else self.speed + rng.uniform(-4, 3)
                objs.append(self._car(rng, lane + rng.uniform(-0.3, 0.3), z, vz))
                z += rng.uniform(15, 60)
        return objs

    @staticmethod
    def _car(rng, x, z, vz) -> _Obj:
        w = rng.uniform(0.8, 1.0)
        body = rng.choice([0.08, 0.3, 0.55, 0.85]) + rng.uniform(-0.05, 0.05)
        glass = rng.uniform(0.05, 0.2)
        tall = rng.uniform(1.35, 1.9)  # cars, vans
        parts = [(-w, w, 0.3, 0.95, body, 0),
                 (-w + 0.12, w - 0.12, 0.95, tall, body * 0.8 + 0.05, 0),
                 (-w + 0.2, w - 0.2, 1.02, tall - 0.12, glass, 0),
                 (-w + 0.05, -w + 0.35, 0, 0.4, 0.03, 0), (w - 0.35, w - 0.05, 0, 0.4, 0.03, 0),
                 (-w + 0.05, -w + 0.3, 0.7, 0.85, 0.75, 0), (w - 0.3, w - 0.05, 0.7, 0.85, 0.75, 0)]
        return _Obj(VEHICLE, x, z, 0.0, vz, parts)

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Brightness (H, W) in (0, 1] and labels at time t (seconds)."""
        H, W, f, h = self.H, self.W, self.f, CAM_HEIGHT
        camz = self.speed * t
        hy = self.hy + 0.6 * np.sin(2 * np.pi * 1.3 * t)  # road bumps pitch the camera
        u, v = self.uu - self.vx, self.vv - hy
        img = np.empty((H, W))
        lab = np.full((H, W), CONSTRUCTION, np.uint8)

        with np.errstate(divide="ignore", invalid="ignore"):
            zg = np.where(v > 0, f * h / v, np.inf)
            right = u > 0
            xw = np.where(right, self.wall[1], self.wall[0])
            zw = np.where(np.abs(u) > 1e-6, f * xw / np.abs(u), np.inf)
            yw = h - v * zw / f
        # Walls: buildings and trees, one segment list per side.
        zw_world = np.minimum(zw, Z_MAX) + camz
        seg = np.empty(zw.shape + (7,))
        for s, rows in enumerate(self.segments):
            m = right if s else ~right
            i = np.clip(np.searchsorted(rows[:, 0], zw_world[m], side="right") - 1, 0, len(rows) - 1)
            seg[m] = rows[i]
        kind, top = seg[..., 1], seg[..., 2].copy()
        trees = kind == 1
        top[trees] *= 0.75 + 0.5 * _noise(zw_world[trees] * 0.4, np.zeros(trees.sum()), self.tex + 1)
        wall = (zw < Z_MAX) & (yw >= 0) & (yw <= top) & (kind != 2)
        ground = ~wall & (v > 0)
        sky = ~wall & ~ground

        # Sky: smooth, fixed to the screen (infinitely far), so it stays silent.
        img[sky] = self.sky_b - 0.1 * (-v[sky] / H) + 0.04 * _noise(self.uu[sky] / W * 4, self.vv[sky] / H * 4, self.tex)

        # Ground: road with markings, sidewalks with tiles, grass beyond.
        zgc = np.minimum(zg[ground], Z_MAX)
        xg, zgw = u[ground] * zgc / f, zgc + camz
        ax = np.abs(xg)
        g = self.road_b + 0.05 * _noise(xg * 4, zgw * 4, self.tex + 2) + 0.08 * _noise(xg * 0.3, zgw * 0.3, self.tex + 3)
        for lane in self.lanes[1:] - 1.75 if len(self.lanes) > 1 else []:
            dash = (np.abs(xg - lane) < 0.08) & (np.mod(zgw, 9.0) < 3.0)
            g = np.where(dash, 0.85, g)
        g = np.where(np.abs(ax - (self.rw - 0.25)) < 0.08, 0.8, g)
        walk = (ax >= self.rw) & (ax < self.rw + self.sw)
        tiles = (np.mod(zgw, 1.0) < 0.07) | (np.mod(xg, 1.0) < 0.07)
        g = np.where(walk, self.side_b - 0.15 * tiles + 0.03 * _noise(xg * 6, zgw * 6, self.tex + 4), g)
        g = np.where((ax >= self.rw) & (ax < self.rw + 0.2), 0.72, g)
        grass = ax >= self.rw + self.sw
        g = np.where(grass, 0.25 + 0.15 * _noise(xg * 3, zgw * 3, self.tex + 5)
                     + 0.08 * _noise(xg * 9, zgw * 9, self.tex + 6), g)
        img[ground] = g
        lab[ground] = np.where(grass, NATURE, FLAT)

        # Walls.
        zz, yy, sg = zw_world[wall], yw[wall], seg[wall]
        is_tree = sg[:, 1] == 1
        fz, fy = np.mod(zz / sg[:, 4], 1.0), np.mod(yy / sg[:, 5], 1.0)
        window = (fz > 0.25) & (fz < 0.75) & (fy > 0.3) & (fy < 0.75) & (yy > 2.5)
        facade = sg[:, 3] + 0.05 * _noise(zz * 2, yy * 2, self.tex + 7)
        facade = np.where(window, sg[:, 6], facade)
        facade = np.where(zz - sg[:, 0] < 0.4, facade * 0.55, facade)
        leaves = sg[:, 3] + 0.3 * _noise(zz * 2.5, yy * 2.5, self.tex + 8) + 0.2 * _noise(zz * 7, yy * 7, self.tex + 9)
        img[wall] = np.where(is_tree, leaves, facade)
        lab[wall] = np.where(is_tree, NATURE, CONSTRUCTION)

        # Haze: far surfaces fade toward the sky brightness.
        depth = np.where(wall, zw, np.where(ground, zg, Z_MAX))
        fog = np.clip(depth / Z_MAX, 0, 1) ** 2
        img = img * (1 - fog) + self.sky_b * fog

        self._draw_objects(img, lab, t, camz, hy)

        hood = self.vv > self.hood + 0.08 * H * ((self.uu - W / 2) / W) ** 2 * 4
        img[hood] = 0.08
        lab[hood] = IGNORE
        return np.clip(img, 0.01, 1.0), lab

    def _draw_objects(self, img, lab, t, camz, hy):
        f, h = self.f, CAM_HEIGHT
        if not hasattr(self, "_oz"):
            self._oz = np.array([o.z for o in self.objects])
            self._ovz = np.array([o.vz for o in self.objects])
        zcs = self._oz + self._ovz * t - camz
        near = np.flatnonzero((zcs > 1.5) & (zcs < Z_MAX * 0.6))
        for i in near[np.argsort(-zcs[near], kind="stable")]:  # painter's order, far first
            zc, o = float(zcs[i]), self.objects[i]
            x = o.x + o.vx * t
            swing = o.gait * np.sin(2 * np.pi * 1.8 * t + o.z)
            shade = 1 - np.clip(zc / Z_MAX, 0, 1) ** 2
            for dl, dr, yb, yt, b, leg in o.parts:
                dx = leg * swing
                _rect(img, lab, self.vx + f * (x + dl + dx) / zc, self.vx + f * (x + dr + dx) / zc,
                      hy + f * (h - yt) / zc, hy + f * (h - yb) / zc,
                      b * shade + self.sky_b * (1 - shade), o.cls)


def _rect(img, lab, u0, u1, v0, v1, value, cls):
    """Draw a screen rectangle with area coverage at its edges, so moving
    edges change pixel brightness gradually as a real sensor sees them."""
    H, W = img.shape
    c0, c1 = max(int(u0), 0), min(int(np.ceil(u1)), W)
    r0, r1 = max(int(v0), 0), min(int(np.ceil(v1)), H)
    if c0 >= c1 or r0 >= r1 or (u1 - u0) * (v1 - v0) < 0.02:
        return
    cx = np.minimum(np.arange(c0 + 1, c1 + 1), u1) - np.maximum(np.arange(c0, c1), u0)
    cy = np.minimum(np.arange(r0 + 1, r1 + 1), v1) - np.maximum(np.arange(r0, r1), v0)
    a = np.outer(cy, cx)
    view = img[r0:r1, c0:c1]
    view += a * (value - view)
    lab[r0:r1, c0:c1][a >= 0.5] = cls


def dvs_events(street: Street, t0: float, rng: np.random.Generator,
               substeps: int = SUBSTEPS) -> tuple[Events, np.ndarray, np.ndarray]:
    """Events of the 50 ms window ending at t0 + 50 ms, plus the brightness
    and labels at its end (the exported frame)."""
    H, W = street.H, street.W
    win = WINDOW_US * 1e-6
    t_us0 = int(round(t0 * 1e6))
    img, lab = street.render(t0)
    C = street.C
    ref = np.log(img + 0.03) + rng.uniform(-0.5, 0.5, (H, W)) * C
    xs, ys, ts, ps = [], [], [], []
    for k in range(1, substeps + 1):
        img, lab = street.render(t0 + win * k / substeps)
        d = np.log(img + 0.03) - ref
        n = np.minimum(np.floor(np.abs(d) / C), 6).astype(np.int64)
        ref += np.sign(d) * n * C
        idx = np.flatnonzero(n)
        rep = np.repeat(idx, n.ravel()[idx])
        ys.append(rep // W)
        xs.append(rep % W)
        ts.append((k - 1 + rng.random(len(rep))) / substeps)
        ps.append(d.ravel()[rep] > 0)
    n_ba = rng.poisson(street.ba * H * W)  # background activity
    pix = rng.integers(0, H * W, n_ba)
    ys.append(pix // W), xs.append(pix % W), ts.append(rng.random(n_ba)), ps.append(rng.random(n_ba) < 0.5)
    counts = rng.poisson(3.0, len(street.hot))  # hot pixels fire all the time
    pix = np.repeat(street.hot, counts)
    ys.append(pix // W), xs.append(pix % W), ts.append(rng.random(len(pix))), ps.append(np.repeat(street.hot_p, counts))
    t = np.concatenate(ts)
    order = np.argsort(t, kind="stable")
    ev = Events(np.concatenate(xs)[order].astype(np.int32), np.concatenate(ys)[order].astype(np.int32),
                t_us0 + (t[order] * WINDOW_US).astype(np.int64), np.concatenate(ps)[order])
    return ev, img, lab


def sample_names(n: int, split: str) -> list[tuple[int, int]]:
    """(sequence, frame) of the first n samples of a split."""
    return [(SEQ_BASE[split] + i // FRAMES_PER_SEQUENCE, i % FRAMES_PER_SEQUENCE) for i in range(n)]


def synthesize(out: str | Path, n_train: int, n_test: int, height: int = 200, width: int = 346,
               seed: int = 0, raw_events: bool = False, force: bool = False, progress: bool = True) -> Path:
    """Write a DDD17-format folder at `out`. It is built in a temporary folder
    beside `out` and renamed into place, so `out` is never half-written."""
    out = Path(out)
    for name, val, lo in (("n-train", n_train, 0), ("n-test", n_test, 0), ("height", height, 8), ("width", width, 8)):
        if val < lo:
            raise ToolchainError(f"--{name} must be >= {lo}, got {val}")
    if n_train + n_test == 0:
        raise ToolchainError("nothing to generate: --n-train and --n-test are both 0")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ToolchainError(f"{out}: already exists and is not empty (use --force to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise ToolchainError(f"{out}: cannot write here ({e.strerror or e})") from e
    try:
        _write_all(tmp, n_train, n_test, height, width, seed, raw_events, progress)
        (tmp / "synth.yaml").write_text(
            f"# DDD17-format scenes made by `toolchain data synth`\ngenerator_version: {GENERATOR_VERSION}\n"
            f"n_train: {n_train}\nn_test: {n_test}\nheight: {height}\nwidth: {width}\nseed: {seed}\n"
            f"raw_events: {str(raw_events).lower()}\nframes_per_sequence: {FRAMES_PER_SEQUENCE}\n")
        try:
            if out.exists():
                if not force:  # made by someone else meanwhile
                    raise ToolchainError(f"{out}: appeared while generating; not replaced")
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except OSError as e:
            raise ToolchainError(f"{out}: cannot move the generated set into place ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_all(root: Path, n_train, n_test, height, width, seed, raw_events, progress):
    for split in ("train", "test"):
        for sub in ("events", "labels", "images") + (("raw",) if raw_events else ()):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, int], list[int]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for seq, fr in sample_names(n, split):
            groups.setdefault((split, seq), []).append(fr)
    jobs = [(root, split, seq, frames, height, width, seed, raw_events) for (split, seq), frames in groups.items()]
    workers = min(os.cpu_count() or 1, 4, len(jobs)) if n_train + n_test >= 48 else 1
    bar = tqdm(total=n_train + n_test, desc="generating scenes", unit="frame", disable=not progress, leave=False)
    with bar:
        if workers > 1:
            # Sequences are independent and seeded on their own, so the files
            # are the same whatever the number of workers.
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for done in as_completed([pool.submit(_write_sequence, *j) for j in jobs]):
                    bar.update(done.result())
        else:
            for j in jobs:
                bar.update(_write_sequence(*j))


def _write_sequence(root: Path, split, seq, frames, height, width, seed, raw_events) -> int:
    street = Street(height, width, np.random.default_rng([seed, SPLIT_ID[split], seq]))
    for fr in frames:
        rng = np.random.default_rng([seed, SPLIT_ID[split], seq, fr, 1])
        t0 = fr * FRAME_SPACING_S + rng.uniform(0, 0.2)
        ev, img, lab = dvs_events(street, t0, rng)
        name = f"rec{seq}_export_{fr}"
        t_start = int(round(t0 * 1e6))
        frame = to_ddd17(ev, height, width, t_start, t_start + WINDOW_US)
        np.save(root / "events" / split / f"{name}.npy", frame)
        Image.fromarray(lab, mode="L").save(root / "labels" / split / f"{name}.png")
        grey = np.clip(img * street.gain * 255, 0, 255).astype(np.uint8)
        Image.fromarray(grey, mode="L").save(root / "images" / split / f"{name}.png")
        if raw_events:
            np.savez_compressed(root / "raw" / split / f"{name}.npz", x=ev.x.astype(np.uint16),
                                y=ev.y.astype(np.uint16), t=ev.t, p=ev.p.astype(np.uint8),
                                width=np.int32(width), height=np.int32(height),
                                t_start=np.int64(t_start), t_end=np.int64(t_start + WINDOW_US))
    return len(frames)


def default_root(n_train: int, n_test: int, height: int, width: int, seed: int) -> Path:
    import hashlib

    key = f"v{GENERATOR_VERSION}-{n_train}-{n_test}-{height}-{width}-{seed}"
    base = Path(os.environ.get("TOOLCHAIN_CACHE") or Path.home() / ".cache" / "toolchain")
    return base / f"ddd17-synth-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def ensure_default_data(cfg) -> Path:
    """The generated default set for `cfg.synth_*` and `cfg.seed`, made once
    in the cache folder (env TOOLCHAIN_CACHE, default ~/.cache/toolchain)."""
    root = default_root(cfg.synth_n_train, cfg.synth_n_test, cfg.synth_height, cfg.synth_width, cfg.seed)
    if (root / "synth.yaml").is_file():
        return root
    try:
        synthesize(root, cfg.synth_n_train, cfg.synth_n_test, cfg.synth_height, cfg.synth_width,
                   cfg.seed, progress=False)
    except ToolchainError:
        # Another process may have finished the same set first.
        for _ in range(600):
            if (root / "synth.yaml").is_file():
                return root
            time.sleep(0.1)
        raise
    return root
