"""Evaluation: score label maps against references (layer 3; runs no model, see
:mod:`bratslab.inference`).

- :mod:`~bratslab.evaluate.metrics`: whole-volume Dice, HD95 and surface distance per region.
- :mod:`~bratslab.evaluate.lesionwise`: BraTS 2023 lesion-wise Dice and HD95.
- :mod:`~bratslab.evaluate.panoptica_metric`, :mod:`~bratslab.evaluate.panoptica_scoring`: the
  panoptica lesion-wise metric family and a folder scored with it.
- :mod:`~bratslab.evaluate.scoring`: ``bratslab evaluate``, a prediction folder scored against
  its references.
- :mod:`~bratslab.evaluate.label_maps`: reading predicted and reference label maps back.
- :mod:`~bratslab.evaluate.export`: Kaggle-style run-length encoding of predicted masks.
- :mod:`~bratslab.evaluate.score_report`: the score CSV's summary, bar chart, table, progress.
"""
