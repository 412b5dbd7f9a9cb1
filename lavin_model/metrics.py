"""Per-sample metrics of in-context predictions, by the standard protocols of each task family.

Every function takes numpy arrays and returns plain floats (or a dict of floats); images are
(H, W, 3) uint8 RGB unless said otherwise. The decoders of the renderings are the project's
own (:mod:`lavin_data.render`); this module adds the measuring.

- depth: :func:`align_scale_shift` + :func:`depth_metrics` -- affine-invariant disparity as
  MiDaS / Depth-Anything evaluate NYU: the predicted disparity is aligned to the ground-truth
  disparity (1 / depth) by least-squares scale and shift over the valid pixels, converted to
  depth, and AbsRel and delta1 (max ratio < 1.25) are measured over valid ground-truth pixels;
- normals: :func:`normal_metrics` -- mean / median angular error (degrees) and the percentage
  of pixels under 11.25, 22.5 and 30 degrees, over valid ground-truth pixels;
- segmentation: :func:`nearest_palette_labels` + :func:`miou`;
- masks and boxes: :func:`foreground_iou`, :func:`single_box_iou`;
- pose: :func:`pck`;
- images: :func:`psnr`, :func:`ssim` (scikit-image, the Gaussian-window SSIM of Wang et al.
  2004), :func:`mse`.

LPIPS is not here: it needs the ``lpips`` package and its pretrained AlexNet/VGG backbone
weights (torchvision), which our offline CPU machines do not have; it is left out rather than
approximated.
"""

from __future__ import annotations

import cv2
import numpy as np

from lavin_data.render import PALETTE, angular_error_deg, box_iou, colour_index, decode_filled_box, mask_iou

PSNR_CAP_DB = 100.0  # identical images (MSE 0) score this instead of +inf, so means stay finite
NORMAL_THRESHOLDS_DEG = (11.25, 22.5, 30.0)


# --------------------------------------------------------------------------- depth


