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


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
