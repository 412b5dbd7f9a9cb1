"""Procedural 3D scenes ray-cast in numpy: exact depth, normals, instances and classes.

A scene is a floor, a back wall of finite height (sky above it is unlabeled, with no
depth), and spheres, yawed boxes and upright cylinders standing on the floor, textured
and lit by a directional light with cast shadows, seen by a pinhole camera pitched
down. Everything is a pure function of the seed, so the default build needs no
download and renderers can be tested against exact ground truth.

Camera frame (also the frame of the returned normals): x right, y up, z towards the
camera; the camera looks along -z. Depth is the distance along the optical axis.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np

from lavin_data.geometry.camera import intrinsics_from_fov

CATEGORIES = [
    {"id": 1, "name": "floor", "isthing": 0},
    {"id": 2, "name": "wall", "isthing": 0},
    {"id": 3, "name": "sphere", "isthing": 1},
    {"id": 4, "name": "box", "isthing": 1},
    {"id": 5, "name": "cylinder", "isthing": 1},
]
_INF = np.float64(np.inf)
_EPS = 1e-6


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres along the optical axis, 0 = no surface (sky)
    normals: np.ndarray  # (H, W, 3) float32 unit, camera frame; 0 where no surface
    segments: np.ndarray  # (H, W) uint16 segment id, 0 = unlabeled
    segments_info: list[dict]  # [{id, category_id, isthing, bbox [x0,y0,x1,y1) , area}]
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy in pixels
    params: dict  # the random draws, for the json


# --------------------------------------------------------------------------- primitives
# Each intersect(o, d) takes ray origins and directions (N, 3) in world space and
# returns (t (N,), normal (N, 3)); t is inf where the ray misses (or t <= eps).


def _plane_y(y0: float, o, d):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (y0 - o[:, 1]) / d[:, 1]
    t = np.where(np.isfinite(t) & (t > _EPS), t, _INF)
    n = np.zeros_like(o)
    n[:, 1] = 1.0
    return t, n


def _wall(z0: float, top: float, o, d):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (z0 - o[:, 2]) / d[:, 2]
    y = o[:, 1] + t * d[:, 1]
    t = np.where(np.isfinite(t) & (t > _EPS) & (y <= top), t, _INF)
    n = np.zeros_like(o)
    n[:, 2] = 1.0
    return t, n


def _sphere(c, r, o, d):
    oc = o - c
    a = (d * d).sum(1)
    b = 2 * (oc * d).sum(1)
    cc = (oc * oc).sum(1) - r * r
    disc = b * b - 4 * a * cc
    sq = np.sqrt(np.maximum(disc, 0))
    t0, t1 = (-b - sq) / (2 * a), (-b + sq) / (2 * a)
    t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, _INF))
    t = np.where(disc >= 0, t, _INF)
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    return t, (p - c) / r


def _box(c, half, yaw, o, d):
    cy_, sy_ = np.cos(yaw), np.sin(yaw)
    rot = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])  # local -> world
    ol, dl = (o - c) @ rot, d @ rot  # world -> local (rot is orthonormal)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1, t2 = (-half - ol) * inv, (half - ol) * inv
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (tmax >= tmin) & (tmax > _EPS)
    t = np.where(tmin > _EPS, tmin, tmax)
    t = np.where(hit, t, _INF)
    pl = ol + np.where(np.isfinite(t), t, 0)[:, None] * dl
    # The face hit is the axis where the local point is closest to the box surface.
    axis = np.argmax(np.abs(pl) / half, axis=1)
    nl = np.zeros_like(pl)
    nl[np.arange(len(pl)), axis] = np.sign(pl[np.arange(len(pl)), axis])
    return t, nl @ rot.T


def _cylinder(base, r, height, o, d):
    ox, oz = o[:, 0] - base[0], o[:, 2] - base[2]
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = 2 * (ox * d[:, 0] + oz * d[:, 2])
    cc = ox * ox + oz * oz - r * r
    disc = b * b - 4 * a * cc
    sq = np.sqrt(np.maximum(disc, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = np.stack([(-b - sq) / (2 * a), (-b + sq) / (2 * a)], 1)
    ys = o[:, 1:2] + ts * d[:, 1:2]
    ok = (disc[:, None] >= 0) & (ts > _EPS) & (ys >= base[1]) & (ys <= base[1] + height)
    t_side = np.where(ok, ts, _INF).min(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (base[1] + height - o[:, 1]) / d[:, 1]
    pc = o + np.where(np.isfinite(t_cap), t_cap, 0)[:, None] * d
    in_cap = (pc[:, 0] - base[0]) ** 2 + (pc[:, 2] - base[2]) ** 2 <= r * r
    t_cap = np.where(np.isfinite(t_cap) & (t_cap > _EPS) & in_cap, t_cap, _INF)
    t = np.minimum(t_side, t_cap)
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = np.stack([(p[:, 0] - base[0]) / r, np.zeros(len(p)), (p[:, 2] - base[2]) / r], 1)
    n[t_cap <= t_side] = (0.0, 1.0, 0.0)
    return t, n


# --------------------------------------------------------------------------- scene


def _colour(rng: np.random.Generator, s=(0.4, 0.9), v=(0.5, 0.95)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v)))


def render_scene(
    seed: int | np.random.SeedSequence, width: int = 320, height: int = 240, fov_deg: float = 60.0,
    max_objects: int = 6,
) -> Scene:
    """Ray-cast one random scene. Deterministic in ``seed``; costs ~O(W*H*objects)."""
    rng = np.random.default_rng(seed)
    fx, fy, cx, cy = intrinsics_from_fov(width, height, fov_deg)  # pixel centres at integers
    cam_h = rng.uniform(1.0, 1.8)
    pitch = np.radians(rng.uniform(5, 20))
    wall_z, wall_top = -rng.uniform(7, 12), rng.uniform(2.5, 4.5) - cam_h
    floor_y = -cam_h

    # Camera -> world rotation (pitch down about x); camera sits at the origin.
    cp, sp = np.cos(-pitch), np.sin(-pitch)
    rot = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])

    prims = [  # (segment id, category id, intersect, texture kind, colours)
        (1, 1, lambda o, d: _plane_y(floor_y, o, d), "checker", (_colour(rng), _colour(rng)), rng.uniform(0.4, 1.0)),
        (2, 2, lambda o, d: _wall(wall_z, wall_top, o, d), "stripes", (_colour(rng), _colour(rng)),
         rng.uniform(0.3, 0.8)),
    ]
    placed: list[tuple[float, float, float]] = []  # footprint circles (x, z, radius)
    objects = []
    n_obj = int(rng.integers(1, max_objects + 1))
    tries = 0
    while len(objects) < n_obj and tries < 200:
        tries += 1
        z = rng.uniform(wall_z + 1.0, -2.5)
        half_w = -z * np.tan(np.radians(fov_deg) / 2)
        x = rng.uniform(-half_w * 0.9, half_w * 0.9)
        kind = int(rng.integers(3, 6))
        size = rng.uniform(0.25, 0.8)
        if any((x - px) ** 2 + (z - pz) ** 2 < (size + pr + 0.05) ** 2 for px, pz, pr in placed):
            continue
        placed.append((x, z, size))
        sid = 3 + len(objects)
        if kind == 3:
            c = np.array([x, floor_y + size, z])
            fn = functools.partial(_sphere, c, size)
            desc = {"shape": "sphere", "centre": c.tolist(), "radius": size}
        elif kind == 4:
            half = np.array([size, rng.uniform(0.2, 0.9), rng.uniform(0.2, size)])
            c = np.array([x, floor_y + half[1], z])
            yaw = rng.uniform(0, np.pi)
            fn = functools.partial(_box, c, half, yaw)
            desc = {"shape": "box", "centre": c.tolist(), "half_size": half.tolist(), "yaw": yaw}
        else:
            hgt = rng.uniform(0.4, 2.0)
            base = np.array([x, floor_y, z])
            fn = (lambda b, r, h: lambda o, d: _cylinder(b, r, h, o, d))(base, size, hgt)
            desc = {"shape": "cylinder", "base": base.tolist(), "radius": size, "height": hgt}
        tex = ["plain", "stripes", "checker"][int(rng.integers(0, 3))]
        prims.append((sid, kind, fn, tex, (_colour(rng), _colour(rng)), rng.uniform(0.15, 0.5)))
        objects.append(desc)

    # Primary rays through pixel centres (integer coordinates, OpenCV's convention, like the
    # intrinsics), unnormalised with z = -1 so that t is depth.
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    d_cam = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1).reshape(-1, 3)
    d = d_cam @ rot.T
    o = np.zeros_like(d)
    n_pix = len(d)
    best_t = np.full(n_pix, _INF)
    best_n = np.zeros((n_pix, 3))
    best_k = np.full(n_pix, -1)
    for k, (_, _, fn, *_rest) in enumerate(prims):
        t, n = fn(o, d)
        closer = t < best_t
        best_t[closer], best_n[closer], best_k[closer] = t[closer], n[closer], k
    hit = np.isfinite(best_t)
    p = o + np.where(hit, best_t, 0)[:, None] * d

    # Shade: ambient + Lambert with shadows from the objects, procedural textures.
    light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(0.2, 0.8)])
    light /= np.linalg.norm(light)
    lit = np.clip(best_n @ light, 0, None)
    shadow = np.zeros(n_pix, bool)
    idx = np.nonzero(hit & (lit > 0))[0]
    if len(idx):
        so = p[idx] + best_n[idx] * 1e-4
        sd = np.broadcast_to(light, so.shape)
        for _, _, fn, *_rest in prims[2:]:
            t, _n = fn(so, sd)
            shadow[idx[np.isfinite(t)]] = True
    albedo = np.zeros((n_pix, 3))
    for k, (_, _, _, tex, (c0, c1), scale) in enumerate(prims):
        m = best_k == k
        if not m.any():
            continue
        q = p[m] / scale
        if tex == "checker":
            sel = (np.floor(q[:, 0]) + np.floor(q[:, 1]) + np.floor(q[:, 2])) % 2 == 0
        elif tex == "stripes":
            sel = np.floor(q[:, 0] + 0.5 * q[:, 1]) % 2 == 0
        else:
            sel = np.ones(m.sum(), bool)
        albedo[m] = np.where(sel[:, None], c0, c1)
    ambient = rng.uniform(0.25, 0.4)
    shade = ambient + (1 - ambient) * lit * ~shadow
    sky_top, sky_bottom = _colour(rng, (0.2, 0.5), (0.8, 1.0)), _colour(rng, (0.0, 0.2), (0.85, 1.0))
    sky = sky_bottom + (sky_top - sky_bottom) * np.clip(d[:, 1:2] / np.linalg.norm(d, axis=1, keepdims=True), 0, 1)
    rgb = np.where(hit[:, None], albedo * shade[:, None], sky)
    image = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8).reshape(height, width, 3)

    depth = np.where(hit, best_t, 0.0).astype(np.float32).reshape(height, width)
    n_cam = np.where(hit[:, None], best_n @ rot, 0.0)  # world -> camera
    normals = n_cam.astype(np.float32).reshape(height, width, 3)
    seg_of_prim = np.array([s for s, *_ in prims])
    segments = np.where(hit, seg_of_prim[best_k], 0).astype(np.uint16).reshape(height, width)

    info = []
    for sid, cat, *_ in prims:
        ys, xs = np.nonzero(segments == sid)
        if len(xs) == 0:
            continue  # fully occluded or out of view
        info.append({
            "id": int(sid), "category_id": int(cat), "isthing": int(cat >= 3), "area": int(len(xs)),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        })
    params = {
        "camera_height": cam_h, "pitch_deg": float(np.degrees(pitch)), "wall_z": wall_z,
        "wall_top": wall_top, "light": light.tolist(), "ambient": ambient, "objects": objects,
    }
    return Scene(image, depth, normals, segments, info, (float(fx), float(fy), float(cx), float(cy)), params)
