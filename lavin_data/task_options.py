"""Spec options of each task: pydantic models, validated when a spec is loaded.

Defaults here are the defaults of the build; README's spec section lists them. This
module imports pydantic only, so validating a spec pulls in no renderer and no OpenCV.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoOptions(_Opts):
    pass


class OpenOptions(BaseModel):
    """Options of tasks whose renderer is not built yet: kept as given."""

    model_config = ConfigDict(extra="allow")


class BoxOptions(_Opts):
    thickness: int = Field(2, ge=1, le=2)
    min_side: int = Field(4, ge=1, description="boxes smaller than this (output px) are not drawn")


class SingleObjectOptions(_Opts):
    objects_per_image: int = Field(1, ge=1, description="one sample (key variant) per chosen object")
    min_area_frac: float = Field(0.002, ge=0, lt=1)


class ForegroundOptions(_Opts):
    classes_per_image: int = Field(1, ge=1, description="one sample (key variant) per chosen class present")


class PoseOptions(_Opts):
    thickness: int = Field(2, ge=1, le=4)


class EdgeOptions(_Opts):
    low: float = Field(80, gt=0)
    high: float = Field(160, gt=0)


class InpaintOptions(_Opts):
    mode: str = Field("boxes", pattern="^(boxes|patches)$")
    coverage: tuple[float, float] = (0.1, 0.4)
    patch: int = Field(16, ge=2)


class RainOptions(_Opts):
    density: tuple[float, float] = (0.002, 0.01)
    length: tuple[float, float] = (10, 30)
    angle: tuple[float, float] = (-25, 25)
    intensity: tuple[float, float] = (0.5, 0.9)


class MotionBlurOptions(_Opts):
    length: tuple[float, float] = (5, 21)
    angle: tuple[float, float] = (0, 180)


class GlassBlurOptions(_Opts):
    sigma: tuple[float, float] = (0.6, 1.5)
    max_delta: tuple[float, float] = (1, 3)
    iterations: tuple[int, int] = (1, 2)


class NoiseOptions(_Opts):
    sigma: tuple[float, float] = (10, 50)


class LowLightOptions(_Opts):
    gain: tuple[float, float] = (0.08, 0.35)
    gamma: tuple[float, float] = (1.5, 2.5)
    noise_sigma: tuple[float, float] = (1, 6)


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
