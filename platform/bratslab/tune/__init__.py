"""Tune stage: a sweep of a job — Ray Tune + Optuna + ASHA, one Ray Train run per trial.

* :mod:`~bratslab.tune.sweep` — ``start_sweep``, ``resume_sweep``: validation and the folder;
* :mod:`~bratslab.tune.sweep_run` — the run: parent MLflow run, Tune, follow-up, selection;
* :mod:`~bratslab.tune.sweep_paths` — the sweep folder's layout;
* :mod:`~bratslab.tune.tuner` — the Tune experiment (started or restored) and its trial rows;
* :mod:`~bratslab.tune.trial` — one trial: its job and the Tune trainable;
* :mod:`~bratslab.tune.search` — the Optuna searcher and the ASHA scheduler;
* :mod:`~bratslab.tune.space` — search-space files → Optuna define-by-run;
* :mod:`~bratslab.tune.optuna_storage` — where the Optuna study lives;
* :mod:`~bratslab.tune.experiment_storage` — where the Tune experiment and checkpoints live;
* :mod:`~bratslab.tune.placement_groups` — placement groups left by stopped trials;
* :mod:`~bratslab.tune.trial_states`, :mod:`~bratslab.tune.dangling` — how trials end in MLflow,
  and what a dead driver left open;
* :mod:`~bratslab.tune.followup` — the UpKern follow-up of the best MedNeXt;
* :mod:`~bratslab.tune.selection` — TTA re-evaluation of the top trials, registration;
* :mod:`~bratslab.tune.trial_result`, :mod:`~bratslab.tune.sweep_results` — a trial's result row,
  the results table and Optuna plots;
* :mod:`~bratslab.tune.config` — the job's ``sweep`` section.

The job spec is injected: tune/ never imports the jobs layer at run time.
"""
