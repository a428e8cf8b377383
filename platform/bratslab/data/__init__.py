"""Data stage: raw BraTS NIfTI → validated, preprocessed ``.npy`` store → training patches.

Modules, in pipeline order:

Raw cases
* :mod:`~bratslab.data.layout` — BraTS 2021 / 2023+ file naming, modality synonyms, layout and
  label-convention detection;
* :mod:`~bratslab.data.discovery` — ``discover_cases``: the cases of a raw folder (BraTS names
  or an nnU-Net raw dataset);
* :mod:`~bratslab.data.nnunet` — nnU-Net raw datasets (``dataset.json``, ``splits_final.json``);
* :mod:`~bratslab.data.profiles` — challenge profiles: labels, regions, lesion-wise settings;
* :mod:`~bratslab.data.conventions` — which profile a case's labels are in (detection);
* :mod:`~bratslab.data.labels` — label conventions and WT/TC/ET regions;
* :mod:`~bratslab.data.synth` — synthetic BraTS-like datasets for demos and tests (the phantom's
  tissues in :mod:`~bratslab.data.synth_tissue`, its scanner shift in
  :mod:`~bratslab.data.synth_scanner`, post-treatment cases in :mod:`~bratslab.data.synth_post`);

Reading and checking
* :mod:`~bratslab.data.nifti_header` — the NIfTI-1 header checks and limits;
* :mod:`~bratslab.data.nifti` — the guarded NIfTI-1 loader (header first, bounded reads);
* :mod:`~bratslab.data.nifti_scan` — streaming check of a ``.nii.gz`` before loading it;
* :mod:`~bratslab.data.validate` — case checks on top of ``nifti.load_nifti``;

The store
* :mod:`~bratslab.data.preprocess_config` — :class:`PreprocessConfig` (the six steps);
* :mod:`~bratslab.data.preprocess` — ``preprocess_case``, ``restore_to_source``;
* :mod:`~bratslab.data.meta` — per-case ``CaseMeta`` (``{id}_meta.json``, ``{id}_meta.npy``);
* :mod:`~bratslab.data.preprocess_tasks` — the Ray-parallel, resumable store builder;
* :mod:`~bratslab.data.fingerprint` — dataset fingerprint, patch size, k-fold splits;
* :mod:`~bratslab.data.store` — :class:`Store`, read access to a built store;
* :mod:`~bratslab.data.remote` — an ``s3://`` store, synced to each node's cache;

Training patches
* :mod:`~bratslab.data.config` — the training job's ``data`` section (:class:`DataSection`);
* :mod:`~bratslab.data.augment_config` — its ``augment`` part (:class:`AugmentConfig`);
* :mod:`~bratslab.data.augment` — the MONAI augmentation pipeline (its own transforms in
  :mod:`~bratslab.data.augment_transforms`);
* :mod:`~bratslab.data.augment_draw`, :mod:`~bratslab.data.augment_batched` — ``augment.on:
  device``: parameters drawn on the host, the batch augmented in torch on the device;
* :mod:`~bratslab.data.loader` — ``data.loader: thread``: per-worker sampling in a thread;
* :mod:`~bratslab.data.patch_pipeline`, :mod:`~bratslab.data.patch_stream` — ``data.loader:
  ray``: patch makers and the Ray Data stream of them;
* :mod:`~bratslab.data.device_sampling` — sampling only, for ``augment.on: device``.

The ``bratslab data`` commands live in the application layer (:mod:`bratslab.app`).
"""
