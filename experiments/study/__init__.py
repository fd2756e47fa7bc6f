r"""Paper-claim studies: a grid of ``train_and_evaluate`` runs, their statistics and a report.

A study is a grid definition (``digits.py``: datasets x losses x seeds, an ablation, the config
file, the baseline and the comparisons) plus the shared machinery, one job per module:

* ``grid``: ``Cell`` and the ``Grid`` definition type;
* ``run``: trains cells in one process, keeps ``results.json`` (resumable), reruns commands;
* ``provenance``: each run's config and reproducing ``experiments.train`` command, the code's
  fingerprint and git commit;
* ``stats``: mean/std over seeds, paired t-intervals, verdicts, Holm's correction;
* ``report`` and ``plots``: ``REPORT.md`` and its figures;
* ``__main__``: the command line. From the repository root::

    python -m experiments.study --grid=all --seeds=5          # the whole digits study
    python -m experiments.study --only=long_tail_10/cfl_hc2/0 --num_epochs=5   # one cell
    python -m experiments.study --report_only                 # report and plots from results.json

A second benchmark is a new grid file next to ``digits.py``, picked with ``--study=NAME``.
"""
