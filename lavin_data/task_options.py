"""Spec options of each task: pydantic models, validated when a spec is loaded.

Defaults here are the defaults of the build; docs/spec.md lists them. This
module imports pydantic only, so validating a spec pulls in no renderer and no OpenCV.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _ordered(v: tuple) -> tuple:
    if v[0] > v[1]:
        raise ValueError(f"range {list(v)} is reversed: give (min, max) with min <= max")
    return v


def _increasing(v: tuple) -> tuple:
    if not v[0] < v[1]:
        raise ValueError(f"range {list(v)} is empty: give (low, high) with low < high")
    return v


def _bounded(lo: float | None, hi: float | None, what: str):
    def check(v: tuple) -> tuple:
        for x in v:
            if (lo is not None and x < lo) or (hi is not None and x > hi):
                raise ValueError(f"range {list(v)}: {what}")
        return v
    return AfterValidator(check)


# (min, max) ranges a degradation draws from, validated when the spec is loaded.
Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
PositiveRange = Annotated[Range, _bounded(1e-12, None, "values must be > 0")]
NonNegativeRange = Annotated[Range, _bounded(0, None, "values must be >= 0")]
FractionRange = Annotated[Range, _bounded(0, 1, "values are fractions in [0, 1]")]
PercentileRange = Annotated[Range, _bounded(0, 100, "percentiles are in [0, 100]"), AfterValidator(_increasing)]


class _Opts(BaseModel):
    """Options every built task has: the last quality gate, applied by the render stage."""

    model_config = ConfigDict(extra="forbid")
    min_target_coverage: float = Field(
        0.0005, ge=0, le=1, description="gate target_coverage: a pair whose rendering (the target, and the input where "
                                       "it is a rendering) has fewer non-black pixels than this fraction is skipped")


# The options every task has (gates the render stage applies), as opposed to a renderer's parameters.
COMMON_OPTIONS = frozenset(_Opts.model_fields)


class NoOptions(_Opts):
    pass


class OpenOptions(BaseModel):
    """Options of tasks whose renderer is not built yet: kept as given."""

    model_config = ConfigDict(extra="allow")


class _ObjectGate(_Opts):
    min_object_area: float = Field(
        0.001, ge=0, lt=1, description="gate min_object_area: objects smaller than this fraction of the output image "
                                        "after the resize (box area; mask area for masks) are left out; a sample left "
                                        "with none is skipped")


class BoxOptions(_ObjectGate):
    thickness: int = Field(2, ge=1, le=2)
    min_side: int = Field(4, ge=1, description="boxes smaller than this (output px) cannot be drawn: left out")


class InstanceOptions(_ObjectGate):
    pass


class SingleObjectOptions(_ObjectGate):
    objects_per_image: int = Field(1, ge=1, description="one sample (key variant) per chosen object")
    min_object_area: float = Field(0.002, ge=0, lt=1, description="gate min_object_area (box area, fraction of the "
                                                                  "output image): smaller objects are not chosen")


class ForegroundOptions(_ObjectGate):
    classes_per_image: int = Field(1, ge=1, description="one sample (key variant) per chosen class present")


class PoseOptions(_ObjectGate):
    thickness: int = Field(2, ge=1, le=4)
    min_object_area: float = Field(0.0, ge=0, lt=1, description="gate min_object_area for people (box area)")


class _MeasuredGate(_Opts):
    min_valid_fraction: float = Field(
        0.1, ge=0, le=1, description="gate min_valid_fraction: a sample whose measured map (depth, normals, flow) is "
                                     "valid on less than this fraction of the view (clip) is skipped")


class DepthOptions(_MeasuredGate):
    percentiles: PercentileRange = Field(
        (2.0, 98.0), description="disparity percentiles (of the valid pixels of the image, or of the whole clip) that "
                                 "map to the darkest and brightest grey; values beyond are clipped, so a few "
                                 "near-sensor outliers cannot darken the whole image")


class NormalOptions(_MeasuredGate):
    pass


class FlowOptions(_MeasuredGate):
    # Ground-truth flow keeps its exact maximum by default: small fast objects are real (in the
    # FlyingChairs fixture 99 % of the pixels move under 0.5 px and one chair 23.5 px), and a
    # percentile cap would saturate them. Predicted flow (dis_flow) may want 99 here.
    magnitude_percentile: float = Field(
        100.0, gt=0, le=100, description="the clip's flow scale (full saturation) is its largest valid magnitude, "
                                         "capped at outlier_factor x this percentile of them (100: no cap)")
    outlier_factor: float = Field(2.0, ge=1, description="vectors longer than this many times the percentile are "
                                                         "outliers: they saturate instead of setting the scale")


class EdgeOptions(_Opts):
    low: float = Field(80, gt=0)
    high: float = Field(160, gt=0)

    @field_validator("high")
    @classmethod
    def _low_high(cls, v: float, info) -> float:
        if "low" in info.data and v < info.data["low"]:
            raise ValueError(f"Canny thresholds reversed: high {v} < low {info.data['low']}")
        return v


class InpaintOptions(_Opts):
    mode: str = Field("boxes", pattern="^(boxes|patches)$")
    coverage: FractionRange = (0.1, 0.4)
    patch: int = Field(16, ge=2)


class RainOptions(_Opts):
    density: FractionRange = (0.002, 0.01)
    length: PositiveRange = (10, 30)
    angle: Range = (-25, 25)
    intensity: FractionRange = (0.5, 0.9)


class MotionBlurOptions(_Opts):
    length: Annotated[Range, _bounded(1, None, "lengths are >= 1 pixel")] = (5, 21)
    angle: Range = (0, 180)


class GlassBlurOptions(_Opts):
    sigma: PositiveRange = (0.6, 1.5)
    max_delta: NonNegativeRange = (1, 3)
    iterations: Annotated[tuple[int, int], AfterValidator(_ordered), _bounded(1, None, "iterations are >= 1")] = (1, 2)


class NoiseOptions(_Opts):
    sigma: NonNegativeRange = (10, 50)


class LowLightOptions(_Opts):
    gain: Annotated[Range, _bounded(1e-12, 1, "gains are in (0, 1]")] = (0.08, 0.35)
    gamma: PositiveRange = (1.5, 2.5)
    noise_sigma: NonNegativeRange = (1, 6)


def clip_length(n: int) -> int:
    """The ST-VAE encodes (and J-DiT sees) clips of 1 or 1 + 4k frames whole."""
    if n < 1 or (n - 1) % 4:
        raise ValueError(f"{n} frames: a clip has 1 or 1+4k frames (1, 5, 9, 13, 17, ...)")
    return n


class FramePredictionOptions(_Opts):
    input_frames: int = Field(9, description="frames seen (1 or 1+4k)")
    target_frames: int = Field(13, description="frames predicted, starting at the input's last frame (1 or 1+4k): "
                                               "the default predicts the 12 frames after 9, as the paper's 12")

    @field_validator("input_frames", "target_frames")
    @classmethod
    def _length(cls, v: int) -> int:
        return clip_length(v)