def align_scale_shift(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Least-squares (scale, shift) minimising sum over ``mask`` of (scale * pred + shift - target)^2.

    pred, target: (H, W) float (any finite values where ``mask``); mask: (H, W) bool with at
    least two pixels. The closed form of MiDaS' ``compute_scale_and_shift`` (normal equations
    of the 2-parameter fit); a constant ``pred`` gets scale 0 and the mean of ``target``.
    """
    p = np.asarray(pred, np.float64)[mask]
    g = np.asarray(target, np.float64)[mask]
    if p.size < 2:
        raise ValueError(f"scale-and-shift alignment needs at least 2 valid pixels, got {p.size}")
    a00, a01, a11 = float(p @ p), float(p.sum()), float(p.size)
    b0, b1 = float(p @ g), float(g.sum())
    det = a00 * a11 - a01 * a01
    if det <= 1e-12 * max(a00 * a11, 1e-300):  # constant prediction: only the shift is determined
        return 0.0, float(g.mean())
    scale = (a11 * b0 - a01 * b1) / det
    shift = (-a01 * b0 + a00 * b1) / det
    return float(scale), float(shift)


def abs_rel_delta1(pred_depth: np.ndarray, gt_depth: np.ndarray) -> dict[str, float]:
    """AbsRel = mean(|pred - gt| / gt) and delta1 = fraction with max(pred/gt, gt/pred) < 1.25.

    pred_depth, gt_depth: (N,) positive float depths of the evaluated pixels (same unit).
    """
    pred_depth = np.asarray(pred_depth, np.float64)
    gt_depth = np.asarray(gt_depth, np.float64)
    if pred_depth.size == 0:
        raise ValueError("no pixels to evaluate")
    ratio = np.maximum(pred_depth / gt_depth, gt_depth / pred_depth)
    return {"abs_rel": float(np.mean(np.abs(pred_depth - gt_depth) / gt_depth)),
            "delta1": float(np.mean(ratio < 1.25))}


def depth_metrics(pred_disparity: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray | None = None,
                  depth_cap: float | None = None) -> dict[str, float]:
    """AbsRel and delta1 of a relative disparity prediction against ground-truth depth.

    pred_disparity: (H, W) float, any affine scale (e.g. grey levels of a rendering);
    gt_depth: (H, W) float > 0 where valid (metres, or the inverse of a pseudo-label disparity);
    valid: (H, W) bool, default finite and > 0 ground truth with a finite prediction.
    The prediction is aligned to 1 / gt_depth over ``valid`` (:func:`align_scale_shift`),
    clamped to at least 1 / ``depth_cap`` (default the farthest valid ground-truth depth, as
    MiDaS caps NYU at 10 m) so that no depth is negative or infinite, inverted to depth, and
    compared on the valid pixels (:func:`abs_rel_delta1`). Returns also the fitted
    ``scale`` and ``shift``.
    """
    pred = np.asarray(pred_disparity, np.float64)
    gt = np.asarray(gt_depth, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    ok = np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    if valid is not None:
        ok &= valid
    if ok.sum() < 2:
        raise ValueError("fewer than 2 valid ground-truth depth pixels")
    gt_disp = np.zeros_like(gt)
    gt_disp[ok] = 1.0 / gt[ok]
    scale, shift = align_scale_shift(pred, gt_disp, ok)
    cap = float(depth_cap) if depth_cap is not None else float(gt[ok].max())
    aligned = np.maximum(scale * pred[ok] + shift, 1.0 / cap)
    return dict(abs_rel_delta1(1.0 / aligned, gt[ok]), scale=scale, shift=shift)


# --------------------------------------------------------------------------- normals


def normal_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Angular errors between (H, W, 3) normal fields over valid ground-truth pixels.

    pred: any length (a zero vector -- an invalid prediction -- counts as 90 degrees);
    gt: unit vectors, valid by default where their length exceeds 0.5 (the rendering's rule).
    Returns mean_angle_deg, median_angle_deg and pct_11_25 / pct_22_5 / pct_30 (0..100, the
    percentage of pixels strictly under the threshold).
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape or gt.shape[-1] != 3:
        raise ValueError(f"normals must be (H, W, 3) of one shape, got {pred.shape} and {gt.shape}")
    ok = np.isfinite(gt).all(-1) & (np.linalg.norm(np.nan_to_num(gt), axis=-1) > 0.5)
    if valid is not None:
        ok &= valid
    if not ok.any():
        raise ValueError("no valid ground-truth normal")
    err = angular_error_deg(np.nan_to_num(pred[ok]), gt[ok])
    out = {"mean_angle_deg": float(err.mean()), "median_angle_deg": float(np.median(err))}
    for t in NORMAL_THRESHOLDS_DEG:
        out[f"pct_{str(t).replace('.', '_').removesuffix('_0')}"] = float(100.0 * np.mean(err < t))
    return out


# --------------------------------------------------------------------------- segmentation


def nearest_palette_labels(pred_img: np.ndarray, target_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette labels of a predicted and a target rendering.

    The target (H, W, 3) uint8 holds exact palette colours: its labels are
    :func:`~lavin_data.render.colour_index` (-1 where a colour is not in the palette). Each
    predicted pixel gets the nearest (Euclidean RGB) of the candidate colours: those present
    in the target plus black (index 0), so a slightly-off predicted colour maps to the right
    class. Returns (pred_labels, gt_labels), both (H, W) int32 palette indices.
    """
    if pred_img.shape != target_img.shape:
        raise ValueError(f"prediction {pred_img.shape} and target {target_img.shape} differ in shape")
    gt = colour_index(target_img)
    cands = np.union1d(np.unique(gt[gt >= 0]), [0]).astype(np.int32)
    colours = PALETTE[cands].astype(np.float32)  # (K, 3)
    flat = pred_img.reshape(-1, 3).astype(np.float32)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every candidate
    d = -2.0 * flat @ colours.T + (colours * colours).sum(1)[None]
    return cands[d.argmin(1)].reshape(gt.shape).astype(np.int32), gt


