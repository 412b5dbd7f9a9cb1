"""Procedural 3D scenes ray-cast in numpy: exact depth, normals, instances and classes.

A scene is a floor, a back wall of finite height (sky above it is unlabeled, with no
depth), and spheres, yawed boxes and upright cylinders standing on the floor, textured
and lit by a directional light with cast shadows, seen by a pinhole camera pitched
down. Everything is a pure function of the seed, so the default build needs no
download and renderers can be tested against exact ground truth.

:func:`render_clip` renders the same kind of scene over T frames while the camera
translates and yaws and every object slides over the floor at its own constant velocity,
and adds the exact forward optical flow of every surface point from frame t to t+1 (the
point moved with its object and projected into the next camera; the flow of occluded
points is given too, as FlyingChairs does).

Camera frame (also the frame of the returned normals): x right, y up, z towards the
camera; the camera looks along -z. Depth is the distance along the optical axis.
"""

from __future__ import annotations

import colorsys
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
class _Prim:
    sid: int  # segment id (= object id in clips)
    cat: int  # category id
    shape: str  # floor | wall | sphere | box | cylinder
    geo: dict  # shape parameters at frame 0 (world)
    tex: str
    colours: tuple
    scale: float
    velocity: np.ndarray  # world units per frame (objects slide on the floor)

    def intersect(self, o, d, t: float = 0.0):
        g, shift = self.geo, self.velocity * t
        if self.shape == "floor":
            return _plane_y(g["y"], o, d)
        if self.shape == "wall":
            return _wall(g["z"], g["top"], o, d)
        if self.shape == "sphere":
            return _sphere(g["centre"] + shift, g["radius"], o, d)
        if self.shape == "box":
            return _box(g["centre"] + shift, g["half"], g["yaw"], o, d)
        return _cylinder(g["base"] + shift, g["radius"], g["height"], o, d)


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


def _sample_scene(rng: np.random.Generator, fov_deg: float, max_objects: int) -> dict:
    """Draw a scene's geometry, materials and light (the draw order fixes every scene)."""
    cam_h = rng.uniform(1.0, 1.8)
    pitch = np.radians(rng.uniform(5, 20))
    wall_z, wall_top = -rng.uniform(7, 12), rng.uniform(2.5, 4.5) - cam_h
    floor_y = -cam_h
    zero = np.zeros(3)
    prims = [_Prim(1, 1, "floor", {"y": floor_y}, "checker", (_colour(rng), _colour(rng)), rng.uniform(0.4, 1.0),
                   zero)]
    prims.append(_Prim(2, 2, "wall", {"z": wall_z, "top": wall_top}, "stripes", (_colour(rng), _colour(rng)),
                       rng.uniform(0.3, 0.8), zero))
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
            shape, geo = "sphere", {"centre": c, "radius": size}
            desc = {"shape": "sphere", "centre": c.tolist(), "radius": size}
        elif kind == 4:
            half = np.array([size, rng.uniform(0.2, 0.9), rng.uniform(0.2, size)])
            c = np.array([x, floor_y + half[1], z])
            yaw = rng.uniform(0, np.pi)
            shape, geo = "box", {"centre": c, "half": half, "yaw": yaw}
            desc = {"shape": "box", "centre": c.tolist(), "half_size": half.tolist(), "yaw": yaw}
        else:
            hgt = rng.uniform(0.4, 2.0)
            base = np.array([x, floor_y, z])
            shape, geo = "cylinder", {"base": base, "radius": size, "height": hgt}
            desc = {"shape": "cylinder", "base": base.tolist(), "radius": size, "height": hgt}
        tex = ["plain", "stripes", "checker"][int(rng.integers(0, 3))]
        prims.append(_Prim(sid, kind, shape, geo, tex, (_colour(rng), _colour(rng)), rng.uniform(0.15, 0.5), zero))
        objects.append(desc)
    light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(0.2, 0.8)])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.25, 0.4)
    sky = (_colour(rng, (0.2, 0.5), (0.8, 1.0)), _colour(rng, (0.0, 0.2), (0.85, 1.0)))
    return {"prims": prims, "pitch": pitch, "light": light, "ambient": ambient, "sky": sky, "objects": objects,
            "params": {"camera_height": cam_h, "pitch_deg": float(np.degrees(pitch)), "wall_z": wall_z,
                       "wall_top": wall_top, "light": light.tolist(), "ambient": ambient, "objects": objects}}


