"""Reader for ``kind: dense_folder``: images with dense ground truth (depth and/or surface
normals) in parallel folders, as sensor datasets ship them (Kinect, KITTI depth, ScanNet,
DIODE, rendered sets).

Files are matched by relative sub-folder and file stem: the image ``<images>/<sub>/<image_name>.jpg``
(``{key}`` in the template is the part the files share) has its depth at
``<depth>/<sub>/<depth_name>.png`` or ``.npy`` and its normals at
``<normals>/<sub>/<normals_name>.png`` (see :data:`LAYOUT`).

Depth: a single-channel 16- or 8-bit PNG or a float/int ``.npy`` (H, W) or (H, W, 1),
divided by ``depth_scale`` (file units per metre); 0, negative and non-finite values are
invalid (0). ``depth_range`` (min, max) metres: readings below min become invalid (near-
sensor noise), readings above max are a sensor's far limit: they stay valid, clamped to max.

Normals: an RGB PNG, 8 or 16 bit, (n+1)/2 per channel; ``normals_channels`` says which
file channel holds x (``bgr``: x in B, as OpenCV writes an x,y,z array), ``normals_frame``
the axes (converted to ours: x right, y up, z towards the camera). Black or near mid-grey
pixels are invalid (0).

An image whose depth or normals file is missing, unreadable, or of another size is a
recorded per-item failure naming the file. Every file is refused over the source's
``max_image_pixels`` from its header, before it is decoded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from lavin_data.base import BaseSample
from lavin_data.sources import SourceError, check_pixels, inside, item_id_from

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

LAYOUT = """\
  <images>/<sub>/<image_name>.jpg|.jpeg|.png   e.g. images/scene1/rgb_00042.jpg  (image_name: rgb_{key})
  <depth>/<sub>/<depth_name>.png|.npy          e.g. depth/scene1/sync_depth_00042.png  (depth_name: sync_depth_{key})
  <normals>/<sub>/<normals_name>.png           e.g. normals/scene1/00042.png  (normals_name: {key})
