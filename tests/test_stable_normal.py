"""StableNormal-turbo from a local clone (never its hubconf.py, never torchvision) and
fixed-size batching of mixed image sizes for the depth and normal labelers.

The weights are tiny random diffusers components laid out as Stable-X/yoso-normal-v0-3 is, and
the clone's pipeline module is our stand-in (``lavin_data.testing.YOSO_STANDIN``) that runs
them; references are computed here by loading that module and those weights independently.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lavin_data.codecs import decode_image
from lavin_data.labelers import LabelerError, LabelInput, fit_square, labeler_class, square_box, unfit
from lavin_data.shards import iter_tar_samples, read_stats
from lavin_data.spec import parse_spec
from pipelines.build import BuildError, build
from pipelines.layout import base_tar, label_tar, pair_tar
from tests.conftest import fixture_path

pytest.importorskip("diffusers")
quiet = dict(echo=lambda *_: None)


@pytest.fixture(autouse=True)
def no_torchvision(monkeypatch):
    """Any import of torchvision fails, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "torchvision", None)


@pytest.fixture(scope="module")
def sn(tmp_path_factory) -> tuple[Path, Path]:
    from lavin_data.testing import tiny_stable_normal

    root = tmp_path_factory.mktemp("sn")
    return tiny_stable_normal(root / "yoso-normal-v0-3", root / "StableNormal")


@pytest.fixture(scope="module")
def da2(tmp_path_factory) -> Path:
    from lavin_data.testing import tiny_depth_anything

    return tiny_depth_anything(tmp_path_factory.mktemp("da2") / "da2-tiny", "tiny")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """The four fixture photos: 2048x1362, 2047x1362, 2252x1498 and 640x425 (four sizes)."""
    return [decode_image(p.read_bytes()) for p in sorted(fixture_path("photos").glob("*.jpg"))]


def _labeler_spec(tmp_path, **lab) -> object:
    return parse_spec({
        "name": "s", "output": str(tmp_path / "out"),
        "sources": [{"name": "photos", "kind": "image_folder", "root": str(fixture_path("photos"))}],
        "labelers": [dict({"name": "lab", "source": "photos"}, **lab)],
        "tasks": [{"task": "surface_normal_estimation" if lab["kind"] == "stable_normal" else "depth_estimation",
                   "source": "photos", "labeler": "lab"}],
    })


def _sn(tmp_path, sn, **kw):
    weights, clone = sn
    spec = _labeler_spec(tmp_path, kind="stable_normal", model=str(weights), clone=str(clone), **kw)
    return labeler_class("stable_normal")(spec.labelers[0])


def _reference_pipeline(weights: Path, clone: Path):
    """The clone's pipeline class and the weights, loaded here without our labeler's code."""
    spec = importlib.util.spec_from_file_location("reference_yoso", clone / "stablenormal" / "pipeline_yoso_normal.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_yoso"] = module
    from lavin_data.labelers.stable_normal import diffusers_compat

    diffusers_compat()  # the weights' ControlNet imports diffusers.models.controlnet, as the released one does
    spec.loader.exec_module(module)
    import torch

    pipe = module.YOSONormalsPipeline.from_pretrained(str(weights), variant="fp16", torch_dtype=torch.float32,
                                                      trust_remote_code=True, t_start=0,
                                                      safety_checker=None, feature_extractor=None,
                                                      requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- StableNormal


@pytest.mark.slow
def test_stable_normal_equals_the_clones_pipeline_run_image_by_image(sn, photos, tmp_path):
    """Batched labelling of same-sized images gives, per image, what the clone's own pipeline
    gives for it alone, with x negated (StableNormal's x points left, ours right) and no other
    axis changed, at the image's size; unit vectors; a second labeler instance gives the same
    bytes. (Importing torchvision would fail: the autouse fixture.)"""
    import torch

    weights, clone = sn
    same = [photos[0], cv2.flip(photos[0], 1), photos[0][::-1].copy()]  # one size, three contents
    lab = _sn(tmp_path, sn, batch_size=3)
    out = lab.label([LabelInput(im) for im in same + [photos[3]]])
    assert lab.forwards == {"forwards": 2, "images": 4}  # same-sized images share a forward, the 4th is alone
    pipe = _reference_pipeline(weights, clone)
    for im, n in zip(same + [photos[3]], out):
        x = torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255
        ref = pipe(x, output_type="np").prediction[0] * [-1, 1, 1]  # (H, W, 3): x left -> x right
        assert n.shape == im.shape and n.dtype == np.float32
        assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-4)
        assert np.abs(n - ref).max() < 2e-3, np.abs(n - ref).max()
    again = _sn(tmp_path, sn, batch_size=3).label([LabelInput(im) for im in same + [photos[3]]])
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    # At a processing size (not the pipeline's default, 32): the pipeline run here on a square
    # padded here, at that resolution, cut at the content rows and resized to the photo.
    im = photos[3]  # 425 x 640 -> 64 x round(42.5) = 42 rows (half to even), from row 11
    fixed = _sn(tmp_path, sn, processing_size=64).label([LabelInput(im)])[0]
    square = cv2.copyMakeBorder(cv2.resize(im, (64, 42), interpolation=cv2.INTER_AREA), 11, 11, 0, 0,
                                cv2.BORDER_REPLICATE)
    x = torch.from_numpy(square).permute(2, 0, 1)[None].float() / 255
    ref = pipe(x, processing_resolution=64, output_type="np").prediction[0][11:53] * [-1, 1, 1]
    ref = cv2.resize(ref.astype(np.float32), (640, 425), interpolation=cv2.INTER_LINEAR)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    assert np.abs(fixed - ref).max() < 5e-3, np.abs(fixed - ref).max()


