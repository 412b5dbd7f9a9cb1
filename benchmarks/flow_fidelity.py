"""``python -m benchmarks.flow_fidelity [--flow DIR]``

Optical flow against the fixture ground truth: end-point error of the colour-wheel rendering
decoded back and of the dis_flow labeler at each DIS preset, next to zero flow.

Optical flow against ground truth (the fixture .flo files: FlyingChairs and FlyingChairsOcc
crops): mean end-point error of (1) the colour-wheel rendering decoded back
(:func:`lavin_data.render.decode_flow`), (2) the ``dis_flow`` labeler at each OpenCV DIS
preset, next to (3) predicting zero flow. Pixels of the source images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lavin_data.cli import HelpFormatter
from lavin_data.codecs import decode_flo, decode_image
from lavin_data.labelers.dis_flow import PRESETS, dis_flow
from lavin_data.render.flow import decode_flow, end_point_error, render_flow

PAIRS = [("00001_img1.ppm", "00001_img2.ppm", "00001_flow.flo"),
         ("0000000-img_0.png", "0000000-img_1.png", "0000000-flow_01.flo")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.flow_fidelity", description=__doc__.split("\n\n")[1],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--flow", default="tests/fixtures/flow",
                    help="folder of the fixture images and .flo files (scripts/fetch_fixtures.sh flow)")
    args = ap.parse_args(argv)
    d = Path(args.flow)
    print(f"{'ground truth':24s} {'|flow| mean':>11s} {'render->decode EPE':>19s} "
          + " ".join(f"{'DIS ' + p:>14s}" for p in PRESETS) + f" {'zero flow':>10s}")
    for a, b, f in PAIRS:
        gt = decode_flo((d / f).read_bytes(), str(d / f))
        img, top = render_flow(gt)
        back, _ = decode_flow(img, top)
        frames = np.stack([decode_image((d / a).read_bytes(), a), decode_image((d / b).read_bytes(), b)])
        dis = [end_point_error(dis_flow(frames, p)[0], gt).mean() for p in PRESETS]
        print(f"{f:24s} {np.linalg.norm(gt, axis=-1).mean():11.3f} {end_point_error(back, gt).mean():19.4f} "
              + " ".join(f"{e:14.3f}" for e in dis) + f" {np.linalg.norm(gt, axis=-1).mean():10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
