"""Data stage: raw BraTS NIfTI → validated, preprocessed ``.npy`` store.

Modules, in pipeline order:

* :mod:`~bratslab.data.layout` — case discovery, BraTS 2021 / 2023+ naming, modality synonyms;
* :mod:`~bratslab.data.nnunet` — nnU-Net raw datasets (``dataset.json``, ``splits_final.json``);
* :mod:`~bratslab.data.profiles` — challenge profiles: labels, regions, lesion-wise settings;
* :mod:`~bratslab.data.conventions` — which profile a case's labels are in (detection);
* :mod:`~bratslab.data.synth` — synthetic BraTS-like datasets for demos and tests;
* :mod:`~bratslab.data.nifti` — the guarded NIfTI-1 loader (header first, bounded reads);
* :mod:`~bratslab.data.validate` — case checks on top of ``nifti.load_nifti``;
* :mod:`~bratslab.data.config` — :class:`PreprocessConfig` (the six preprocessing steps), and
  the training job's ``data`` section;
* :mod:`~bratslab.data.preprocess` — ``preprocess_case``, ``restore_to_source``;
* :mod:`~bratslab.data.meta` — per-case ``CaseMeta`` (``{id}_meta.json``, ``{id}_meta.npy``);
* :mod:`~bratslab.data.preprocess_tasks` — the Ray-parallel, resumable store builder;
* :mod:`~bratslab.data.fingerprint` — dataset fingerprint, patch size, k-fold splits;
* :mod:`~bratslab.data.store` — :class:`Store`, read access to a built store;
* :mod:`~bratslab.data.labels` — label conventions and WT/TC/ET regions.
"""
