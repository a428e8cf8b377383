"""Typed configuration of the model zoo (the ``model:`` section of a job spec).

One :class:`ModelConfig` names the architecture and its shared options (channels, output kind,
deep supervision, gradient checkpointing); each architecture owns a sub-section with its own knobs.
Only the section of the chosen ``arch`` is used; the others keep their defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bratslab.config import StrictModel

Arch = Literal["unet", "segresnet", "mednext"]
ARCHS: tuple[str, ...] = ("unet", "segresnet", "mednext")

# MedNeXt presets (Roy et al. 2023, arXiv 2303.09975, Table 1): expansion ratio R and blocks B per
# stage, ordered: encoder stages 0..3, bottleneck, decoder stages (deepest first).
MEDNEXT_PRESETS: dict[str, dict[str, list[int]]] = {
    "S": {"expansion": [2] * 9, "blocks": [2] * 9},
    "B": {"expansion": [2, 3, 4, 4, 4, 4, 4, 3, 2], "blocks": [2] * 9},
    "M": {"expansion": [2, 3, 4, 4, 4, 4, 4, 3, 2], "blocks": [3, 4, 4, 4, 4, 4, 4, 4, 3]},
    "L": {"expansion": [3, 4, 8, 8, 8, 8, 8, 4, 3], "blocks": [3, 4, 8, 8, 8, 8, 8, 4, 3]},
}


class MedNeXtConfig(StrictModel):
    """MedNeXt compound scaling: depth (blocks), width (expansion ratio R) and kernel size k.

    Per-stage lists have ``2 * levels + 1`` entries: the encoder stages (full resolution first),
    the bottleneck, then the decoder stages (deepest first), as in the paper's notation.
    """

    size: Literal["S", "B", "M", "L"] | None = Field(
        default="S",
        description="Paper preset giving expansion and blocks; null to give both explicitly.",
    )
    kernel_size: Literal[3, 5, 7] = Field(
        default=3, description="Depthwise kernel size k of every MedNeXt block (voxels)."
    )
    expansion: int | list[int] | None = Field(
        default=None,
        description="Expansion ratio R: one value for all stages or one per stage; "
        "overrides the preset.",
    )
    blocks: list[int] | None = Field(
        default=None, description="Blocks per stage (2*levels+1 entries); overrides the preset."
    )
    init_filters: int = Field(
        default=32, ge=1, description="Channels of the full-resolution stage."
    )

    @field_validator("expansion")
    @classmethod
    def _positive_expansion(cls, v: int | list[int] | None) -> int | list[int] | None:
        values = [v] if isinstance(v, int) else (v or [])
        if any(r < 1 for r in values):
            raise ValueError("expansion ratios must be >= 1")
        return v

    @field_validator("blocks")
    @classmethod
    def _valid_blocks(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if len(v) < 3 or len(v) % 2 == 0:
                raise ValueError(
                    f"blocks needs an odd number (>= 3) of entries "
                    f"(encoder stages, bottleneck, decoder stages), got {len(v)}"
                )
            if any(b < 1 for b in v):
                raise ValueError("every stage needs at least one block")
        return v

    @model_validator(mode="after")
    def _resolvable(self) -> MedNeXtConfig:
        self.resolved()  # raises ValueError (reported by pydantic) if the lists do not fit
        return self

    def resolved(self) -> tuple[list[int], list[int]]:
        """Return explicit ``(expansion, blocks)`` lists of ``2 * levels + 1`` entries each."""
        preset = MEDNEXT_PRESETS[self.size] if self.size else None
        blocks = self.blocks or (preset["blocks"] if preset else None)
        if blocks is None:
            raise ValueError("mednext: give a size preset or explicit blocks")
        n = len(blocks)
        if isinstance(self.expansion, int):
            expansion = [self.expansion] * n
        elif self.expansion is not None:
            expansion = list(self.expansion)
        elif preset is not None and len(preset["expansion"]) == n:
            expansion = list(preset["expansion"])
        else:
            expansion = [2] * n if preset is None else []
        if len(expansion) != n:
            raise ValueError(
                f"mednext: expansion has {len(expansion)} entries but blocks has {n}; "
                "give one expansion per stage"
            )
        return expansion, list(blocks)

    @property
    def levels(self) -> int:
        """Number of down-sampling steps (encoder stages)."""
        return len(self.resolved()[1]) // 2


class UNetConfig(StrictModel):
    """nnU-Net-style U-Net (MONAI ``DynUNet``): two conv-norm-LeakyReLU per stage, stride-2 down."""

    filters: list[int] = Field(
        default=[32, 64, 128, 256, 320],
        min_length=3,
        description="Channels per resolution level, full resolution first; the last is the "
        "bottleneck (nnU-Net caps at 320).",
    )
    kernel_size: Literal[3, 5] = Field(default=3, description="Convolution kernel size (voxels).")
    res_block: bool = Field(
        default=False, description="Residual conv blocks instead of plain ones."
    )
    norm: Literal["instance", "batch", "group"] = Field(
        default="instance", description="Normalisation layer (nnU-Net uses instance norm)."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout probability.")

    @property
    def levels(self) -> int:
        return len(self.filters) - 1


class SegResNetConfig(StrictModel):
    """SegResNet (Myronenko 2018, BraTS 2018 winner; MONAI ``SegResNetDS``), no VAE branch."""

    init_filters: int = Field(default=16, ge=1, description="Channels at full resolution.")
    blocks_down: list[int] = Field(
        default=[1, 2, 2, 4],
        min_length=2,
        description="Residual blocks per encoder level; the last level is the bottleneck.",
    )
    blocks_up: list[int] | None = Field(
        default=None,
        description="Residual blocks per decoder level (deepest first); default 1 each.",
    )
    norm: Literal["group", "instance", "batch"] = Field(
        default="group",
        description="Normalisation (the BraTS 2018 design uses GroupNorm, 8 groups).",
    )

    @model_validator(mode="after")
    def _check_up(self) -> SegResNetConfig:
        if self.blocks_up is not None and len(self.blocks_up) != len(self.blocks_down) - 1:
            raise ValueError(
                f"blocks_up needs {len(self.blocks_down) - 1} entries (one per decoder level), "
                f"got {len(self.blocks_up)}"
            )
        return self

    @property
    def levels(self) -> int:
        return len(self.blocks_down) - 1


class ModelConfig(StrictModel):
    """Which network to build and how; consumed by :func:`bratslab.models.zoo.build_model`."""

    arch: Arch = Field(default="mednext", description="Architecture: unet, segresnet or mednext.")
    in_channels: int = Field(
        default=5, ge=1, description="Input channels: 4 modalities, or 5 with the foreground mask."
    )
    out_channels: int = Field(
        default=3,
        ge=1,
        description="Output channels: one per region (3: WT, TC, ET; 4 with a post-treatment "
        "profile's RC) or one per store label; training sets it from the store's profile.",
    )
    output: Literal["regions", "labels"] = Field(
        default="regions",
        description="regions: sigmoid per overlapping region WT/TC/ET; labels: softmax.",
    )
    deep_supervision: bool = Field(
        default=False,
        description="In train mode return logits at several resolutions (full resolution first).",
    )
    grad_checkpointing: bool = Field(
        default=False,
        description="Recompute each block's activations in backward: less memory, ~30% more time.",
    )
    unet: UNetConfig = Field(default_factory=UNetConfig, description="U-Net options.")
    segresnet: SegResNetConfig = Field(
        default_factory=SegResNetConfig, description="SegResNet options."
    )
    mednext: MedNeXtConfig = Field(default_factory=MedNeXtConfig, description="MedNeXt options.")

    @model_validator(mode="after")
    def _check_output(self) -> ModelConfig:
        if self.output == "labels" and self.out_channels < 2:
            raise ValueError("output='labels' needs out_channels >= 2 (background + labels)")
        return self

    @property
    def levels(self) -> int:
        """Down-sampling steps of the chosen architecture; patches must divide by ``2**levels``."""
        return getattr(self, self.arch).levels


class ModelSection(ModelConfig):
    """The zoo's model config plus where to initialise the weights from."""

    init_from: str | None = Field(
        default=None,
        description="Initial weights: a checkpoint/model directory (model.pt + model.json) or an "
        "MLflow model URI (runs:/..., models:/NAME@alias, models:/NAME/VERSION, models:/<id>). "
        "Kernel-size mismatches are bridged with UpKern.",
    )

    def model_config_only(self) -> ModelConfig:
        """The section without ``init_from``, as the zoo's :class:`ModelConfig`."""
        return ModelConfig.model_validate(self.model_dump(exclude={"init_from"}))
