"""Sweeps and comparisons: Ray Tune + Optuna over a search-space file, every row
planned once, every run in MLflow.

- :mod:`.space`: the search-space file (the ``Search`` section), validated before Ray starts;
- :mod:`.params`: searchable parameters and which methods read them;
- :mod:`.search`: the define-by-run Optuna space, searcher, ASHA;
- :mod:`.plan`: the rows (methods, 1x / 2x controls, ablations) and their configs;
- :mod:`.jobs` / :mod:`.selection`: what each run trains, the selected configs, paired runs;
- :mod:`.execute` / :mod:`.trial`: one job in-process, or as a Tune trial (Ray Train inside);
- :mod:`.tunephase` / :mod:`.phases`: the Tune phases, in order, resumable;
- :mod:`.folder`: the sweep folder; :mod:`.compare`: the no-search case;
- :mod:`.results` / :mod:`.tables` / :mod:`.report` / :mod:`.diagnostics`: statistics,
  tables, the report and its figures;
- :mod:`.callbacks`: Ray callbacks (imports ray; loaded lazily).

    from dsr_tune.sweep import space, phases
    outcome = phases.run(space.load("search_spaces/digits_demo.yaml"), "runs/sweeps/demo")
"""