def test_stable_normal_records_where_its_code_and_weights_came_from(sn, tmp_path):
    weights, clone = sn
    info = _sn(tmp_path, sn, processing_size=64).info()
    assert info["clone"] == str(clone) and info["model"] == str(weights) and len(info["weight_hash"]) == 16
    import hashlib

    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()[:16]  # noqa: E731
    assert info["pipeline_sha256"] == sha(clone / "stablenormal" / "pipeline_yoso_normal.py")
    assert info["remote_code"] == {"controlnet/yoso_controlnet.py": sha(weights / "controlnet" / "yoso_controlnet.py")}
    assert info["trust_remote_code"] == ["controlnet/yoso_controlnet.py"] and info["weights_variant"] == "fp16"
    assert info["processing"] == {"size": 64, "fit": "pad", "batching": "fixed"}
    assert "x left, negated" in info["frame"] and info["seed"] == 0 and info["weights"] == str(weights)
    assert info["compat"] == ["diffusers.models.controlnet = diffusers.models.controlnets.controlnet"]


def test_stable_normal_missing_pieces_are_named_before_loading(sn, tmp_path):
    weights, clone = sn
    cls = labeler_class("stable_normal")

    def problem(**kw) -> str:
        spec = _labeler_spec(tmp_path, kind="stable_normal", **kw)
        with pytest.raises(LabelerError) as e:
            cls.preflight(spec.labelers[0])
        return str(e.value)

    assert "stablenormal/pipeline_yoso_normal.py missing" in problem(model=str(weights), clone=str(tmp_path / "none"))
    assert str(tmp_path / "none") in problem(model=str(weights), clone=str(tmp_path / "none"))
    msg = problem(model=str(tmp_path / "w"), clone=str(clone))
    assert "model_index.json missing" in msg and str(tmp_path / "w") in msg
    assert "set `model`" in problem(clone=str(clone))
    # A clone holding the weights in weights/yoso-normal-v0-3 (the clone's own cache) needs no `clone:`.
    both = tmp_path / "clone-with-weights"
    shutil.copytree(clone, both)
    shutil.copytree(weights, both / "weights" / "yoso-normal-v0-3")
    cls.preflight(_labeler_spec(tmp_path, kind="stable_normal", model=str(both)).labelers[0])
    assert "no weights at" in problem(model=str(clone))  # a clone without them
    broken = tmp_path / "broken"
    for gone, needle in (("unet/config.json", "component 'unet'"), ("text_encoder/*.safetensors", "no weight file"),
                         ("controlnet/yoso_controlnet.py", "yoso_controlnet"),
                         ("tokenizer/tokenizer_config.json", "tokenizer_config.json is missing")):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(weights, broken)
        for f in broken.glob(gone):
            f.unlink()
        msg = problem(model=str(broken), clone=str(clone))
        assert needle in msg and str(broken) in msg, msg
    # A component module that would come from outside the folder is refused.
    shutil.rmtree(broken)
    shutil.copytree(weights, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["controlnet"] = ["os.path", "ControlNetModel"]
    (broken / "model_index.json").write_text(json.dumps(index))
    assert "neither diffusers, transformers nor a file of the folder" in problem(model=str(broken), clone=str(clone))
    assert "multiple of 8" in problem(model=str(weights), clone=str(clone), processing_size=100)
    # A Hugging Face cache snapshot links every file into its blobs/: accepted.
    linked = tmp_path / "snapshot"
    for f in weights.rglob("*"):
        if f.is_file():
            (linked / f.relative_to(weights)).parent.mkdir(parents=True, exist_ok=True)
            (linked / f.relative_to(weights)).symlink_to(f.resolve())
    cls.preflight(_labeler_spec(tmp_path, kind="stable_normal", model=str(linked), clone=str(clone)).labelers[0])
    # A clone whose pipeline file does not import on this diffusers: said at start-up, with the version.
    bad = tmp_path / "bad-clone"
    (bad / "stablenormal").mkdir(parents=True)
    (bad / "stablenormal" / "pipeline_yoso_normal.py").write_text("from diffusers.nowhere import Thing\n")
    msg = problem(model=str(weights), clone=str(bad))
    assert "failed to import" in msg and "diffusers.nowhere" in msg and str(bad) in msg, msg


def test_a_build_without_the_clone_stops_before_any_work(sn, tmp_path):
    weights, _clone = sn
    spec = _labeler_spec(tmp_path, kind="stable_normal", model=str(weights), clone=str(tmp_path / "nowhere"))
    with pytest.raises(BuildError, match=r"labelers\[0\] \(lab\).*no StableNormal code at .*nowhere"):
        build(spec, **quiet)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- fixed-size batching


def test_square_fit_puts_the_image_in_the_middle_and_maps_back():
    """Pinned to positions computed by hand: a 20x40 (h x w) image padded into 16x16 becomes
    8x16 at rows 4-11; a prediction that is the canvas's row index maps back to rows 4-11."""
    im = np.zeros((20, 40, 3), np.uint8)
    im[:, :20] = 200  # left half bright
    canvas, box = fit_square(im, 16, "pad")
    assert box == (4, 0, 8, 16) == square_box(20, 40, 16, "pad")
    assert canvas.shape == (16, 16, 3)
    assert (canvas[:, :7] >= 190).all() and (canvas[:, 9:] <= 10).all()  # left/right kept, not mirrored
    assert (canvas[:4] == canvas[4]).all() and (canvas[12:] == canvas[11]).all()  # border replicated
    tall = square_box(40, 20, 16, "pad")
    assert tall == (0, 4, 16, 8)
    assert square_box(20, 40, 16, "resize") == (0, 0, 16, 16)
    rows = np.repeat(np.arange(16, dtype=np.float32)[:, None], 16, axis=1)
    back = unfit(rows, box, (20, 40))
    assert back.shape == (20, 40)
    assert 4 <= back.min() < 4.3 and 10.7 < back.max() <= 11  # rows 4..11 of the canvas, stretched
    assert np.all(np.diff(back[:, 0]) >= 0)  # top stays top


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["depth_anything_v2", "stable_normal"])
def test_fixed_size_batches_mixed_sizes_like_one_at_a_time(kind, sn, da2, photos, tmp_path):
    """The four fixture photos (four sizes) in one forward at processing_size give what each
    gives alone at that size; without a processing_size they need one forward per size."""
    size = 56 if kind == "depth_anything_v2" else 64
    model = dict(model=str(da2)) if kind == "depth_anything_v2" else dict(model=str(sn[0]), clone=str(sn[1]))
    lab = labeler_class(kind)(_labeler_spec(tmp_path, kind=kind, batch_size=4, processing_size=size,
                                            **model).labelers[0])
    batched = lab.label([LabelInput(im) for im in photos])
    assert lab.forwards == {"forwards": 1, "images": 4}  # fill 4 / (1 * 4) = 1.0
    for im, b in zip(photos, batched):
        alone = lab.label([LabelInput(im)])[0]
        assert b.shape == alone.shape and b.shape[:2] == im.shape[:2]
        scale = np.abs(alone).max()
        assert np.abs(b - alone).max() <= 1e-3 * scale, (np.abs(b - alone).max(), scale)
    per_size = labeler_class(kind)(_labeler_spec(tmp_path, kind=kind, batch_size=4, **model).labelers[0])
    per_size.label([LabelInput(im) for im in photos])
    assert per_size.forwards == {"forwards": 4, "images": 4}  # four sizes (demo02 is a pixel narrower): fill 0.25


