"""Train stage: a job spec → a Ray Train run (fault tolerant, resumable) recorded in MLflow.

The driver
* :mod:`~bratslab.train.trainer` — ``run_training`` and ``build_trainer``: the whole job;
* :mod:`~bratslab.train.prepared_data` — the fold's case rows, patch size, the ``train`` dataset;
* :mod:`~bratslab.train.run_storage` — where checkpoints and run files go (local or ``s3://``);
* :mod:`~bratslab.train.run_record` — the job's MLflow run: opened, closed, its model logged;
* :mod:`~bratslab.train.outcome` — what a finished run produced (best and latest checkpoints);
* :mod:`~bratslab.train.rerun` — a FINISHED run is a record, never reopened;
* :mod:`~bratslab.train.failures` — bounded restarts, permanent errors at once;
* :mod:`~bratslab.train.folds` — cross-validation: one run per fold under a parent run;

The Train controller
* :mod:`~bratslab.train.mlflow_callback` — per-epoch metrics to MLflow
  (which ones: :mod:`~bratslab.train.logged_metrics`);
* :mod:`~bratslab.train.progress` — one console line per epoch;
* :mod:`~bratslab.train.learning_curve` — the learning-curve plot logged at the end;

Each worker
* :mod:`~bratslab.train.loop` — ``train_loop_per_worker``, read top to bottom;
* :mod:`~bratslab.train.step` — one optimizer step;
* :mod:`~bratslab.train.loop_state` — what carries over between epochs and restarts;
* :mod:`~bratslab.train.checkpoint` — the checkpoint folder format;
* :mod:`~bratslab.train.init_from` — ``model.init_from`` (copy or UpKern);
* :mod:`~bratslab.train.losses`, :mod:`~bratslab.train.optim`,
  :mod:`~bratslab.train.validation` — loss, optimizer and schedule, validation Dice;
* :mod:`~bratslab.train.config` — the job's ``training`` and ``scaling`` sections.

The job spec is injected: train/ never imports the jobs layer at run time.
"""
