"""What a study is: a grid of datasets x losses x seeds, an optional ablation, optional baselines
set beside published numbers, and its comparisons.

A study file (e.g. ``digits.py``) defines one :class:`Grid` named ``GRID``. Datasets, losses and
baseline variants are named sets of config overrides (dotted keys, as on the runner's command
line) laid over the study's config file; everything else comes from that file.
"""

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

Overrides = Mapping[str, Any]

GRID_NAMES = ("main", "ablation", "baselines", "all")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid."""

  dataset: str
  loss: str
  seed: int

  @property
  def run_id(self) -> str:
    return f"{self.dataset}/{self.loss}/{self.seed}"


@dataclasses.dataclass(frozen=True)
class Ablation:
  """Loss variants run on one dataset only, each compared to the grid's baseline."""

  dataset: str
  losses: Mapping[str, Overrides]  # a name shared with the main grid must mean the same run
  title: str  # what is varied, for the report's heading
  note: str = ""  # read with the ablation's table


@dataclasses.dataclass(frozen=True)
class Baselines:
  """Variants (e.g. models) run on one dataset and reported beside published test accuracies.

  A variant's overrides may fix its own length (e.g. ``num_train_steps``): they are laid over the
  study's length, so a published recipe keeps its length when the main grid is shortened.
  """

  dataset: str
  variants: Mapping[str, Overrides]  # label -> overrides; labels differ from the grid's losses
  published: Mapping[str, float]  # label -> published test accuracy (fraction)
  source: str  # where the published numbers come from
  seeds: int  # the variants run on the first ``seeds`` of the study's seeds
  note: str = ""  # read with the table


