"""dsr_tune: train compact CNNs directly with dynamic sparse reparameterization.

Imports run one way, from the command line down to the pure-torch core (a
package imports only packages to its right; tests/test_layers.py checks it):

    cli -> sweep -> distributed -> tracking -> train -> config -> methods -> baselines -> data / models -> sparse -> checkpoint -> runfolder -> schema -> records

- ``sparse``: masks and the methods that move them (torch only);
- ``models``, ``data``: networks and data sets by name;
- ``baselines``: the baselines' own models (thin dense width, HashedNet);
- ``methods``: every method registered once, with its config section;
- ``config``: the run's config, validated (its sections come from ``methods``);
- ``train``: the PyTorch recipe (no Ray, no MLflow);
- ``tracking``: MLflow; ``distributed``: Ray Train; ``sweep``: Tune + Optuna,
  the comparison planner, reports; ``cli``: the ``dsr-tune`` command;
- ``checkpoint``, ``runfolder``, ``schema``: files and config sections, used by all
  (``runfolder`` names a bad run-folder key with ``schema``'s ConfigError);
- ``records``: what a run reports (its records, status and role), shared by every layer.
"""

import os

__version__ = "0.2.0"

# MLflow's usage telemetry, off unless the user set it: cluster nodes often cannot reach its
# server, and MLflow 3.17's telemetry thread then removes an environment variable
# (_MLFLOW_TELEMETRY_SESSION_ID) while the logging threads' HTTP calls read the environment:
# one trial of 32 lost its live logging to that KeyError in benchmarks/bench_tracking.py.
# Set here, before any module imports mlflow, so every process that imports dsr_tune has it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