def test_fixed_size_depth_is_the_model_on_the_padded_square_mapped_back(da2, photos, tmp_path):
    """Independent of our fitting code: the square built here with cv2, the model run through
    transformers directly, its output cut at the content rows and resized to the photo."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    im = photos[3]  # 425 x 640: content 56 wide, round(425 * 56 / 640) = 37 high, from row 9
    lab = labeler_class("depth_anything_v2")(_labeler_spec(tmp_path, kind="depth_anything_v2", model=str(da2),
                                                           processing_size=56).labelers[0])
    ours = lab.label([LabelInput(im)])[0]
    small = cv2.resize(im, (56, 37), interpolation=cv2.INTER_AREA)
    square = cv2.copyMakeBorder(small, 9, 10, 0, 0, cv2.BORDER_REPLICATE)
    model = AutoModelForDepthEstimation.from_pretrained(str(da2)).eval()
    pv = AutoImageProcessor.from_pretrained(str(da2))(images=[square], do_resize=False, return_tensors="pt")
    with torch.no_grad():
        pred = model(pixel_values=pv["pixel_values"]).predicted_depth[0].numpy()
    assert pred.shape == (56, 56)
    ref = np.maximum(cv2.resize(pred[9:46], (640, 425), interpolation=cv2.INTER_LINEAR), 0)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    assert lab.info()["processing"] == {"size": 56, "fit": "pad", "batching": "fixed"}


def test_depth_processing_size_must_fit_the_patches(da2, tmp_path):
    spec = _labeler_spec(tmp_path, kind="depth_anything_v2", model=str(da2), processing_size=500)
    with pytest.raises(LabelerError, match="multiple of 14.*e.g. 504"):
        labeler_class("depth_anything_v2").preflight(spec.labelers[0])


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_build_labels_fixture_photos_with_stable_normal_and_depth(ray_session, sn, da2, photos, tmp_path):
    """A build over the fixture photos with stable_normal + Depth-Anything (both at a fixed
    processing size) writes normal and depth sidecars and pairs; the sidecar normals are the
    labeler's own output for the decoded base image (16-bit quantisation apart); the shard
    stats record full batches."""
    weights, clone = sn
    spec = parse_spec({
        "name": "sn", "output": str(tmp_path / "out"), "resolution": 64, "shard_size": 4,
        "sources": [{"name": "photos", "kind": "image_folder", "root": str(fixture_path("photos"))}],
        "labelers": [{"name": "sn", "kind": "stable_normal", "source": "photos", "model": str(weights),
                      "clone": str(clone), "batch_size": 4, "processing_size": 64},
                     {"name": "da2", "kind": "depth_anything_v2", "source": "photos", "model": str(da2),
                      "batch_size": 4, "processing_size": 56}],
        "tasks": [{"task": "surface_normal_estimation", "source": "photos", "labeler": "sn"},
                  {"task": "normal_to_image", "source": "photos", "labeler": "sn"},
                  {"task": "depth_estimation", "source": "photos", "labeler": "da2"}],
    })
    manifest = build(spec, **quiet)
    assert manifest["labels"] == {"sn": {"photos": 4}, "da2": {"photos": 4}}
    assert all(v["photos"] == 4 for v in manifest["counts"].values()), manifest["counts"]
    for name in ("sn", "da2"):
        stats = read_stats(label_tar(spec.output, name, "photos", 0))
        assert stats["batch_fill"] == 1.0 and stats["forwards"] == 1, stats
    base = dict(iter_tar_samples(base_tar(spec.output, "photos", 0)))
    lab = labeler_class("stable_normal")(spec.labelers[0])
    for key, m in iter_tar_samples(label_tar(spec.output, "sn", "photos", 0)):
        meta = json.loads(m["json"])
        assert meta["kind"] == "stable_normal" and meta["processing"]["size"] == 64 and meta["clone"] == str(clone)
        q = cv2.imdecode(np.frombuffer(m["normals.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        n = cv2.cvtColor(q, cv2.COLOR_BGR2RGB).astype(np.float32) / 65535 * 2 - 1
        image = decode_image(base[key]["image.jpg"])
        assert n.shape == image.shape
        direct = lab.label([LabelInput(image)])[0]
        assert np.abs(n - direct).max() < 2e-3
    for task in ("surface_normal_estimation", "depth_estimation"):
        pairs = dict(iter_tar_samples(pair_tar(spec.output, task, "photos", 0)))
        assert len(pairs) == 4 and all(decode_image(m["target.png"]).shape == (64, 64, 3) for m in pairs.values())


def test_fields_a_labeler_kind_ignores_are_refused(tmp_path):
    from lavin_data.spec import SpecError

    with pytest.raises(SpecError, match="processing_size is for depth_anything_v2 and stable_normal, not marigold"):
        _labeler_spec(tmp_path, kind="marigold_normals", model="m", processing_size=512)
    with pytest.raises(SpecError, match="clone is for stable_normal, not depth_anything_v2"):
        _labeler_spec(tmp_path, kind="depth_anything_v2", model="m", clone="c")
    with pytest.raises(SpecError, match="fit takes effect only with a processing_size"):
        _labeler_spec(tmp_path, kind="depth_anything_v2", model="m", fit="resize")
    with pytest.raises(SpecError, match="would tilt the predicted normals"):
        _labeler_spec(tmp_path, kind="stable_normal", model="m", processing_size=64, fit="resize")
