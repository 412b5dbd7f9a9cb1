import numpy as np
import pytest

from lavin_data import degrade
from lavin_data.codecs import decode_image
from lavin_data.geometry import plan_resize
from lavin_data.rng import sample_rng
from lavin_data.sources.synthetic import render_scene
from tests.conftest import fixture_path


def photo():
    p = sorted(fixture_path("photos").glob("*.jpg"))[0]
    img = decode_image(p.read_bytes())
    return plan_resize(img.shape[1], img.shape[0], 256, "crop").image(img)


def hf_energy(img):
    g = img.astype(np.float32).mean(2)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


@pytest.mark.parametrize("fn", [degrade.rain, degrade.motion_blur, degrade.glass_blur, degrade.gaussian_noise,
                                degrade.low_light])
def test_degradations_are_seeded_typed_and_recorded(fn):
    img = photo()
    a, pa = fn(img, sample_rng(0, "t", 1, "k"))
    b, pb = fn(img, sample_rng(0, "t", 1, "k"))
    c, pc = fn(img, sample_rng(0, "t", 1, "other"))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and pa == pb  # same seed, same sample
    assert pa != pc  # another key draws other parameters
    assert not np.array_equal(a, img)
    assert pa["kind"]


def test_degradations_do_what_they_say():
    img = photo()
    rng = lambda: sample_rng(1, "x")  # noqa: E731
    assert hf_energy(degrade.motion_blur(img, rng(), length=(15, 15))[0]) < 0.7 * hf_energy(img)
    assert hf_energy(degrade.glass_blur(img, rng())[0]) < 0.9 * hf_energy(img)
    noisy, p = degrade.gaussian_noise(img, rng(), sigma=(20, 20))
    resid = noisy.astype(float) - img
    assert abs(resid[(img > 40) & (img < 215)].std() - 20) < 1.0  # unclipped pixels
    dark, p = degrade.low_light(img, rng())
    assert dark.mean() < 0.5 * img.mean()
    wet, p = degrade.rain(img, rng())
    assert (wet.astype(int) >= img.astype(int) - 1).all()  # streaks only brighten (screen blend)
    assert (wet.astype(int) - img > 20).mean() > 0.005


@pytest.mark.parametrize("mode", ["boxes", "patches"])
def test_inpainting_mask_coverage_and_holes(mode):
    img = photo()
    mask, p = degrade.inpainting_mask(img.shape[:2], sample_rng(0, mode), mode, (0.2, 0.3))
    assert 0.15 <= mask.mean() <= 0.6
    holed = degrade.apply_holes(img, mask)
    assert (holed[mask] == 0).all() and np.array_equal(holed[~mask], img[~mask])
    assert p["mode"] == mode


def test_synthetic_scene_is_deterministic_and_consistent():
    a, b = render_scene(7), render_scene(7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    assert not np.array_equal(a.image, render_scene(8).image)
    valid = a.depth > 0
    assert valid.mean() > 0.5 and (a.segments[~valid] == 0).all()
    n = a.normals[valid]
    assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    # Visible surfaces face the camera: n . (-ray) > 0 for every pixel.
    fx, fy, cx, cy = a.intrinsics
    h, w = a.depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))  # intrinsics: pixel centres at integers (OpenCV)
    ray = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1)[valid]
    assert ((n * -ray).sum(1) > 0).all()
    # Normals agree with depth: on the floor, the back-projected points are coplanar and
    # their plane's normal equals the stored normal.
    floor = a.segments == 1
    z = a.depth[floor]
    pts = np.stack([(u[floor] - cx) / fx * z, -(v[floor] - cy) / fy * z, -z], 1)
    centred = pts - pts.mean(0)
    normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    normal *= np.sign(normal @ a.normals[floor][0])
    assert np.allclose(a.normals[floor], normal, atol=1e-4)
    assert normal[1] > 0.9  # floor points up in a camera pitched down by 5-20 degrees
    # Segment boxes are the tight boxes of their pixels.
    for s in a.segments_info:
        ys, xs = np.nonzero(a.segments == s["id"])
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and s["area"] == len(xs)