def miou(pred: np.ndarray, gt: np.ndarray, ignore_index: int | None = None) -> float:
    """Mean intersection over union of two (H, W) int label maps.

    Pixels where ``gt == ignore_index`` (and gt < 0, colours outside the palette) are left
    out; the mean runs over every class present in the ground truth or the prediction of the
    remaining pixels, each IoU = |pred = c and gt = c| / |pred = c or gt = c|.
    """
    pred = np.asarray(pred).ravel()
    gt = np.asarray(gt).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"label maps differ in size: {pred.size} vs {gt.size}")
    keep = gt >= 0
    if ignore_index is not None:
        keep &= gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    if gt.size == 0:
        raise ValueError("no labelled ground-truth pixel")
    ious = []
    for c in np.union1d(np.unique(gt), np.unique(pred)):
        inter = np.sum((pred == c) & (gt == c))
        union = np.sum((pred == c) | (gt == c))
        ious.append(inter / union)
    return float(np.mean(ious))


# --------------------------------------------------------------------------- masks, boxes


def binarize(img: np.ndarray, threshold: int = 127) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: pixels whose brightest channel exceeds ``threshold``.
    Every palette colour has a channel >= 153 and white is 255, so a rendering survives it; a
    prediction's dark noise does not."""
    return img.max(axis=2) > threshold


def foreground_iou(pred_img: np.ndarray, target_img: np.ndarray, threshold: int = 127) -> float:
    """IoU of the thresholded predicted mask (:func:`binarize`) and the target's mask
    (:func:`~lavin_data.render.decode_foreground`: every non-black pixel); 1 when both are empty."""
    return mask_iou(binarize(pred_img, threshold), target_img.max(axis=2) > 0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the largest 8-connected component of it (all False when empty)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, bool)
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def single_box_iou(pred_img: np.ndarray, target_img: np.ndarray, threshold: int = 127) -> float:
    """Box IoU of a predicted filled-box rendering against the target's.

    The prediction is thresholded (:func:`binarize`), reduced to its largest connected
    component (a few stray bright pixels must not stretch the box) and decoded with
    :func:`~lavin_data.render.decode_filled_box`; 0 when nothing decodes.
    """
    gt_box = decode_filled_box(target_img)
    if gt_box is None:
        raise ValueError("the target has no box")
    lit = largest_component(binarize(pred_img, threshold))
    pred_box = decode_filled_box(np.repeat(lit[..., None].astype(np.uint8) * 255, 3, axis=2))
    if pred_box is None:
        return 0.0
    return float(box_iou(pred_box, gt_box)[0, 0])


# --------------------------------------------------------------------------- pose


def pck(pred: np.ndarray, gt: np.ndarray, threshold_px: float) -> float:
    """Percentage of correct keypoints as a fraction in [0, 1].

    pred, gt: (K, 3) float (x, y, found 0/1). Over the keypoints found in the ground truth, a
    keypoint is correct when the prediction found it within ``threshold_px`` (strictly
    closer). NaN when the ground truth has no keypoint.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    has = gt[:, 2] > 0
    if not has.any():
        return float("nan")
    dist = np.linalg.norm(pred[has, :2] - gt[has, :2], axis=1)
    return float(np.mean((pred[has, 2] > 0) & (dist < threshold_px)))


# --------------------------------------------------------------------------- images


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error of two uint8 images scaled to [0, 1] (over every pixel and channel)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    d = pred.astype(np.float64) / 255.0 - target.astype(np.float64) / 255.0
    return float(np.mean(d * d))


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of two uint8 images, data range 255: 10 log10(255^2 / MSE) with the MSE in
    grey levels (over every pixel and channel); identical images score PSNR_CAP_DB."""
    m = mse(pred, target) * 255.0**2
    if m == 0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / m)))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two (H, W, 3) uint8 images (mean over channels): scikit-image's
    ``structural_similarity`` with the settings of Wang et al. 2004 (11x11 Gaussian window,
    sigma 1.5, population covariances, K1 0.01, K2 0.03, data range 255). Images need sides of
    at least 11 pixels."""
    from skimage.metrics import structural_similarity

    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    return float(structural_similarity(target, pred, data_range=255, channel_axis=-1, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False))
