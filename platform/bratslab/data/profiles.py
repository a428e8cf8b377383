"""Challenge profiles: label values, regions, source conventions and lesion-wise settings, as data.

A profile says what a BraTS task's label maps mean:

- ``labels``: label value → name in the task's own (source) convention (0 is background);
- ``regions``: the scored regions as unions of labels, in report order (the groups of the
  organisers' ``brats-evaluation`` configs for the tasks that have one);
- ``rebuild``: how a label map is rebuilt from region outputs: ``(region, label)`` pairs painted
  in this order, later ones winning (nnU-Net's ``regions_class_order``);
- ``layouts`` / ``cohorts``: the file naming (``brats2021``, ``brats2023``) and cohorts it accepts;
  ``et_label`` / ``rc_label``: which label is the enhancing tumour / the resection cavity;
- ``store_labels``: source label → label inside a preprocessed store (only BraTS 2021 maps
  ET 4 → 3, so that every 2021/2023 store shares one label space);
- ``lesionwise``: the metric family used by default and the BraTS 2023 parameters
  (dilation ``d``, small-lesion floor ``T`` mm³, HD95 penalty).

The label groups of the 2024+ tasks follow the organisers' evaluation package configs
(``config_gli.yaml``: et {3}, netc {1}, snfh {2}, rc {4}, tc {1, 3}, wt {1, 2, 3} — RC is outside
WT; ``config_ped.yaml``: et {1}, netc {2}, cc {3}, ed {4}, tc {1, 2, 3}, wt {1, 2, 3, 4};
``config_mets.yaml``: et {3}, rc {4}, tc {1, 3}, wt {1, 2, 3}).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bratslab.config import StrictModel

DEFAULT_PROFILE = "brats2023-gli"
"""What a store written before profiles existed is read as."""


class LesionwiseSettings(StrictModel):
    """Lesion-wise metric of a profile.

    ``family``: ``brats2023`` (dilation + small-lesion floor, the 2023 official script) or
    ``panoptica`` (connected components matched by maximum bipartite matching on Dice, the
    official package since 2025). The other fields parameterise the ``brats2023`` family.
    """

    family: Literal["brats2023", "panoptica"] = "brats2023"
    dilation: int = Field(3, ge=0, description="GT dilation iterations (voxels).")
    min_size_mm3: float = Field(50.0, ge=0, description="GT lesions ≤ this are left out (mm³).")
    hd95_cap: float = Field(374.0, gt=0, description="HD95 of a missed lesion or an FP (mm).")


class Profile(StrictModel):
    """One challenge's label convention (see the module docstring)."""

    name: str
    description: str
    labels: dict[int, str]
    regions: dict[str, tuple[int, ...]]
    rebuild: tuple[tuple[str, int], ...]
    layouts: tuple[Literal["brats2021", "brats2023"], ...] = ("brats2023",)
    cohorts: tuple[str, ...] = ()
    et_label: int | None = None
    rc_label: int | None = None
    store_labels: dict[int, int] = Field(default_factory=dict)
    lesionwise: LesionwiseSettings = Field(default_factory=LesionwiseSettings)
    official_config: str | None = Field(
        None, description="Name of the brats-evaluation config with the same label groups."
    )
    aliases: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        known = set(self.labels)
        for region, labels in self.regions.items():
            if not labels or not set(labels) <= known:
                raise ValueError(
                    f"{self.name}: region {region} uses labels outside {sorted(known)}"
                )
        for region, label in self.rebuild:
            if region not in self.regions or label not in known:
                raise ValueError(f"{self.name}: rebuild step ({region}, {label}) is not defined")
        for label in (self.et_label, self.rc_label):
            if label is not None and label not in known:
                raise ValueError(f"{self.name}: label {label} is not one of {sorted(known)}")
        return self

    @property
    def allowed_labels(self) -> list[int]:
        """Every value a reference segmentation may hold (0 and the profile's labels)."""
        return [0, *sorted(self.labels)]

    @property
    def legacy_labels(self) -> bool:
        """A BraTS 2021/2023 convention (NCR 1, ED 2, ET 3|4): stored as labels {1, 2, 3}."""
        return self.rc_label is None and sorted(self.labels) in ([1, 2, 3], [1, 2, 4])

    def store_label(self, label: int) -> int:
        """The value ``label`` has inside a preprocessed store."""
        return self.store_labels.get(label, label)


