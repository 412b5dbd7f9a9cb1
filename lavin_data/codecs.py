"""Image and array codecs (OpenCV for speed; arrays are RGB, files are standard)."""

from __future__ import annotations

import io

import cv2
import numpy as np


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """(H, W, 3) uint8 RGB, or (H, W) uint8/uint16 -> PNG bytes (lossless)."""
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise ValueError(f"PNG encode failed for array {img.shape} {img.dtype}")
    return buf.tobytes()


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (4:4:4 chroma, so thin colour detail survives)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"JPEG encode failed for array {img.shape} {img.dtype}")
    return buf.tobytes()


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8 RGB; 16-bit and single-channel PNGs keep their dtype/shape."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"cannot decode {what} ({len(data)} bytes)")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return arr


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """A decoded image for a person or the model: grey (H, W) or (H, W, 1), RGB or RGBA, uint8
    or 16-bit -> (H, W, 3) uint8 RGB, grey repeated, alpha dropped, 16-bit scaled (0 -> 0,
    65535 -> 255, rounded) so that infer, evaluate and the report show the same levels."""
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        top = np.iinfo(img.dtype).max if np.issubdtype(img.dtype, np.integer) else 255
        img = np.clip(np.rint(img.astype(np.float64) * (255.0 / max(1, top))), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (JSON-able)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict, shape: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """COCO compressed RLE -> (H, W) bool mask; ``shape`` (H, W), when given, must match."""
    from pycocotools import mask as mask_utils

    if shape is not None and tuple(rle["size"]) != tuple(shape):
        raise ValueError(f"{what}: RLE size {list(rle['size'])} does not match the image {shape[0]}x{shape[1]}")
    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]),
                              "counts": counts.encode("ascii") if isinstance(counts, str) else counts}).astype(bool)


FLO_MAGIC = 202021.25  # "PIEH" read as a float32: the first 4 bytes of every Middlebury .flo file


def decode_flo(data: bytes, what: str = "flow") -> np.ndarray:
    """Middlebury ``.flo`` bytes -> (H, W, 2) float32 flow (u, v) in pixels.

    Layout: float32 magic 202021.25, int32 width, int32 height, then H*W*2 float32 (u, v
    interleaved, row-major), little-endian. A wrong magic number, an absurd size or a
    truncated file raises ValueError naming ``what``.
    """
    if len(data) < 12:
        raise ValueError(f"{what}: not a .flo file ({len(data)} bytes, shorter than its 12-byte header)")
    magic = np.frombuffer(data[:4], "<f4")[0]
    if magic != np.float32(FLO_MAGIC):
        raise ValueError(f"{what}: not a .flo file (magic number {magic!r}, expected {FLO_MAGIC})")
    w, h = (int(x) for x in np.frombuffer(data[4:12], "<i4"))
    if not (0 < w < 1 << 16 and 0 < h < 1 << 16):
        raise ValueError(f"{what}: .flo header gives an impossible size {w}x{h}")
    want = 12 + w * h * 8
    if len(data) < want:
        raise ValueError(f"{what}: truncated .flo file ({len(data)} bytes, {w}x{h} flow needs {want})")
    return np.frombuffer(data[12:want], "<f4").reshape(h, w, 2).astype(np.float32)


def encode_flo(flow: np.ndarray) -> bytes:
    """(H, W, 2) float flow -> Middlebury ``.flo`` bytes."""
    h, w = flow.shape[:2]
    return (np.array([FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
            + np.ascontiguousarray(flow, "<f4").tobytes())