def _camera(pitch: float, yaw: float) -> np.ndarray:
    """Camera -> world rotation: pitch down about x, then yaw about the world's y axis."""
    cp, sp = np.cos(-pitch), np.sin(-pitch)
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    cy_, sy_ = np.cos(yaw), np.sin(yaw)
    r_yaw = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    return r_yaw @ r_pitch


def _render(scene: dict, width: int, height: int, intr, rot: np.ndarray, origin: np.ndarray, t: float) -> dict:
    """Ray-cast one frame: camera -> world rotation ``rot`` at ``origin``, objects at time ``t``."""
    fx, fy, cx, cy = intr
    prims = scene["prims"]
    # Primary rays through pixel centres (integer coordinates, OpenCV's convention, like the
    # intrinsics), unnormalised with z = -1 so that t is depth.
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    d_cam = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1).reshape(-1, 3)
    d = d_cam @ rot.T
    o = np.broadcast_to(origin, d.shape)
    n_pix = len(d)
    best_t = np.full(n_pix, _INF)
    best_n = np.zeros((n_pix, 3))
    best_k = np.full(n_pix, -1)
    for k, prim in enumerate(prims):
        tt, n = prim.intersect(o, d, t)
        closer = tt < best_t
        best_t[closer], best_n[closer], best_k[closer] = tt[closer], n[closer], k
    hit = np.isfinite(best_t)
    p = o + np.where(hit, best_t, 0)[:, None] * d

    # Shade: ambient + Lambert with shadows from the objects, procedural textures.
    light = scene["light"]
    lit = np.clip(best_n @ light, 0, None)
    shadow = np.zeros(n_pix, bool)
    idx = np.nonzero(hit & (lit > 0))[0]
    if len(idx):
        so = p[idx] + best_n[idx] * 1e-4
        sd = np.broadcast_to(light, so.shape)
        for prim in prims[2:]:
            tt, _n = prim.intersect(so, sd, t)
            shadow[idx[np.isfinite(tt)]] = True
    albedo = np.zeros((n_pix, 3))
    for k, prim in enumerate(prims):
        m = best_k == k
        if not m.any():
            continue
        q = (p[m] - prim.velocity * t) / prim.scale  # textures move with their object
        if prim.tex == "checker":
            sel = (np.floor(q[:, 0]) + np.floor(q[:, 1]) + np.floor(q[:, 2])) % 2 == 0
        elif prim.tex == "stripes":
            sel = np.floor(q[:, 0] + 0.5 * q[:, 1]) % 2 == 0
        else:
            sel = np.ones(m.sum(), bool)
        c0, c1 = prim.colours
        albedo[m] = np.where(sel[:, None], c0, c1)
    ambient = scene["ambient"]
    shade = ambient + (1 - ambient) * lit * ~shadow
    sky_top, sky_bottom = scene["sky"]
    sky = sky_bottom + (sky_top - sky_bottom) * np.clip(d[:, 1:2] / np.linalg.norm(d, axis=1, keepdims=True), 0, 1)
    rgb = np.where(hit[:, None], albedo * shade[:, None], sky)
    image = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8).reshape(height, width, 3)

    depth = np.where(hit, best_t, 0.0).astype(np.float32).reshape(height, width)
    n_cam = np.where(hit[:, None], best_n @ rot, 0.0)  # world -> camera
    normals = n_cam.astype(np.float32).reshape(height, width, 3)
    seg_of_prim = np.array([pr.sid for pr in prims])
    segments = np.where(hit, seg_of_prim[best_k], 0).astype(np.uint16).reshape(height, width)
    return {"image": image, "depth": depth, "normals": normals, "segments": segments, "points": p, "hit": hit,
            "prim": best_k}


def _segments_info(prims, segments: np.ndarray) -> list[dict]:
    info = []
    for prim in prims:
        ys, xs = np.nonzero(segments == prim.sid)
        if len(xs) == 0:
            continue  # fully occluded or out of view
        info.append({
            "id": int(prim.sid), "category_id": int(prim.cat), "isthing": int(prim.cat >= 3), "area": int(len(xs)),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        })
    return info


