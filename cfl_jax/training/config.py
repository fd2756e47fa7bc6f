"""The training configuration: every key with its default, and validation before any compute.

:func:`default_config` is the schema. A user config (an ``ml_collections.ConfigDict`` or a dict)
is laid over it by :func:`resolve_config`: keys it omits keep their defaults, keys the schema
lacks and values out of range stop the run with one :class:`ConfigError` that lists every
problem. Only ``dataset`` is free-form: it holds ``name`` plus that dataset's keyword arguments,
which :func:`cfl_jax.data.get_dataset` checks.

Durations: ``num_epochs`` sets the length unless ``num_train_steps > 0`` (big_vision manner);
``eval_every_epochs`` and ``checkpoint_every_steps`` count in their own units, 0 meaning "only at
the end".
"""

from collections.abc import Mapping
import difflib
import math
import numbers
from typing import Any

import ml_collections

from cfl_jax.training import recipe


class ConfigError(ValueError):
  """A configuration the trainer refuses to run; the message lists every problem found."""


# Values of config.init_key (see default_config).
INIT_KEYS = ("stream", "rbg_v0")


def default_config() -> ml_collections.ConfigDict:
  """Every configuration key with its default: the embedded digits job.

  This is the one place the digits recipe is written: ``experiments/configs/digits.py`` returns
  it, and the digits study overrides only what defines each of its cells.
  """
  config = ml_collections.ConfigDict()
  config.name = "digits_lt10_cfl"  # run name; the runner's default workdir is ./runs/<name>
  config.seed = 0  # fixes init, data order, augmentation and dropout
  # Parameter initialisation key: 'stream' is the init stream of the run's key (JAX's default
  # implementation, the same bits on every backend); 'rbg_v0' is jax.random.key(seed, impl='rbg'),
  # how runs recorded before the streams were separated initialised (the MNIST-1D study pins it,
  # so its recorded runs reproduce from their commands).
  config.init_key = "stream"
  config.num_epochs = 60  # training length in epochs ...
  config.num_train_steps = -1  # ... unless this is > 0 (then it wins)
  config.batch_size = 64  # global batch over all devices and processes
  config.eval_batch_size = 512  # global eval batch (the last one is padded and masked)

  # name + the dataset's keyword arguments, for cfl_jax.data.get_dataset.
  config.dataset = ml_collections.ConfigDict(
      {"name": "digits", "profile": "long_tail", "imbalance_ratio": 10.0})
  # name for cfl_jax.models.get_model; dtype is the compute dtype (params and loss stay f32).
  # init_from: a safetensors file (timm / torchvision naming, see cfl_jax.models.import_weights)
  # loaded at the start of a run, never on resume; '' trains from scratch.
  # feature_dim: a dense + ReLU layer of this width between the pooled features and the classifier
  # (OLTR's use_fc; Places-LT: 512), in the backbone's parameter group and initialised afresh
  # when init_from fills the backbone; 0 = none.
  config.model = ml_collections.ConfigDict(
      {"name": "digits_cnn", "dtype": "float32", "init_from": "", "feature_dim": 0})

  config.optimizer = ml_collections.ConfigDict({
      "name": "sgd",  # 'sgd' (weight decay added to the gradient) or 'adamw' (decoupled)
      "learning_rate": 0.1,  # peak learning rate
      "momentum": 0.9,  # sgd momentum (0 disables it)
      "nesterov": True,  # sgd Nesterov momentum
      "b1": 0.9,  # adamw
      "b2": 0.999,  # adamw
      "eps": 1e-8,  # adamw
      "weight_decay": 5e-4,  # on the parameters named by weight_decay_on
      "weight_decay_on": "kernels",  # 'kernels' (not biases or norm scales) or 'all'
      "grad_clip_norm": 0.0,  # global-norm gradient clipping threshold; 0 = off
      # classifier ('head' module) peak learning rate, same schedule shape; 0 = learning_rate
      "head_learning_rate": 0.0,
      "lr_schedule": "cosine",  # 'cosine' (to min_learning_rate), 'step' or 'constant'
      "min_learning_rate": 0.0,  # 'cosine': the floor it ends at (peak-relative for the head)
      "warmup_epochs": 0.0,  # linear warm-up length
      "warmup_init_learning_rate": 0.0,  # learning rate at step 0 of the warm-up
      "cooldown_epochs": 0.0,  # 'cosine': epochs held at min_learning_rate at the end
      "lr_decay_epochs": (),  # 'step' schedule: epochs at which the rate is multiplied ...
      "lr_decay_factor": 0.1,  # ... by this factor
      # 0: a non-finite loss or gradient stops the run (a divergence guard). N > 0: skip such
      # updates, keeping the whole state (params, batch_stats, EMA, optimizer) while the step and
      # every schedule move on; counted as skipped_updates; stopping after more than N in a row
      "skip_nonfinite_updates": 0,
  })

  config.loss = ml_collections.ConfigDict({
      "name": "cyclical_focal",  # one of recipe.LOSS_NAMES
      "gamma_hc": 2.0,  # high-confidence exponent (high_confidence, *cyclical_*)
      "gamma_lc": 2.0,  # focal exponent (focal, *cyclical*, asymmetric_focal; reference gamma_pos)
      "gamma_neg": 2.0,  # non-target exponent (cyclical_focal_reference, asymmetric_focal)
      "label_smoothing": 0.0,  # epsilon, inside the weighted sum
      "cyclical_factor": 4.0,  # f >= 1, shared by xi and every cyclical hyper-parameter
      "xi_granularity": "step",  # 'step' or 'epoch' (xi constant within an epoch)
      "xi_schedule": "paper",  # 'paper' or 'reference' (authors' code, epoch-granular)
      "xi_first_epoch": 0,  # 'reference' only: 0 (timm path) or 1 (long-tail path, xi > 1 at end)
  })

  # General cyclical training (docs/method.md §4): h = (1 - xi) * max + xi * min, following the
  # loss's xi (clipped to [0, 1]); min at the start and the end, max at the hard middle.
  config.cyclical = ml_collections.ConfigDict({
      # replaces optimizer.weight_decay when enabled (weights only, as the constant one)
      "weight_decay": {"enabled": False, "min": 2.5e-4, "max": 1e-3},
      # replaces optimizer.grad_clip_norm when enabled
      "grad_clip": {"enabled": False, "min": 0.5, "max": 5.0},
      # training logits are divided by the temperature; evaluation is unaffected
      "temperature": {"enabled": False, "min": 0.5, "max": 2.0},
  })

  # Exponential moving average of params and batch_stats, updated after every step with
  # optax.incremental_update; evaluated beside the raw weights. 0 = off.
  config.ema_decay = 0.0
  # Mixup (Zhang et al. 2018) on device: Beta(alpha, alpha) weight per batch, each image mixed
  # with the reverse of its device's shard (timm's batch mode, per device); labels become
  # probabilities. 0 = off.
  config.mixup_alpha = 0.0

  config.many_shot_min = 100  # classes with >= this many training images are many-shot
  config.few_shot_max = 20  # classes with <= this many are few-shot; the rest medium-shot
  config.log_every_steps = 20  # train metrics are averaged over and written every this many steps
  config.eval_every_epochs = 10  # 0 = evaluate only at the end
  config.checkpoint_every_steps = 140  # 0 = only the final (and preemption) checkpoint
  config.max_to_keep = 2  # checkpoints kept on disk
  # JAX's persistent compilation cache (cfl_jax.training.compilation_cache): 'auto' =
  # <workdir>/compilation_cache unless JAX is configured with a cache already, 'off', or a
  # directory (local or gs://), e.g. one shared by many runs. A relaunch then loads its programs.
  config.compilation_cache = "auto"
  return config


