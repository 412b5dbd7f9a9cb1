"""``python -m benchmarks.coco_fidelity [--output OUT] [--fixtures DIR]``

How faithfully the COCO fixture build's renderings decode back to the annotations: mask and
box IoU, panoptic pixel counts and keypoint errors.

Builds ``manifests/coco_fixtures.yaml`` (unless OUT already holds that build) and prints
how faithfully its renderings decode back to what pycocotools itself decodes from the
same annotations after the same resize: instance-mask IoU, box IoU, panoptic pixel counts,
and the error of keypoints decoded from pose renderings.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from lavin_data.cli import HelpFormatter
from lavin_data.codecs import decode_image
from lavin_data.geometry import plan_resize
from lavin_data.render import THING_OFFSET, box_iou, decode_boxes, decode_instances, decode_panoptic, mask_iou
from lavin_data.shards import iter_tar_samples


def _xyxy(a: dict) -> list[float]:
    x, y, w, h = a["bbox"]
    return [x, y, x + w, y + h]


def min_object_area(spec, source: str) -> float:
    """The ``min_object_area`` gate of the instance and detection tasks of ``source`` (one value)."""
    gates = {t.options["min_object_area"] for t in spec.tasks
             if t.source == source and t.task in ("instance_segmentation", "object_detection")}
    if len(gates) != 1:
        raise ValueError(f"{source}: instance_segmentation and object_detection need one min_object_area, got {gates}")
    return gates.pop()


def instances_and_boxes(out: Path, source: str, ann_file: Path, isthing: dict[int, int], res: int, policy: str,
                        min_object_area: float = 0.0):
    """(mask IoUs, box IoUs) of every non-crowd thing annotation that survives the crop and
    the tasks' ``min_object_area`` gate (fraction of the output image: mask area for masks,
    box area for boxes)."""
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))
    det = dict(iter_tar_samples(out / "pairs" / "object_detection" / f"{source}-000000.tar"))
    mask_ious, box_ious = [], []
    for key, m in iter_tar_samples(out / "pairs" / "instance_segmentation" / f"{source}-000000.tar"):
        meta = json.loads(m["json"])
        decoded = decode_instances(decode_image(m["target.png"]))
        im = coco.loadImgs([int(meta["item_id"])])[0]
        rz = plan_resize(im["width"], im["height"], res, policy)
        colour = {i["id"]: i["colour_index"] - 1 for i in meta["params"]["instances"]}
        objs = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
                if not a["iscrowd"] and isthing.get(a["category_id"], 1)]
        for a in objs:
            gt = rz.image(coco.annToMask(a), "nearest").astype(bool)
            if gt.any() and gt.sum() >= min_object_area * res * res:
                mask_ious.append(mask_iou(decoded.get(colour.get(a["id"], -1), np.zeros_like(gt)), gt))
        if not objs:
            continue
        b, keep = rz.boxes(np.array([_xyxy(a) for a in objs]))
        b = b[keep]
        b = b[(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= min_object_area * res * res]  # the gate
        b = b[(b[:, 2] - b[:, 0] >= 4) & (b[:, 3] - b[:, 1] >= 4)]  # smaller ones are not drawn (min_side)
        dec, _ = decode_boxes(decode_image(det[key]["target.png"]))
        box_ious += box_iou(b, dec).max(1).tolist() if len(dec) else [0.0] * len(b)
    return mask_ious, box_ious


def panoptic_count_errors(out: Path, source: str, pan_json: Path, masks: Path, res: int, policy: str) -> list[float]:
    """Relative pixel-count error of every panoptic label (stuff class, crowd class, thing)."""
    pan = json.loads(pan_json.read_text())
    cats = {c["id"]: c for c in pan["categories"]}
    got = dict(iter_tar_samples(out / "pairs" / "panoptic_segmentation" / f"{source}-000000.tar"))
    rel = []
    for ann in pan["annotations"]:
        rgb = decode_image((masks / ann["file_name"]).read_bytes()).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        ids = plan_resize(ids.shape[1], ids.shape[0], res, policy).image(ids, "nearest")
        lab = decode_panoptic(decode_image(got[f"{source}_{ann['image_id']:012d}"]["target.png"]))
        want: dict[int, int] = {}
        k = 0
        for s in ann["segments_info"]:
            if not (ids == s["id"]).any():
                continue
            thing = cats[s["category_id"]]["isthing"] and not s["iscrowd"]
            code = THING_OFFSET + k if thing else s["category_id"]
            k += bool(thing)
            want[code] = want.get(code, 0) + int((ids == s["id"]).sum())
        rel += [abs(int((lab == c).sum()) - n) / n for c, n in want.items()]
    return rel


def keypoint_errors(ann_file: Path, res: int, policy: str, min_labelled: int = 12) -> tuple[int, list[float]]:
    """Render each well-labelled person alone, decode its keypoints, and return
    (people, pixel errors of the decoded keypoints)."""
    from pycocotools.coco import COCO

    from lavin_data.render import COCO_SKELETON, decode_keypoints, render_pose

    coco = COCO(str(ann_file))
    people, errs = 0, []
    for im in coco.loadImgs(coco.getImgIds()):
        rz = plan_resize(im["width"], im["height"], res, policy)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]])):
            k = np.array(a["keypoints"], float).reshape(-1, 3)
            k[:, :2], inside = rz.points(k[:, :2])
            k[~inside, 2] = 0
            if (k[:, 2] > 0).sum() < min_labelled:
                continue
            people += 1
            dec = decode_keypoints(render_pose([k], COCO_SKELETON, (res, res)), COCO_SKELETON, len(k))
            errs += [float(np.linalg.norm(dec[p, :2] - k[p, :2])) for p in range(len(k)) if dec[p, 2] and k[p, 2]]
    return people, errs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.coco_fidelity", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--output", default="out/coco-fixtures",
                    help="where manifests/coco_fixtures.yaml is built (reused when already built)")
    ap.add_argument("--fixtures", default=os.environ.get("LAVIN_FIXTURES", "tests/fixtures"),
                    help="the fixtures folder (LAVIN_FIXTURES when set; scripts/fetch_fixtures.sh fills it)")
    args = ap.parse_args(argv)
    from lavin_data.spec import load_spec
    from pipelines.build import build

    os.environ["LAVIN_FIXTURES"] = args.fixtures
    spec = load_spec("manifests/coco_fixtures.yaml", output=args.output)
    build(spec, echo=lambda *_: None)  # no work if already built
    out, fx = Path(args.output), Path(args.fixtures)
    pan_dir = fx / "coco_panoptic" / "sample_data"
    isthing = {c["id"]: c["isthing"] for c in json.loads((fx / "coco_panoptic" / "panoptic_coco_categories.json")
                                                         .read_text())}
    for source, ann in [("coco-kp", fx / "coco_keypoints" / "test_coco.json"),
                        ("coco-pan", pan_dir / "panoptic_coco_detection_format.json")]:
        m, b = instances_and_boxes(out, source, ann, isthing, spec.resolution, spec.resize,
                                   min_object_area(spec, source))
        print(f"{source}: instance masks mean IoU {np.mean(m):.4f} (min {np.min(m):.4f}, n={len(m)}); "
              f"boxes mean IoU {np.mean(b):.4f} (min {np.min(b):.4f}, n={len(b)})")
    rel = panoptic_count_errors(out, "coco-pan", pan_dir / "panoptic_examples.json", pan_dir / "panoptic_examples",
                                spec.resolution, spec.resize)
    print(f"coco-pan: panoptic pixel counts of {len(rel)} labels, max relative error {max(rel):.4f}")
    people, errs = keypoint_errors(fx / "coco_keypoints" / "test_coco.json", spec.resolution, spec.resize)
    print(f"coco-kp: keypoints decoded from single-person pose renderings: {len(errs)} keypoints of {people} people, "
          f"median error {np.median(errs):.2f} px, p90 {np.percentile(errs, 90):.2f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