@dataclasses.dataclass(frozen=True)
class Grid:
  """A study: its runs, the config file they override, and the comparisons its report makes.

  Attributes:
    name: short name; prefix of the run names and of the default result directories.
    title: the report's title.
    data: the data in a few words, for the report's summary sentence.
    config_file: the runner's config file, relative to the repository root.
    datasets: dataset label -> overrides.
    losses: loss label -> overrides, the main grid (every dataset x every loss).
    baseline: the loss every other loss is compared to.
    compared: the losses under test (the claims the study checks).
    versus: further baselines for ``compared`` -> why the report compares against them.
    ablation: optional ablation on one dataset.
    baselines: optional variants beside published numbers.
    controls: compared loss -> a further baseline it is tested against in the Holm family
      (e.g. a label-smoothed CFL against label-smoothed CE).
    notes: paragraphs the report shows under the recipe (what the grid's labels mean).
    caveats: the report's caveats.
  """

  name: str
  title: str
  data: str
  config_file: str
  datasets: Mapping[str, Overrides]
  losses: Mapping[str, Overrides]
  baseline: str
  compared: tuple[str, ...]
  versus: Mapping[str, str] = dataclasses.field(default_factory=dict)
  ablation: Ablation | None = None
  baselines: Baselines | None = None
  controls: Mapping[str, str] = dataclasses.field(default_factory=dict)
  notes: tuple[str, ...] = ()
  caveats: tuple[str, ...] = ()

  def __post_init__(self):
    for loss in (self.baseline, *self.compared, *self.versus, *self.controls.values()):
      if loss not in self.losses:
        raise ValueError(f"Grid {self.name!r}: {loss!r} is not one of its losses.")
    if self.ablation is not None:
      if self.ablation.dataset not in self.datasets:
        raise ValueError(f"Grid {self.name!r}: unknown ablation dataset "
                         f"{self.ablation.dataset!r}.")
      for loss, overrides in self.ablation.losses.items():
        if loss in self.losses and self.losses[loss] != overrides:
          raise ValueError(f"Grid {self.name!r}: ablation loss {loss!r} differs from the main "
                           "grid's loss of that name.")
    if not set(self.controls) <= set(self.compared):
      raise ValueError(f"Grid {self.name!r}: controls must map compared losses.")
    if self.baselines is not None:
      if self.baselines.dataset not in self.datasets:
        raise ValueError(f"Grid {self.name!r}: unknown baselines dataset "
                         f"{self.baselines.dataset!r}.")
      clash = set(self.baselines.variants) & set(self.all_losses)
      if clash or not set(self.baselines.published) <= set(self.baselines.variants):
        raise ValueError(f"Grid {self.name!r}: baseline variants must have their own labels "
                         f"(clash: {sorted(clash)}) and published numbers only for them.")

  @property
  def ablation_losses(self) -> tuple[str, ...]:
    return tuple(self.ablation.losses) if self.ablation else ()

  @property
  def all_losses(self) -> dict[str, Overrides]:
    """Every loss label of the main grid and the ablation."""
    return {**self.losses, **(self.ablation.losses if self.ablation else {})}

  @property
  def all_labels(self) -> dict[str, Overrides]:
    """Every loss label and baseline variant label, with its overrides."""
    return {**self.all_losses, **(self.baselines.variants if self.baselines else {})}

  def cells(self, grid: str, seeds: Sequence[int]) -> list[Cell]:
    """The runs of ``grid`` ('main', 'ablation', 'baselines' or 'all'), seed-major, no duplicates.

    Seed-major order spreads slow periods of a shared machine evenly over the losses and leaves
    complete paired seeds behind if the study is interrupted.
    """
    if grid not in GRID_NAMES:
      raise ValueError(f"grid must be one of {', '.join(GRID_NAMES)}, got {grid!r}")
    pairs = []
    if grid in ("main", "all"):
      pairs += [(d, loss) for d in self.datasets for loss in self.losses]
    if grid in ("ablation", "all") and self.ablation:
      pairs += [(self.ablation.dataset, loss)
                for loss in (self.baseline, *self.ablation.losses)]
    pairs = list(dict.fromkeys(pairs))
    cells = []
    for i, seed in enumerate(seeds):
      cells += [Cell(d, loss, seed) for d, loss in pairs]
      if grid in ("baselines", "all") and self.baselines and i < self.baselines.seeds:
        cells += [Cell(self.baselines.dataset, v, seed) for v in self.baselines.variants]
    return cells

  def grids_of(self, cell: Cell) -> list[str]:
    """The grids ('main', 'ablation', 'baselines') that ``cell`` belongs to."""
    grids = []
    if cell.dataset in self.datasets and cell.loss in self.losses:
      grids.append("main")
    if (self.ablation and cell.dataset == self.ablation.dataset
        and cell.loss in (self.baseline, *self.ablation.losses)):
      grids.append("ablation")
    if (self.baselines and cell.dataset == self.baselines.dataset
        and cell.loss in self.baselines.variants):
      grids.append("baselines")
    return grids

  def parse_only(self, only: str) -> Cell:
    """``'DATASET/LOSS/SEED'`` -> Cell; a ValueError lists the known names."""
    parts = only.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
      raise ValueError(f"--only must be DATASET/LOSS/SEED, got {only!r}")
    dataset, loss, seed = parts
    if dataset not in self.datasets:
      raise ValueError(f"Unknown dataset {dataset!r}; known: {', '.join(self.datasets)}")
    if loss not in self.all_labels:
      raise ValueError(f"Unknown loss {loss!r}; known: {', '.join(self.all_labels)}")
    return Cell(dataset, loss, int(seed))

  def overrides(self, cell: Cell, *, num_epochs: int, eval_every_epochs: int,
                num_train_steps: int | None = None) -> dict[str, Any]:
    """The overrides of the config file that define the run of ``cell``.

    Only what makes the cell: its name, seed, length (``num_train_steps``, when given, wins over
    ``num_epochs``), dataset and loss, and the study's evaluation, logging and checkpoint
    cadence; the recipe is the config file's.
    """
    name = f"{self.name}_{cell.dataset}_{cell.loss}_s{cell.seed}".replace(".", "p")
    steps = {"num_train_steps": num_train_steps} if num_train_steps else {}
    return {
        "name": name,
        "seed": cell.seed,
        "num_epochs": num_epochs,
        **steps,
        **self.datasets[cell.dataset],
        **self.all_labels[cell.loss],
        "eval_every_epochs": eval_every_epochs,
        "log_every_steps": 100,  # few host syncs
        "checkpoint_every_steps": 0,  # only the final checkpoint
        "max_to_keep": 1,
    }