def _legacy(name: str, cohort: str, dilation: int, floor: float, config: str | None) -> Profile:
    """A BraTS 2023 task with labels NCR 1, ED 2, ET 3 and regions WT/TC/ET."""
    return Profile(
        name=name,
        description=f"BraTS 2023 {cohort}: NCR 1, ED 2, ET 3; regions WT, TC, ET",
        labels={1: "NCR", 2: "ED", 3: "ET"},
        regions={"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)},
        rebuild=(("wt", 2), ("tc", 1), ("et", 3)),
        cohorts=(cohort,),
        et_label=3,
        lesionwise=LesionwiseSettings(dilation=dilation, min_size_mm3=floor),
        official_config=config,
        aliases=(f"{cohort.lower()}-2023",),
    )


_POST_TREATMENT_LABELS = {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="brats2021",
            description="BraTS 2021 adult glioma: NCR/NET 1, ED 2, ET 4; regions WT, TC, ET",
            labels={1: "NCR/NET", 2: "ED", 4: "ET"},
            regions={"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)},
            rebuild=(("wt", 2), ("tc", 1), ("et", 4)),
            layouts=("brats2021", "brats2023"),
            cohorts=("GLI",),
            et_label=4,
            store_labels={4: 3},
        ),
        _legacy("brats2023-gli", "GLI", 3, 50.0, "GoAT"),
        _legacy("brats2023-ssa", "SSA", 3, 50.0, None),
        _legacy("brats2023-ped", "PED", 3, 50.0, None),
        _legacy("brats2023-men", "MEN", 1, 50.0, "MenPre"),
        _legacy("brats2023-met", "MET", 1, 2.0, None),
        Profile(
            name="brats2024-gli",
            description="BraTS 2024+ post-treatment adult glioma: NETC 1, SNFH 2, ET 3, RC 4; "
            "regions ET, NETC, SNFH, RC, TC, WT (RC outside WT)",
            labels=_POST_TREATMENT_LABELS,
            regions={
                "et": (3,),
                "netc": (1,),
                "snfh": (2,),
                "rc": (4,),
                "tc": (1, 3),
                "wt": (1, 2, 3),
            },
            rebuild=(("wt", 2), ("tc", 1), ("et", 3), ("rc", 4)),
            cohorts=("GLI",),
            et_label=3,
            rc_label=4,
            lesionwise=LesionwiseSettings(family="panoptica"),
            official_config="gli",
            aliases=("gli", "gli-post"),
        ),
        Profile(
            name="brats2024-ped",
            description="BraTS 2024+ paediatric tumours: ET 1, NETC 2, CC 3, ED 4; "
            "regions ET, NETC, CC, ED, TC, WT",
            labels={1: "ET", 2: "NETC", 3: "CC", 4: "ED"},
            regions={
                "et": (1,),
                "netc": (2,),
                "cc": (3,),
                "ed": (4,),
                "tc": (1, 2, 3),
                "wt": (1, 2, 3, 4),
            },
            rebuild=(("wt", 4), ("tc", 2), ("cc", 3), ("et", 1)),
            cohorts=("PED",),
            et_label=1,
            lesionwise=LesionwiseSettings(family="panoptica"),
            official_config="ped",
            aliases=("ped",),
        ),
        Profile(
            name="brats2025-met",
            description="BraTS 2025 brain metastases: NETC 1, SNFH 2, ET 3, RC 4; "
            "regions ET, RC, TC, WT",
            labels=_POST_TREATMENT_LABELS,
            regions={"et": (3,), "rc": (4,), "tc": (1, 3), "wt": (1, 2, 3)},
            rebuild=(("wt", 2), ("tc", 1), ("et", 3), ("rc", 4)),
            cohorts=("MET",),
            et_label=3,
            rc_label=4,
            lesionwise=LesionwiseSettings(family="panoptica", dilation=1, min_size_mm3=2.0),
            official_config="mets",
            aliases=("mets",),
        ),
    )
}

_ALIASES: dict[str, str] = {
    alias: p.name for p in PROFILES.values() for alias in (p.name, *p.aliases)
}


def profile_names() -> list[str]:
    """Every accepted profile name and alias, sorted."""
    return sorted(_ALIASES)


def get_profile(name: str | Profile | None) -> Profile:
    """The profile called ``name`` (a name or alias, case-insensitive); None → the default.

    Raises:
        ValueError: no such profile (the message lists the known names).
    """
    if isinstance(name, Profile):
        return name
    if name is None:
        return PROFILES[DEFAULT_PROFILE]
    key = _ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(profile_names())}")
    return PROFILES[key]


def legacy_profile(layout: str, cohort: str | None) -> Profile:
    """The profile a case read without ``--profile`` follows when it holds no RC label:
    BraTS 2021 names → ``brats2021``; 2023+ names → that cohort's 2023 profile."""
    if layout == "brats2021":
        return PROFILES["brats2021"]
    name = f"brats2023-{(cohort or 'GLI').lower()}"
    return PROFILES.get(name, PROFILES[DEFAULT_PROFILE])
