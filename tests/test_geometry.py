import numpy as np
import pytest

from lavin_data.geometry import plan_resize


@pytest.mark.parametrize("policy", ["crop", "squash", "pad"])
@pytest.mark.parametrize("size", [(320, 240), (240, 320), (640, 480), (100, 100)])
def test_boxes_and_points_follow_the_image(policy, size):
    w, h = size
    rz = plan_resize(w, h, 128, policy)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0 = rng.integers(0, w - 30), rng.integers(0, h - 30)
        x1, y1 = x0 + rng.integers(20, w - x0), y0 + rng.integers(20, h - y0)
        img = np.zeros((h, w), np.uint8)
        img[y0:y1, x0:x1] = 1
        out = rz.image(img, "nearest")
        assert out.shape == (128, 128)
        box, keep = rz.boxes(np.array([[x0, y0, x1, y1]], float))
        ys, xs = np.nonzero(out)
        if not keep[0]:
            assert len(xs) == 0
            continue
        got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        # nearest-neighbour rounding moves each side by < 1 px
        assert np.abs(box[0] - got).max() <= 1.0
        p, inside = rz.points(np.array([[(x0 + x1) / 2, (y0 + y1) / 2]]))
        if inside[0]:
            assert out[int(p[0, 1]), int(p[0, 0])] == 1


def test_policies_shapes():
    rz = plan_resize(320, 240, 256, "crop")
    assert (rz.scaled_w, rz.scaled_h, rz.oy) == (341, 256, 0) and rz.ox < 0
    rz = plan_resize(320, 240, 256, "pad")
    assert (rz.scaled_w, rz.scaled_h, rz.ox) == (256, 192, 0) and rz.oy == 32
    img = np.full((240, 320, 3), 200, np.uint8)
    out = rz.image(img)
    assert (out[:32] == 0).all() and (out[32:224] == 200).all() and (out[224:] == 0).all()
    with pytest.raises(ValueError, match="unknown resize policy"):
        plan_resize(10, 10, 8, "stretch")
    with pytest.raises(ValueError, match="expected a 320x240"):
        rz.image(np.zeros((10, 10), np.uint8))


def test_flow_follows_the_resize_and_padding_is_unknown():
    """Flow vectors scale with the resize (x by sx, y by sy); padded pixels are NaN, not zero
    motion (zero would render white and train as 'static')."""
    from lavin_data.geometry.view import resize_flow

    flow = np.zeros((1, 40, 80, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    rz = plan_resize(80, 40, 64, "pad")  # 80x40 -> 64x32, centred on 64x64
    out = resize_flow(rz, flow)
    assert out.shape == (1, 64, 64, 2)
    inner = out[0, 16:48]
    assert np.allclose(inner[..., 0], 3.0 * 64 / 80) and np.allclose(inner[..., 1], -2.0 * 32 / 40)
    assert np.isnan(out[0, :16]).all() and np.isnan(out[0, 48:]).all()
