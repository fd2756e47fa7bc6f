"""The MNIST-1D study: the published baselines, then CFL against CE, CE+LS and focal loss.

Datasets (``cfl_jax.data.mnist1d`` profiles over the standard 1,000 test signals): ``standard``
(the published 4,000), the paper's 4K CIFAR-10 profiles ``linear_580_220`` and
``linear_490_310``, and the LDAM long tails ``long_tail_10`` / ``_50`` / ``_100`` from 400 per
class. Model ``mnist1d_cnn`` and the recipe of ``experiments/configs/mnist1d.py`` (Adam 1e-2,
batch 100); every loss uses the same seeds and length. The baselines part trains the published
logistic / MLP / CNN with cross-entropy on ``standard`` at the full published 6,000 steps.

  # the study as run (two parallel shards, then the merge, reproduction checks and report):
  python -m experiments.study --study=mnist1d --seeds=10 --num_train_steps=3000 \
      --eval_every_epochs=5 --shard=0/2 &   # and --shard=1/2 in a second process; wait
  python -m experiments.study --study=mnist1d --seeds=10 --num_train_steps=3000 \
      --eval_every_epochs=5 --verify=3
"""

from experiments.study.grid import Baselines
from experiments.study.grid import Grid

PUBLISHED_STEPS = 6000

# Every dataset sets the ratio: outside long_tail it is 1 (the config's value), so a command line
# can switch profiles.
DATASETS = {
    "standard": {"dataset.profile": "standard", "dataset.imbalance_ratio": 1.0},
    "linear_580_220": {"dataset.profile": "linear_580_220", "dataset.imbalance_ratio": 1.0},
    "linear_490_310": {"dataset.profile": "linear_490_310", "dataset.imbalance_ratio": 1.0},
    **{f"long_tail_{rho}": {"dataset.profile": "long_tail", "dataset.imbalance_ratio": float(rho)}
       for rho in (10, 50, 100)},
}

_MODEL = {"model.name": "mnist1d_cnn"}
_PAPER_CFL = {**_MODEL, "loss.name": "cyclical_focal", "loss.gamma_lc": 2.0,
              "loss.cyclical_factor": 4.0, "loss.xi_granularity": "step"}
_CE = {**_MODEL, "loss.name": "cross_entropy"}
LOSSES = {
    "cross_entropy": {**_CE, "loss.label_smoothing": 0.0},
    "cross_entropy_ls": {**_CE, "loss.label_smoothing": 0.1},
    "focal": {**_MODEL, "loss.name": "focal", "loss.gamma_lc": 2.0, "loss.label_smoothing": 0.0},
    "cfl_hc2": {**_PAPER_CFL, "loss.gamma_hc": 2.0, "loss.label_smoothing": 0.0},
    "cfl_hc3": {**_PAPER_CFL, "loss.gamma_hc": 3.0, "loss.label_smoothing": 0.0},
    "cfl_hc2_ls": {**_PAPER_CFL, "loss.gamma_hc": 2.0, "loss.label_smoothing": 0.1},
    "cfl_reference": {**_MODEL, "loss.name": "cyclical_focal_reference", "loss.gamma_hc": 3.0,
                      "loss.gamma_lc": 2.0, "loss.gamma_neg": 2.0, "loss.cyclical_factor": 4.0,
                      "loss.xi_granularity": "step", "loss.label_smoothing": 0.1},
}

BASELINES = Baselines(
    dataset="standard",
    variants={label: {"model.name": f"mnist1d_{label}", "loss.name": "cross_entropy",
                      "loss.label_smoothing": 0.0, "num_train_steps": PUBLISHED_STEPS}
              for label in ("logistic", "mlp", "cnn")},
    published={"logistic": 0.32, "mlp": 0.68, "cnn": 0.94},
    source="README of github.com/greydanus/mnist1d (also GRU 91 %, human about 96 %)",
    seeds=10,
    note=f"Cross-entropy, the published recipe at its full {PUBLISHED_STEPS:,} steps, "
         "whatever the main grid's length.")

GRID = Grid(
    name="mnist1d",
    title="MNIST-1D study: cyclical focal loss vs cross-entropy, label smoothing and focal loss",
    data="MNIST-1D",
    config_file="experiments/configs/mnist1d.py",
    datasets=DATASETS,
    losses=LOSSES,
    baseline="cross_entropy",
    compared=("cfl_hc2", "cfl_hc3", "cfl_hc2_ls", "cfl_reference"),
    versus={"focal": "the loss CFL generalises",
            "cross_entropy_ls": "label smoothing alone, the control of the smoothed CFL forms"},
    controls={"cfl_hc2_ls": "cross_entropy_ls", "cfl_reference": "cross_entropy_ls"},
    baselines=BASELINES,
    notes=(
        "The test set is the standard 1,000 MNIST-1D test signals for every profile (about 100 "
        "per class), so top-1 accuracy is close to balanced accuracy. The imbalanced profiles "
        "keep the first n_c signals per class of a larger pool generated with the package's "
        "default arguments and another seed (`cfl_jax.data.mnist1d`).",
        "`cfl_hc2` / `cfl_hc3` are the paper form, `cfl_hc2_ls` the paper form with label "
        "smoothing 0.1 inside the weighted sum (the fair control against `cross_entropy_ls`), "
        "`cfl_reference` the reference-code form (its smoothing 0.1 built in); every cyclical "
        "loss uses the paper-form xi schedule (f = 4) per step over the whole run. The length "
        "is counted in steps, the same for every profile, so the small long-tail sets see more "
        "epochs.",
        "Expected calibration error (ECE): 15 equal-width bins of top-1 confidence on the test "
        "set, the final model; lower is better.",
    ),
    caveats=(
        "MNIST-1D is a small synthetic benchmark (signals of length 40, a 5-layer CNN); the study "
        "tests whether the claimed gains appear in a cheap setting, not at the paper's scale.",
        "One optimizer and length for all losses, tuned for none of them (the published CE "
        "recipe: Adam 1e-2, constant).",
        "Few-shot accuracy exists only where classes have <= 20 training signals (long_tail_50 "
        "and _100) and averages few classes of about 100 test signals each.",
    ),
)
