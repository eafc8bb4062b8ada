"""Sweeps: Ray Tune + Optuna over a search-space file, baselines paired, MLflow.

- :mod:`.space`: the search-space file, validated before Ray starts;
- :mod:`.search`: the define-by-run Optuna space, searcher, ASHA;
- :mod:`.jobs`: what each trial trains and where its files go;
- :mod:`.trial`: the Tune trial function (Ray Train inside);
- :mod:`.pairing`: the baselines of every evaluated sparsity;
- :mod:`.driver`: both Tune phases, resume, sync of what MLflow missed;
- :mod:`.callbacks`: Ray callbacks (imports ray; loaded lazily).

    from dsr_tune.sweep import space, driver
    outcome = driver.run(space.load("search_spaces/digits_demo.yaml"), "runs/sweeps/demo")
"""