def _merge(defaults: dict, overrides: Mapping, path: str, errors: list[str]) -> dict:
  """``defaults`` updated by ``overrides``, recursively; records unknown keys and bad types."""
  merged = dict(defaults)
  for key, value in overrides.items():
    where = f"{path}{key}"
    if key not in defaults:
      close = difflib.get_close_matches(key, defaults, n=1)
      hint = f" (did you mean '{path}{close[0]}'?)" if close else ""
      errors.append(f"unknown key {where!r}{hint}")
    elif isinstance(defaults[key], dict) and key != "dataset":
      if isinstance(value, Mapping):
        merged[key] = _merge(defaults[key], value, f"{where}.", errors)
      else:
        errors.append(f"{where} must be a mapping, got {value!r}")
    else:
      merged[key] = _coerce(defaults[key], value, where, errors)
  return merged


def _coerce(default: Any, value: Any, where: str, errors: list[str]) -> Any:
  """``value`` converted to the type of ``default`` where that is lossless, else an error."""
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    value = int(value) if ok else value
  elif isinstance(default, float):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif isinstance(default, tuple):
    ok = isinstance(value, (list, tuple))
    value = tuple(value) if ok else value
  elif isinstance(default, dict):
    ok = isinstance(value, Mapping) and "name" in value
  else:
    ok = isinstance(value, type(default))
  if not ok:
    errors.append(f"{where} must be like {default!r}, got {value!r}")
  return value


