"""``python -m lavin_model.evaluate``: each metric against numbers computed by hand, the choice
of context pairs, and end-to-end runs (hand-written pair shards, the NYU fixtures through a
real build) with a tiny random J-DiT and ST-VAE; bad input exits 2 naming the path."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from lavin_data.codecs import encode_jpeg, encode_npy, encode_png
from lavin_data.render import PALETTE, render_depth, render_normals, render_pose, render_semantic
from lavin_data.shards import ShardWriter, iter_tar_samples
from lavin_model import metrics as M
from lavin_model.evaluate import (
    PairLoader,
    PairRef,
    Predictor,
    choose_context,
    condition_frames,
    main,
    scan_pairs,
    score_prediction,
    select_queries,
)
from tests.conftest import ROOT, fixture_path

TINY_VAE = '{"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}'


# --------------------------------------------------------------------------- metrics by hand


def test_alignment_recovers_a_known_scale_and_shift_over_valid_pixels_only():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 1, (6, 7))
    target = 2.5 * pred - 0.7
    mask = rng.uniform(size=pred.shape) > 0.3
    target[~mask] = 1e6  # invalid pixels must not pull the fit
    s, t = M.align_scale_shift(pred, target, mask)
    assert s == pytest.approx(2.5, abs=1e-9) and t == pytest.approx(-0.7, abs=1e-9)
    # noisy: the least-squares line of an independent solver
    noisy = target + rng.normal(0, 0.1, pred.shape)
    s, t = M.align_scale_shift(pred, noisy, mask)
    ref_s, ref_t = np.polyfit(pred[mask], noisy[mask], 1)
    assert (s, t) == pytest.approx((ref_s, ref_t), abs=1e-9)


def test_abs_rel_and_delta1_by_hand():
    # |1-1|/1 = 0, |2-2.5|/2.5 = 0.2, |3-2|/2 = 0.5 -> AbsRel 0.7 / 3; ratios 1, 1.25 (not < 1.25), 1.5 -> delta1 1/3
    m = M.abs_rel_delta1(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 2.0]))
    assert m["abs_rel"] == pytest.approx(0.7 / 3)
    assert m["delta1"] == pytest.approx(1 / 3)


def test_depth_metrics_align_disparity_then_measure_depth_on_valid_pixels():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 = invalid
    pred = np.zeros_like(gt)
    pred[gt > 0] = (1 / gt[gt > 0] - 0.1) / 2  # disparity up to scale 2 and shift 0.1
    pred[1, 1] = 99.0  # an invalid pixel: ignored
    m = M.depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx(0, abs=1e-12) and m["delta1"] == 1.0
    assert (m["scale"], m["shift"]) == pytest.approx((2.0, 0.1))
    # not exactly affine: an independent few-line computation of the protocol
    gt = np.array([1.0, 2.0, 4.0, 8.0, 0.0])
    pred = np.array([0.9, 0.6, 0.2, 0.15, 5.0])
    ok = gt > 0
    a, b = np.polyfit(pred[ok], 1 / gt[ok], 1)
    d = 1 / np.maximum(a * pred[ok] + b, 1 / gt[ok].max())
    m = M.depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(d - gt[ok]) / gt[ok]))
    assert m["delta1"] == pytest.approx(np.mean(np.maximum(d / gt[ok], gt[ok] / d) < 1.25))
    assert 0 < m["abs_rel"] < 1


def _rot(deg: float) -> list[float]:
    r = math.radians(deg)
    return [math.sin(r), 0.0, math.cos(r)]


def test_normal_angular_errors_of_known_vectors():
    gt = np.array([[[0, 0, 1.0]] * 6])  # (1, 6, 3)
    gt[0, 5] = 0  # invalid ground truth: left out
    pred = np.array([[_rot(0), [3 * x for x in _rot(10)], _rot(20), _rot(45), [0, 0, 0], _rot(170)]])
    m = M.normal_metrics(pred, gt)  # errors 0, 10, 20, 45, 90 (a zero vector)
    assert m["mean_angle_deg"] == pytest.approx(33.0)
    assert m["median_angle_deg"] == pytest.approx(20.0)
    assert m["pct_11_25"] == pytest.approx(40.0)
    assert m["pct_22_5"] == pytest.approx(60.0)
    assert m["pct_30"] == pytest.approx(60.0)
    assert M.normal_metrics(np.array([[[1.0, 0, 0]]]), np.array([[[0, 0, 1.0]]]))["mean_angle_deg"] == \
        pytest.approx(90.0)


def test_miou_of_a_2x3_label_map_by_hand():
    gt = np.array([[0, 1, 1], [0, 2, 2]])
    pred = np.array([[0, 1, 2], [1, 2, 2]])
    # class 0: 1/2, class 1: 1/3, class 2: 2/3
    assert M.miou(pred, gt) == pytest.approx((1 / 2 + 1 / 3 + 2 / 3) / 3)
    # ignoring gt 0: class 1: 1/2, class 2: 2/3
    assert M.miou(pred, gt, ignore_index=0) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_nearest_palette_labels_choose_among_the_targets_colours_and_black():
    labels = np.array([[0, 5, 9], [9, 5, 0]])
    target = PALETTE[labels]
    off = np.clip(target.astype(int) + np.array([[[8, -6, 5]]]), 0, 255).astype(np.uint8)
    pl, gl = M.nearest_palette_labels(off, target)
    assert (gl == labels).all() and (pl == labels).all()
    wrong = target.copy()
    wrong[0, 0] = PALETTE[6]  # a palette colour absent from the target maps to a present one
    pl, _ = M.nearest_palette_labels(wrong, target)
    assert pl[0, 0] in (0, 5, 9)


def test_psnr_mse_and_ssim_by_hand():
    gt = np.full((16, 16, 3), 100, np.uint8)
    assert M.psnr(gt + 1, gt) == pytest.approx(20 * math.log10(255))  # MSE 1
    assert M.psnr(gt + 10, gt) == pytest.approx(10 * math.log10(255**2 / 100))  # MSE 100
    assert M.psnr(gt, gt) == M.PSNR_CAP_DB
    assert M.mse(gt + 51, gt) == pytest.approx(0.04)  # 51 / 255 = 0.2
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert M.ssim(img, img) == pytest.approx(1.0)
    # constant images: every window has zero variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 255) ** 2
    a, b = 100.0, 120.0
    assert M.ssim(np.full((24, 24, 3), 120, np.uint8), np.full((24, 24, 3), 100, np.uint8)) == \
        pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    # a degraded image against an independent few-line SSIM (Wang et al. 2004: Gaussian sigma 1.5, 11x11 window,
    # the 5-pixel border left out, mean over channels)
    from scipy.ndimage import gaussian_filter

    clean = _photo(rng, 40, 40)
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    c2 = (0.03 * 255) ** 2
    ref = []
    for ch in range(3):
        x, y = clean[..., ch].astype(float), noisy[..., ch].astype(float)
        f = lambda a: gaussian_filter(a, 1.5, truncate=3.5)  # noqa: E731
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        s = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        ref.append(s[5:-5, 5:-5].mean())
    assert M.ssim(noisy, clean) == pytest.approx(np.mean(ref), abs=1e-6)
    assert M.ssim(noisy, clean) < 0.9


def test_foreground_and_box_iou_by_hand():
    target = np.zeros((6, 6, 3), np.uint8)
    target[0:2, 0:3] = PALETTE[4]  # 6 px
    pred = np.full((6, 6, 3), 50, np.uint8)  # dark noise: not foreground
    pred[1, 0:3] = 200
    pred[2, 0] = 200  # 4 px, 3 of them on the target
    assert M.foreground_iou(pred, target) == pytest.approx(3 / 7)

    box = np.zeros((12, 12, 3), np.uint8)
    box[2:6, 2:6] = 255  # xyxy (2, 2, 6, 6)
    pbox = np.zeros_like(box)
    pbox[2:6, 4:8] = 240  # (4, 2, 8, 6): 8 px shared of 24
    pbox[11, 11] = 255  # a stray pixel is not part of the box
    assert M.single_box_iou(pbox, box) == pytest.approx(1 / 3)
    assert M.single_box_iou(np.zeros_like(box), box) == 0.0


def test_pck_by_hand():
    gt = np.array([[10, 10, 1], [20, 20, 1], [30, 30, 1], [40, 40, 1], [0, 0, 0]], float)
    pred = np.array([[10, 10, 1], [23, 24, 1], [36, 30, 1], [40, 40, 0], [5, 5, 1]], float)
    # exact; 5 px (< 5.5); 6 px (not); not found; not in the ground truth -> 2 of 4
    assert M.pck(pred, gt, 5.5) == pytest.approx(0.5)
    assert math.isnan(M.pck(pred, np.zeros((5, 3)), 5.0))


def test_pose_score_decodes_skeletons_of_target_and_prediction():
    from lavin_data.render import COCO_SKELETON

    kps = np.array([[32, 10], [30, 8], [34, 8], [28, 9], [36, 9], [26, 20], [38, 20], [22, 30], [42, 30],
                    [20, 40], [44, 40], [28, 40], [36, 40], [27, 50], [37, 50], [26, 60], [38, 60]], float)
    kps = np.concatenate([kps, np.ones((17, 1))], 1)
    meta = {"params": {"skeleton": [list(e) for e in COCO_SKELETON], "keypoints": [kps.tolist()]}}
    target = render_pose([kps], COCO_SKELETON, (64, 64), 1)
    noisy = np.clip(target.astype(int) + np.random.default_rng(0).integers(-9, 9, target.shape), 0, 255)
    assert score_prediction("pose_estimation", noisy.astype(np.uint8), target, None, meta)["pck"] == 1.0
    far = render_pose([kps + [[12, 0, 0]]], COCO_SKELETON, (64, 64), 1)
    assert score_prediction("pose_estimation", far, target, None, meta)["pck"] == 0.0


# --------------------------------------------------------------------------- context selection


def _ref(task: str, item: int, variant: int, split: str) -> PairRef:
    return PairRef(task, Path(f"/x/{task}/src-000000.tar"), f"src_{item:03d}_v{variant}", f"src_{item:03d}", split, {})


def test_context_never_comes_from_the_querys_source_item_and_is_deterministic():
    # the fall-back case: the pool holds the queries' own variants
    pool = [_ref("t", i, v, "val") for i in range(6) for v in range(3)]
    for seed in range(60):
        for q in pool[::2]:
            ctx = choose_context(pool, q, 8, seed, "t")
            assert len(ctx) == 8 and all(c.base_key != q.base_key for c in ctx)
            assert ctx == choose_context(pool, q, 8, seed, "t")  # deterministic
            assert choose_context(pool, q, 3, seed, "t") == ctx[:3]  # nested for the sweep
    q = pool[0]
    draws = {tuple(c.id for c in choose_context(pool, q, 4, s, "t")) for s in range(20)}
    assert len(draws) > 10  # the seed matters
    assert choose_context(list(reversed(pool)), q, 4, 0, "t") == choose_context(pool, q, 4, 0, "t")


def test_queries_are_the_split_limited_deterministically():
    refs = [_ref("t", i, 0, "val" if i % 3 == 0 else "train") for i in range(60)]
    qs = select_queries(refs, "val", 5, 0)
    assert len(qs) == 5 and all(q.split == "val" for q in qs)
    assert qs == select_queries(list(reversed(refs)), "val", 5, 0)
    assert len(select_queries(refs, "val", 100, 0)) == 20


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random J-DiT saved as training saves it (config.json + model.safetensors), every
    parameter N(0, 0.02) so that its output is not zero."""
    import torch
    from safetensors.torch import save_file

    from lavin_model.jdit import JDiT

    torch.manual_seed(0)
    model = JDiT.from_size("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("ckpt") / "model"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(model.config))
    return out


def _photo(rng, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)), xx * yy], -1)
    return np.clip((base * 0.5 + 0.5) * 255 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def _write_task(root: Path, task: str, items: list[tuple[int, str]], make, size=(64, 64)) -> None:
    rng = np.random.default_rng(zlib.crc32(task.encode()))
    with ShardWriter(root / task / "synthetic-000000.tar", "render") as w:
        for item, split in items:
            img = _photo(rng, *size)
            inp, target, raw, params, frames = make(rng, img)
            key = f"synthetic_{item:06d}"
            meta = {"task": task, "source": "synthetic", "item_id": f"{item:06d}", "base_key": key, "variant": None,
                    "params": params, "frames": frames}
            if split is not None:
                meta["split"] = split
            members = {"input.jpg": encode_jpeg(inp), "target.png": encode_png(target),
                       "json": json.dumps(meta).encode()}
            if raw is not None:
                members["target_raw.npy"] = encode_npy(raw)
            w.add(key, members)
        w.commit({"task": task})


def _depth(rng, img):
    h, w = img.shape[:2]
    depth = (1.0 + 3.0 * np.mgrid[0:h, 0:w][0] / h + rng.uniform(0, 0.3, (h, w))).astype(np.float32)
    depth[:4, :4] = 0  # invalid
    target, meta = render_depth(depth, kind="depth")
    return img, target, depth, dict(meta, depth_kind="depth"), 1


def _normals(rng, img):
    h, w = img.shape[:2]
    n = np.stack([np.linspace(-0.5, 0.5, w)[None].repeat(h, 0), np.full((h, w), 0.3), np.ones((h, w))], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return img, render_normals(n), n.astype(np.float16), {}, 1


def _denoise(rng, img):
    noisy = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    return noisy, img, None, {"degradation": {"sigma": 25}}, 1


def _semantic(rng, img):
    h, w = img.shape[:2]
    classes = np.zeros((h, w), int)
    classes[h // 4:, : w // 2] = 3
    classes[h // 2:, w // 2:] = 7
    return img, render_semantic(classes), None, {}, 1


def _clip(rng, img):
    return img, img, None, {}, 5


SPLITS = [(0, "train"), (1, "train"), (2, None), (3, "val"), (4, "val")]  # no "split" key: train


@pytest.fixture(scope="module")
def hand_pairs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hand") / "pairs"
    _write_task(root, "depth_estimation", SPLITS, _depth)
    _write_task(root, "surface_normal_estimation", SPLITS, _normals)
    _write_task(root, "denoise", SPLITS, _denoise, size=(48, 64))  # a non-square pair: resized back
    _write_task(root, "semantic_segmentation", SPLITS, _semantic)
    _write_task(root, "frame_prediction", SPLITS, _clip)  # a video task of the registry
    _write_task(root, "my_clips", SPLITS, _clip)  # a folder of clips (json frames > 1)
    return root


def _args(ckpt: Path, pairs: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(ckpt), "--vae-config", TINY_VAE, "--pairs", str(pairs), "--out", str(out),
            "--resolution", "64", "--steps", "2", "--device", "cpu", *extra]


def _finite_numbers(d: dict) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in d.values())


def test_end_to_end_on_hand_written_pairs(tiny_checkpoint, hand_pairs, tmp_path, capsys):
    tasks = "depth_estimation,surface_normal_estimation,denoise,frame_prediction,my_clips"
    rc = main(_args(tiny_checkpoint, hand_pairs, tmp_path / "ev", "--context", "2", "--sweep", "2", "--tasks", tasks))
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(report["tasks"]) == {"depth_estimation", "surface_normal_estimation", "denoise"}
    assert "video" in report["skipped"]["frame_prediction"] and "video" in report["skipped"]["my_clips"]
    assert report["checkpoint"] == str(tiny_checkpoint.resolve()) and report["args"]["context"] == 2
    expected = {"depth_estimation": {"abs_rel", "delta1"}, "denoise": {"psnr", "ssim"},
                "surface_normal_estimation": {"mean_angle_deg", "median_angle_deg", "pct_11_25", "pct_22_5",
                                              "pct_30"}}
    for task, r in report["tasks"].items():
        assert set(r["metrics"]) == expected[task] and _finite_numbers(r["metrics"]), (task, r["metrics"])
        assert r["n"] == 2 and r["context_pool"] == "train" and r["n_context_used"] == 2
        assert set(r["sweep"]) == {"2"}  # N = --context: the main run serves it
        assert r["sweep"]["2"][r["main_metric"]] == r["metrics"][r["main_metric"]]
        p = r["probe"]
        assert p["other_task_name"] != task
        assert all(math.isfinite(p[k]) for k in ("right_task", "other_task", "no_context"))
        for q in r["per_query"]:  # queries are the val items 3 and 4, contexts train pairs of other items
            assert q["base_key"] in ("synthetic_000003", "synthetic_000004")
            assert all(c.split(":")[1] in ("synthetic_000000", "synthetic_000001", "synthetic_000002")
                       for c in q["context"])
    assert (tmp_path / "ev" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[evaluate] depth_estimation N=2: 2/2 predictions" in out.out
    assert "[evaluate] skip frame_prediction" in out.out


def test_batched_prediction_matches_infer_predict(tiny_checkpoint, hand_pairs, monkeypatch):
    """Predictor (per-query contexts, cached latents, batched) samples the latent that
    lavin_model.infer.predict samples for the same context, query and seed."""
    import torch

    import lavin_data.stvae
    from lavin_data.stvae import build_stvae
    from lavin_model.infer import predict
    from lavin_model.jdit import jdit_from_checkpoint

    # compare the sampled latents themselves: a random VAE's decoder blurs their differences away
    monkeypatch.setattr(lavin_data.stvae, "decode_to_uint8", lambda vae, z: z.float().cpu().numpy())
    model = jdit_from_checkpoint(tiny_checkpoint).eval()
    with torch.no_grad():  # weights large enough that the context visibly moves the prediction
        for i, prm in enumerate(model.parameters()):
            prm.normal_(0, 0.15, generator=torch.Generator().manual_seed(i))
    vae = build_stvae(json.loads(TINY_VAE))
    refs, _ = scan_pairs(hand_pairs, ["denoise"])
    loader = PairLoader()
    pr = Predictor(model, vae, loader, 64, steps=2, seed=5, batch_size=1, echo=lambda *a, **k: None)
    q, ctx = refs["denoise"][3], refs["denoise"][:2]
    ours = pr.predict([condition_frames(q, ctx), condition_frames(refs["denoise"][4], ctx[::-1])])[0]
    sq = pr.square
    ref = predict(model, vae, [(sq(loader.image(c, "input")), sq(loader.image(c, "target"))) for c in ctx],
                  [sq(loader.image(q, "input"))], steps=2, seed=5, device=torch.device("cpu"))[0]
    other = pr.predict([condition_frames(q, ctx[::-1])])[0]  # the comparison can see a different context
    loader.close()
    assert np.abs(ours - ref).max() < 1e-4  # float noise of batched convolutions (measured 1e-5)
    assert np.abs(other - ref).max() > 1e-3  # the same pairs in the other order (measured 1e-2)


def test_oracle_predictions_score_perfectly(hand_pairs):
    """The target itself as the prediction: the protocols find (almost) no error."""
    refs, _ = scan_pairs(hand_pairs)
    loader = PairLoader()
    scores = {}
    for task in ("depth_estimation", "surface_normal_estimation", "denoise", "semantic_segmentation"):
        r = refs[task][3]
        t = loader.image(r, "target")
        scores[task] = score_prediction(task, t, t, loader.raw(r), r.meta)
    loader.close()
    assert scores["depth_estimation"]["abs_rel"] < 0.01 and scores["depth_estimation"]["delta1"] == 1.0
    assert scores["surface_normal_estimation"]["mean_angle_deg"] < 1.0
    assert scores["denoise"] == {"psnr": M.PSNR_CAP_DB, "ssim": pytest.approx(1.0)}
    assert scores["semantic_segmentation"]["miou"] == 1.0


# --------------------------------------------------------------------------- bad input


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_cli_errors_exit_2_naming_the_path(tiny_checkpoint, hand_pairs, tmp_path, capsys):
    missing = tmp_path / "nope" / "pairs"
    _fails(capsys, _args(tiny_checkpoint, missing, tmp_path / "o"), str(missing), "pairs folder not found")

    train_only = tmp_path / "train_only"
    _write_task(train_only, "denoise", [(0, "train"), (1, None)], _denoise)
    _fails(capsys, _args(tiny_checkpoint, train_only, tmp_path / "o"), str(train_only), "no val pairs")

    uncommitted = tmp_path / "uncommitted"  # a shard without its stats file is not read
    _write_task(uncommitted, "denoise", SPLITS, _denoise)
    (uncommitted / "denoise" / "synthetic-000000.stats.json").unlink()
    assert "no committed shard" in scan_pairs(uncommitted)[1]["denoise"]
    _fails(capsys, _args(tiny_checkpoint, uncommitted, tmp_path / "o"), str(uncommitted), "no val pairs")

    _fails(capsys, _args(tiny_checkpoint, hand_pairs, tmp_path / "o", "--tasks", "edge_detection"),
           str(hand_pairs / "edge_detection"))

    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    _fails(capsys, _args(bad, hand_pairs, tmp_path / "o", "--tasks", "denoise"), str(bad))
    _fails(capsys, _args(tmp_path / "absent.safetensors", hand_pairs, tmp_path / "o", "--tasks", "denoise"),
           str(tmp_path / "absent.safetensors"))

    corrupt = tmp_path / "corrupt"
    with ShardWriter(corrupt / "denoise" / "synthetic-000000.tar", "render") as w:
        w.add("synthetic_000000", {"json": b"{not json", "input.jpg": b"", "target.png": b""})
        w.commit({})
    _fails(capsys, _args(tiny_checkpoint, corrupt, tmp_path / "o"), str(corrupt / "denoise"), "not valid JSON")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- real builds


def test_end_to_end_on_an_nyu_build(ray_session, tiny_checkpoint, tmp_path, capsys):
    from lavin_data.spec import parse_spec
    from pipelines.build import build

    root = fixture_path("nyu_v2")
    spec = parse_spec({
        "name": "nyu-eval", "output": str(tmp_path / "build"), "resolution": 64, "shard_size": 2,
        "sources": [{"name": "nyu", "kind": "nyu", "root": str(root), "holdout": "val",  # every item is val
                     "annotations": str(root / "test_annotations.json")}],
        "labelers": [{"name": "geo", "kind": "normals_from_depth", "source": "nyu"}],
        "tasks": [{"task": "depth_estimation", "source": "nyu"},
                  {"task": "surface_normal_estimation", "source": "nyu", "labeler": "geo"}]}, "test")
    build(spec, echo=lambda *_: None)
    pairs = tmp_path / "build" / "pairs"
    metas = [json.loads(m["json"]) for t in pairs.glob("*/*.tar") for _, m in iter_tar_samples(t)]
    assert len(metas) == 6 and all(m["split"] == "val" for m in metas)

    # the protocol on real NYU depth: the target rendering as the prediction is nearly exact
    refs, _ = scan_pairs(pairs)
    assert scan_pairs(tmp_path / "build")[0] == refs  # the build folder stands for its pairs/

    # export_templates on the real NYU pairs: the files are the shard members, byte for byte
    import tarfile

    from lavin_data.export_templates import export
    from lavin_model.infer import template_pairs

    written = export(tmp_path / "build", tmp_path / "tpl", ["depth_estimation"], "val", 8, echo=lambda *_: None,
                     note=lambda *_: None)
    members = {}
    for t in sorted((pairs / "depth_estimation").glob("*.tar")):
        with tarfile.open(t) as tf:
            members.update({m.name: tf.extractfile(m).read() for m in tf if m.isfile()})
    got = template_pairs(tmp_path / "tpl" / "depth_estimation")
    assert len(got) == len(written["depth_estimation"]) == 3
    for a, b in got:
        key = a.name.removesuffix(a.suffix).removesuffix("_input").split("_", 1)[1]  # <position>_<key>
        assert a.read_bytes() == members[f"{key}.input{a.suffix}"] and b.read_bytes() == members[f"{key}.target.png"]
    loader = PairLoader()
    for r in refs["depth_estimation"]:
        t = loader.image(r, "target")
        m = score_prediction("depth_estimation", t, t, loader.raw(r), r.meta)
        assert m["abs_rel"] < 0.05 and m["delta1"] > 0.95, m
    loader.close()

    # no train pairs: each query's context is the other val items (never its own)
    rc = main(_args(tiny_checkpoint, pairs, tmp_path / "ev", "--context", "2", "--sweep", "1,2", "--limit", "2",
                    "--no-probe"))
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for task in ("depth_estimation", "surface_normal_estimation"):
        r = report["tasks"][task]
        assert r["n"] == 2 and _finite_numbers(r["metrics"]) and set(r["sweep"]) == {"1", "2"}
        assert r["context_pool"].startswith("val") and r["n_context_used"] == 2
        for q in r["per_query"]:
            assert len(q["context"]) == 2 and all(q["base_key"] not in c for c in q["context"])
        assert all(math.isfinite(v[r["main_metric"]]) for v in r["sweep"].values()) and "probe" not in r
    assert (tmp_path / "ev" / "metrics.png").exists()


@pytest.mark.slow
def test_end_to_end_on_a_small_demo_build(ray_session, tiny_checkpoint, tmp_path, capsys):
    import yaml

    from lavin_data.spec import parse_spec
    from pipelines.build import build

    data = yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    data.update(output=str(tmp_path / "demo"), shard_size=4)
    data["sources"] = data["sources"][:1]
    data["sources"][0].update(num_items=8, val_fraction=0.4)
    tasks = ("depth_estimation", "single_object_detection")
    data["tasks"] = [t for t in data["tasks"] if t["task"] in tasks]
    build(parse_spec(data, "demo (8 scenes, val_fraction 0.4)"), echo=lambda *_: None)
    refs, _ = scan_pairs(tmp_path / "demo" / "pairs")
    for task in tasks:
        splits = {r.base_key: r.split for r in refs[task]}
        assert set(splits.values()) == {"train", "val"}, splits
    rc = main(_args(tiny_checkpoint, tmp_path / "demo" / "pairs", tmp_path / "ev", "--context", "2", "--sweep", "none",
                    "--limit", "2", "--no-probe"))
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(report["tasks"]) == set(tasks)
    for r in report["tasks"].values():
        assert _finite_numbers(r["metrics"]) and r["context_pool"] == "train" and r["n"] >= 1
