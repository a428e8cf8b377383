"""The model zoo: typed configs, networks on top of MONAI, and how they run fast and sound.

* :mod:`~bratslab.models.config` — the job's ``model`` section (one config per architecture);
* :mod:`~bratslab.models.zoo` — architecture name → network;
* :mod:`~bratslab.models.unet`, :mod:`~bratslab.models.segresnet`,
  :mod:`~bratslab.models.mednext` — the networks;
* :mod:`~bratslab.models.depthwise`, :mod:`~bratslab.models.norm`,
  :mod:`~bratslab.models.transposed` — MedNeXt's faster CPU layers;
* :mod:`~bratslab.models.activation_checkpointing` — recompute-in-backward for the blocks;
* :mod:`~bratslab.models.runtime` — memory layout and autocast per device and architecture;
* :mod:`~bratslab.models.precision` — layers kept float32 under CPU autocast;
* :mod:`~bratslab.models.bf16_guard` — the measured bf16 numerics check and its guard;
* :mod:`~bratslab.models.param_groups` — parameter groups by level (LRs, freezing);
* :mod:`~bratslab.models.upkern` — UpKern: a large-kernel network from a small-kernel one;
* :mod:`~bratslab.models.weights` — the model directory (``model.pt`` + ``model.json``);
* :mod:`~bratslab.models.describe` — parameter counts and FLOPs.
"""