def render_scene(
    seed: int | np.random.SeedSequence, width: int = 320, height: int = 240, fov_deg: float = 60.0,
    max_objects: int = 6,
) -> Scene:
    """Ray-cast one random scene. Deterministic in ``seed``; costs ~O(W*H*objects)."""
    rng = np.random.default_rng(seed)
    intr = intrinsics_from_fov(width, height, fov_deg)  # pixel centres at integers
    scene = _sample_scene(rng, fov_deg, max_objects)
    f = _render(scene, width, height, intr, _camera(scene["pitch"], 0.0), np.zeros(3), 0.0)
    return Scene(f["image"], f["depth"], f["normals"], f["segments"], _segments_info(scene["prims"], f["segments"]),
                 tuple(float(x) for x in intr), scene["params"])


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    depth: np.ndarray  # (T, H, W) float32 metres along the optical axis, 0 = sky
    normals: np.ndarray  # (T, H, W, 3) float32 unit, each frame's camera frame; 0 = sky
    segments: np.ndarray  # (T, H, W) uint16 segment ids, stable per object over the clip
    flow: np.ndarray  # (T-1, H, W, 2) float32 forward flow t -> t+1 in pixels (u right, v down); NaN on sky
    intrinsics: tuple[float, float, float, float]
    params: dict


def render_clip(
    seed: int | np.random.SeedSequence, n_frames: int, width: int = 320, height: int = 240, fov_deg: float = 60.0,
    max_objects: int = 6, camera_speed: float = 0.04, object_speed: float = 0.03,
) -> Clip:
    """Ray-cast a scene over ``n_frames``: the camera moves sideways and forwards up to
    ``camera_speed`` m/frame and yaws up to 0.4 deg/frame; each object slides on the floor up
    to ``object_speed`` m/frame. Frame 0 is the still scene of the same seed's draws."""
    rng = np.random.default_rng(seed)
    intr = intrinsics_from_fov(width, height, fov_deg)
    fx, fy, cx, cy = intr
    scene = _sample_scene(rng, fov_deg, max_objects)
    cam_v = np.array([rng.uniform(-1, 1), 0.0, rng.uniform(-1, 0.3)]) * camera_speed
    yaw_rate = np.radians(rng.uniform(-0.4, 0.4))
    for prim in scene["prims"][2:]:
        a = rng.uniform(0, 2 * np.pi)
        prim.velocity = np.array([np.cos(a), 0.0, np.sin(a)]) * rng.uniform(0.3, 1.0) * object_speed
    poses = [(_camera(scene["pitch"], yaw_rate * t), cam_v * t) for t in range(n_frames)]
    frames = [_render(scene, width, height, intr, rot, org, float(t)) for t, (rot, org) in enumerate(poses)]
    flows = []
    for t in range(n_frames - 1):
        f, (rot1, org1) = frames[t], poses[t + 1]
        vel = np.array([pr.velocity for pr in scene["prims"]])[np.maximum(f["prim"], 0)]
        pc = (f["points"] + vel - org1) @ rot1  # the point one frame later, in the next camera's frame
        with np.errstate(divide="ignore", invalid="ignore"):
            u1 = fx * pc[:, 0] / -pc[:, 2] + cx
            v1 = -fy * pc[:, 1] / -pc[:, 2] + cy
        u0, v0 = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        fl = np.stack([u1.reshape(height, width) - u0, v1.reshape(height, width) - v0], -1)
        fl[~f["hit"].reshape(height, width)] = np.nan
        flows.append(fl.astype(np.float32))
    params = dict(scene["params"], camera_velocity=cam_v.tolist(), yaw_deg_per_frame=float(np.degrees(yaw_rate)),
                  object_velocities={int(pr.sid): pr.velocity.tolist() for pr in scene["prims"][2:]},
                  object_categories={int(pr.sid): int(pr.cat) for pr in scene["prims"][2:]})
    return Clip(np.stack([f["image"] for f in frames]), np.stack([f["depth"] for f in frames]),
                np.stack([f["normals"] for f in frames]), np.stack([f["segments"] for f in frames]),
                np.stack(flows) if flows else np.zeros((0, height, width, 2), np.float32),
                tuple(float(x) for x in intr), params)
