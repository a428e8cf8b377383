"""Lesion-wise-aware post-processing: drop small connected components of a predicted label map.

BraTS 2023 lesion-wise scoring counts every predicted component that touches no ground-truth
lesion as a false positive, so a few stray voxels cost as much as a missed lesion. The
thresholds (:mod:`~bratslab.postprocess.config`) are applied by :mod:`~bratslab.postprocess.apply`,
fitted on a fold's validation cases by :mod:`~bratslab.postprocess.fit`, and stored on the
model's registered version (:mod:`bratslab.tracking.postprocess_store`), where ``bratslab
predict`` finds them.
"""