<sub> is the image's folder relative to <images> (may be empty); {key} is the part of the
file stem the three files share (by default the whole stem). Depth: single-channel 16/8-bit
PNG or float .npy, depth_scale units per metre, 0 = invalid. Normals: RGB PNG (n+1)/2."""

# Sign of each axis of a stored normal in our frame (x right, y up, z towards the camera).
NORMALS_FRAMES: dict[str, tuple[float, float, float]] = {
    "x_right_y_up_z_camera": (1.0, 1.0, 1.0),
    "opencv": (1.0, -1.0, -1.0),  # x right, y down, z forward (away from the camera)
}


def normals_to_base_frame(normals: np.ndarray, frame: str) -> np.ndarray:
    """(..., 3) normals in ``frame`` (a key of :data:`NORMALS_FRAMES`) -> float32 in ours."""
    if frame not in NORMALS_FRAMES:
        raise ValueError(f"unknown normals frame {frame!r}; known: {', '.join(NORMALS_FRAMES)}")
    return (normals * np.asarray(NORMALS_FRAMES[frame], np.float32)).astype(np.float32)


def _png_header(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse a file that is not an image, or one over ``max_pixels``, before decoding it."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{name}: not a readable image: {e}") from None
    check_pixels(*im.size, max_pixels, name)


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file missing: {path}") from None


def read_normals_png(path: Path, channels: str, frame: str, max_pixels: int) -> np.ndarray:
    """A normal map PNG (8 or 16 bit, (n+1)/2; alpha ignored) -> (H, W, 3) float32 unit
    normals in our frame, 0 where invalid (black or near mid-grey pixels).

    channels: ``"rgb"`` (x in the file's R channel) or ``"bgr"`` (x in B); frame: a key of
    :data:`NORMALS_FRAMES`."""
    import cv2

    from lavin_data.render.dense import decode_normals

    data = _read_file(path, "normals")
    _png_header(data, f"normals file {path}", max_pixels)
    # OpenCV keeps 16 bits per channel (PIL would cut RGB to 8); its array is in B, G, R order.
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"normals file {path} is unreadable")
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"normals file {path} is {arr.dtype} {arr.shape}; expected an 8- or 16-bit RGB PNG")
    file_rgb = arr[..., 2::-1]
    xyz = file_rgb if channels == "rgb" else file_rgb[..., ::-1]
    normals, _valid = decode_normals(np.ascontiguousarray(xyz))
    return normals_to_base_frame(normals, frame)


def read_depth_png(path: Path, max_pixels: int) -> np.ndarray:
    """A single-channel depth PNG -> its raw (H, W) uint16 or uint8 values (file units)."""
    import cv2

    data = _read_file(path, "depth")
    _png_header(data, f"depth file {path}", max_pixels)
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"depth file {path} is unreadable")
    if raw.ndim != 2 or raw.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"depth file {path} is {raw.dtype} {raw.shape}; expected a single-channel 16- or 8-bit PNG")
    return raw


def _read_depth_npy(path: Path, max_pixels: int) -> np.ndarray:
    """A depth .npy (H, W) or (H, W, 1), float or integer -> (H, W) array (file units)."""
    try:
        # Memory-mapped: the shape is known before the values are read.
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"depth file missing: {path}") from None
    except ValueError as e:
        raise ValueError(f"depth file {path} is not a plain numeric .npy: {e}") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise ValueError(f"depth file {path} is {arr.dtype} {arr.shape}; expected (H, W) or (H, W, 1) numbers")
    check_pixels(arr.shape[1], arr.shape[0], max_pixels, f"depth file {path}")
    return np.array(arr)


def depth_to_metres(raw: np.ndarray, scale: float, depth_range: tuple[float, float] | None) -> np.ndarray:
    """(H, W) file values -> (H, W) float32 ``raw / scale``, 0 = invalid (0, negative or non-finite).

    depth_range (min, max): valid readings below min become 0; readings above max become max
    (saturated at a sensor's far limit: still valid)."""
    depth = raw.astype(np.float32) / np.float32(scale)
    depth[~(depth > 0)] = 0  # also NaN
    depth[np.isinf(depth)] = 0
    if depth_range is not None:
        lo, hi = np.float32(depth_range[0]), np.float32(depth_range[1])
        depth[depth < lo] = 0
        np.minimum(depth, hi, out=depth)
    return depth


def _split(template: str) -> tuple[str, str]:
    prefix, _, suffix = template.partition("{key}")
    return prefix, suffix


def check(src) -> None:
    for field in ("images", "depth", "normals"):
        folder = getattr(src, field)
        if folder and not Path(folder).is_dir():
            raise SourceError(f"{folder}: {field} folder not found")
    same = Path(src.images).resolve()
    for field in ("depth", "normals"):
        folder = getattr(src, field)
        if folder and Path(folder).resolve() == same and getattr(src, f"{field}_name") == src.image_name:
            raise SourceError(f"{folder}: {field} is the images folder and {field}_name equals image_name "
                              f"({src.image_name!r}): each PNG image would be its own {field} file; "
                              f"set image_name and {field}_name (e.g. rgb_{{key}} and {field}_{{key}})")


def frames(src) -> str:
    return "image"


def provides(src) -> frozenset[str]:
    return frozenset(({"depth"} if src.depth else set()) | ({"normals"} if src.normals else set()))


def plan(src) -> list[dict]:
    """Items in path order: {item_id, image (path relative to images), depth, normals (file
    stems relative to their folders, no extension; "" when not configured)}."""
    root = Path(src.images)
    prefix, suffix = _split(src.image_name)

    def named(stem: str, pre: str, suf: str) -> bool:
        return stem.startswith(pre) and stem.endswith(suf) and len(stem) > len(pre) + len(suf)

    # Depth and normals PNGs beside or below the images are never images themselves.
    below, beside = [], []
    for field in ("depth", "normals"):
        folder = getattr(src, field)
        if folder:
            f = Path(folder).resolve()
            if f == root.resolve():
                beside.append(_split(getattr(src, f"{field}_name")))
            elif f.is_relative_to(root.resolve()):
                below.append(f)
    found = []
    for p in root.rglob("*"):
        stem = p.stem
        if (p.suffix.lower() in IMAGE_EXTENSIONS and named(stem, prefix, suffix) and p.is_file()
                and not any(named(stem, pre, suf) for pre, suf in beside if (pre, suf) != (prefix, suffix))
                and not any(p.resolve().is_relative_to(f) for f in below)):
            found.append((p.relative_to(root).as_posix(), stem[len(prefix):len(stem) - len(suffix)]))
    if not found:
        raise SourceError(
            f"source {src.name!r} (dense_folder): no images named {src.image_name}.jpg|.jpeg|.png under {root} "
            f"(searched recursively). Expected layout:\n{LAYOUT}")
    items, seen = [], {}
    for rel, key in sorted(found):
        sub = Path(rel).parent
        item_id = item_id_from("-".join([*sub.parts, key]))
        if item_id in seen:
            raise SourceError(f"{root}: {seen[item_id]} and {rel} map to the same item id {item_id!r}; "
                              f"keep one image per key (e.g. not both .jpg and .png)")
        seen[item_id] = rel
        items.append({
            "item_id": item_id, "image": rel,
            "depth": (sub / src.depth_name.replace("{key}", key)).as_posix() if src.depth else "",
            "normals": (sub / src.normals_name.replace("{key}", key)).as_posix() if src.normals else "",
        })
    return items



def _load_image(path: Path, max_pixels: int) -> tuple[np.ndarray, bytes, bool]:
    from PIL import Image

    from lavin_data.sources.image_folder_reader import load_rgb

    data = _read_file(path, "image")
    try:
        orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"image file {path} is unreadable: {e}") from None
    if orientation != 1:
        # Ground truth is aligned to the stored pixels or to the rotated view; which one the
        # file does not say, so neither is guessed.
        raise ValueError(f"image file {path} has EXIF orientation {orientation}: its depth/normals may be aligned "
                         "to the stored or to the rotated pixels; store it upright without the EXIF tag")
    rgb, plain = load_rgb(data, str(path), max_pixels)
    return rgb, data, plain


def _depth_file(folder: str, stem: str) -> Path:
    """The .png or .npy depth file of ``stem``; FileNotFoundError naming both if neither exists."""
    png, npy = inside(folder, stem + ".png", "depth"), inside(folder, stem + ".npy", "depth")
    if png.is_file() and npy.is_file():
        raise ValueError(f"depth files {png} and {npy} both exist; keep one")
    if npy.is_file():
        return npy
    if not png.is_file():
        raise FileNotFoundError(f"depth file missing: {png} (or {npy.name})")
    return png


def read(src, item: dict, seed: int, source_meta: dict) -> BaseSample:
    image_path = inside(src.images, item["image"], "images")
    rgb, data, plain = _load_image(image_path, src.max_image_pixels)
    h, w = rgb.shape[:2]
    meta = {"source": src.name, "item_id": item["item_id"], "file": item["image"], "width": w, "height": h,
            "licence": src.licence}
    if src.intrinsics is not None:
        meta["intrinsics"] = list(src.intrinsics)
    depth = normals = None
    if src.depth:
        path = _depth_file(src.depth, item["depth"])
        raw = _read_depth_npy(path, src.max_image_pixels) if path.suffix == ".npy" else \
            read_depth_png(path, src.max_image_pixels)
        if raw.shape != (h, w):
            raise ValueError(f"depth file {path} is {raw.shape[1]}x{raw.shape[0]}, its image {image_path} {w}x{h}")
        depth = depth_to_metres(raw, src.depth_scale, src.depth_range)
        meta.update(depth_kind=src.depth_kind, depth_file=item["depth"] + path.suffix,
                    depth_scale=src.depth_scale)
        if src.depth_kind == "depth":
            meta["depth_unit"] = "m"
        if src.depth_range is not None:
            meta["depth_range"] = list(src.depth_range)
    if src.normals:
        path = inside(src.normals, item["normals"] + ".png", "normals")
        normals = read_normals_png(path, src.normals_channels, src.normals_frame, src.max_image_pixels)
        if normals.shape[:2] != (h, w):
            raise ValueError(f"normals file {path} is {normals.shape[1]}x{normals.shape[0]}, "
                             f"its image {image_path} {w}x{h}")
        meta["normals_file"] = item["normals"] + ".png"
    return BaseSample(meta, image=rgb, image_file=("jpg", data) if plain else None, depth=depth, normals=normals)