def _check_values(c: dict, errors: list[str]) -> None:
  """Appends a message for every out-of-range value of the merged config ``c``."""

  def need(ok: bool, message: str) -> None:
    if not ok:
      errors.append(message)

  def at_least(key: str, value: float, minimum: float) -> None:
    need(math.isfinite(value) and value >= minimum, f"{key} must be >= {minimum}, got {value}")

  def positive(key: str, value: float) -> None:
    need(math.isfinite(value) and value > 0, f"{key} must be > 0, got {value}")

  def choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    need(value in choices, f"{key} must be one of {', '.join(choices)}; got {value!r}")

  opt, loss = c["optimizer"], c["loss"]
  need(bool(c["name"]) and "/" not in c["name"], f"name must be a non-empty file name, got "
       f"{c['name']!r}")
  need(bool(c["compilation_cache"].strip()),
       f"compilation_cache must be 'auto', 'off' or a directory, got {c['compilation_cache']!r}")
  for key in ("num_epochs", "batch_size", "eval_batch_size", "log_every_steps", "max_to_keep"):
    at_least(key, c[key], 1)
  need(c["num_train_steps"] == -1 or c["num_train_steps"] >= 1,
       f"num_train_steps must be -1 (use num_epochs) or >= 1, got {c['num_train_steps']}")
  for key in ("eval_every_epochs", "checkpoint_every_steps", "few_shot_max"):
    at_least(key, c[key], 0)
  need(c["many_shot_min"] > c["few_shot_max"],
       f"many_shot_min ({c['many_shot_min']}) must exceed few_shot_max ({c['few_shot_max']})")
  choice("model.dtype", c["model"]["dtype"], ("float32", "bfloat16"))
  at_least("model.feature_dim", c["model"]["feature_dim"], 0)

  choice("optimizer.name", opt["name"], recipe.OPTIMIZER_NAMES)
  choice("optimizer.lr_schedule", opt["lr_schedule"], recipe.LR_SCHEDULE_NAMES)
  positive("optimizer.learning_rate", opt["learning_rate"])
  for key in ("momentum", "b1", "b2"):
    need(0 <= opt[key] < 1, f"optimizer.{key} must be in [0, 1), got {opt[key]}")
  positive("optimizer.eps", opt["eps"])
  for key in ("weight_decay", "grad_clip_norm", "warmup_epochs", "warmup_init_learning_rate",
              "cooldown_epochs", "head_learning_rate", "min_learning_rate"):
    at_least(f"optimizer.{key}", opt[key], 0.0)
  choice("optimizer.weight_decay_on", opt["weight_decay_on"], recipe.WEIGHT_DECAY_TARGETS)
  need(opt["min_learning_rate"] < opt["learning_rate"],
       f"optimizer.min_learning_rate ({opt['min_learning_rate']}) must be below "
       f"optimizer.learning_rate ({opt['learning_rate']})")
  need(opt["lr_schedule"] == "cosine" or (opt["cooldown_epochs"] == 0
                                          and opt["min_learning_rate"] == 0),
       "optimizer.cooldown_epochs and optimizer.min_learning_rate apply to "
       "optimizer.lr_schedule='cosine' only")
  need(0 <= c["ema_decay"] < 1, f"ema_decay must be in [0, 1), got {c['ema_decay']}")
  at_least("mixup_alpha", c["mixup_alpha"], 0.0)
  at_least("optimizer.skip_nonfinite_updates", opt["skip_nonfinite_updates"], 0)
  need(0 < opt["lr_decay_factor"] <= 1,
       f"optimizer.lr_decay_factor must be in (0, 1], got {opt['lr_decay_factor']}")
  decays = opt["lr_decay_epochs"]
  increasing = (all(isinstance(e, numbers.Integral) and int(e) > 0 for e in decays)
                and list(decays) == sorted(set(decays)))
  need(increasing,
       f"optimizer.lr_decay_epochs must be increasing positive integers, got {decays!r}")
  need(opt["lr_schedule"] == "step" or not decays,
       "optimizer.lr_decay_epochs apply to optimizer.lr_schedule='step' only")
  need(not (increasing and decays) or decays[0] >= opt["warmup_epochs"],
       f"optimizer.lr_decay_epochs {decays!r} must not fall inside the "
       f"{opt['warmup_epochs']:g} warm-up epochs")

  choice("loss.name", loss["name"], recipe.LOSS_NAMES)
  choice("init_key", c["init_key"], INIT_KEYS)
  for key in ("gamma_hc", "gamma_lc", "gamma_neg"):
    at_least(f"loss.{key}", loss[key], 0.0)
  need(0 <= loss["label_smoothing"] < 1,
       f"loss.label_smoothing must be in [0, 1), got {loss['label_smoothing']}")
  at_least("loss.cyclical_factor", loss["cyclical_factor"], 1.0)
  choice("loss.xi_granularity", loss["xi_granularity"], ("step", "epoch"))
  choice("loss.xi_schedule", loss["xi_schedule"], ("paper", "reference"))
  need(loss["xi_first_epoch"] in (0, 1),
       f"loss.xi_first_epoch must be 0 or 1, got {loss['xi_first_epoch']}")
  need(loss["xi_schedule"] == "reference" or loss["xi_first_epoch"] == 0,
       "loss.xi_first_epoch applies to loss.xi_schedule='reference' only")

  for name, sub in c["cyclical"].items():
    for bound in ("min", "max"):
      if name == "weight_decay":
        at_least(f"cyclical.{name}.{bound}", sub[bound], 0.0)
      else:  # temperatures divide the logits, clipping thresholds the gradients
        positive(f"cyclical.{name}.{bound}", sub[bound])


def resolve_config(config: Mapping | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The complete, validated configuration: ``config`` laid over :func:`default_config`.

  Args:
    config: a ``ConfigDict`` or a nested dict with any subset of the schema's keys.

  Returns:
    A new locked ``ConfigDict`` holding every key.

  Raises:
    ConfigError: listing every unknown key, wrong type and out-of-range value.

  Examples:
    >>> resolve_config({'loss': {'name': 'focal'}}).loss.gamma_lc
    2.0
    >>> resolve_config({'loss': {'cyclical_factor': 0.5}})
    Traceback (most recent call last):
    ...
    cfl_jax.training.config.ConfigError: Invalid training config:
      - loss.cyclical_factor must be >= 1.0, got 0.5
  """
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  errors: list[str] = []
  merged = _merge(default_config().to_dict(), config, "", errors)
  if not errors:
    _check_values(merged, errors)
  if errors:
    raise ConfigError("Invalid training config:\n" + "\n".join(f"  - {e}" for e in errors))
  resolved = ml_collections.ConfigDict(merged)
  resolved.lock()
  return resolved
