"""Sweeps and comparisons: Ray Tune + Optuna over a space file, every row
planned once, every run in MLflow. The life of a sweep, and its modules:

1. :mod:`.spec` reads and validates the space file before Ray starts
   (:mod:`.params`: the searched keys and which methods read them);
2. :mod:`.plan` plans: the comparison's rows, the runs that make them, each
   run's config, the phases (a search per method and sparsity, then the
   paired stages) and the jobs;
3. :mod:`.driver` runs the phases in order, resumable, in the sweep folder
   (:mod:`.folder`: sweep.json and the MLflow parent run); ``dsr-tune
   compare`` is a sweep without its search phases;
4. :mod:`.tune` runs one phase on Ray Tune: ASHA, the driver's callbacks
   (:mod:`.stops`: a storage fault stops the phase, a trial lost while
   starting runs again); :mod:`.study` is a search's Optuna study and
   Tune's searcher over it (its whole state, what --resume continues
   from); :mod:`.trial` trains one job (:mod:`.jobs`: what a job is and
   what a trial gets with it);
5. :mod:`.select` selects after the search: the best trial per method and
   sparsity, then the paired jobs on the report's fresh seeds;
6. :mod:`.progress` says how far it is: every ETA, the best so far;
7. :mod:`.report` reports: gather the runs, their statistics, what they
   cost, the table, the figures.

:mod:`.price` prices a sweep from its plan before any of this runs (``--plan``).

:mod:`.terms` holds the words they share: phases, job keys, the reference rows.

    from dsr_tune.sweep import driver, spec
    outcome = driver.run(spec.load("search_spaces/digits_demo.yaml"), "runs/sweeps/demo")
"""
