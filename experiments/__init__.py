"""Experiments: the runner (``python -m experiments.train``) and one config file per study."""
