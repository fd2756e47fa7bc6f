"""What every paper-study config shares: its argument grammar, the loss presets and smoke mode.

A study config is run as ``--config=experiments/configs/<study>.py:<arg>``, where ``<arg>`` is a
comma-separated list of tokens (big_vision style), e.g. ``c10,ratio=100,cfl``. Every study takes:

* a loss (default ``cfl``): ``cfl`` (cyclical focal loss, paper form), ``ce`` (cross-entropy),
  ``focal`` (Lin et al., gamma 2), ``cfl_reference`` (what the authors ran, their
  ``--focal_loss asym-cyclical``: asymmetric non-target term, label smoothing 0.1 inside the
  weighted sum, epoch-wise reference xi schedule) or ``asl_focal`` (the authors' focal-loss
  baseline, ``--focal_loss asym``: timm's ``ASLSingleLabel``, i.e. ``cfl_reference`` at xi = 0);
* ``data_dir=PATH``: the TFDS data directory (also ``--config.dataset.data_dir=PATH``), in the
  studies that read TFDS data;
* ``smoke``: a few steps of a tiny model on whatever (tiny) data ``data_dir`` holds, for CI and
  laptops (see :func:`shrink_for_smoke`).

Studies add their own tokens (a dataset, a subset, ``ratio=``); anything else is a ValueError that
lists the valid tokens.
"""

from collections.abc import Callable, Mapping, Sequence
import types
from typing import Any

import ml_collections

from cfl_jax.training import default_config

# Loss token -> config.loss.name (cfl_jax.training.LOSS_NAMES).
LOSSES = {
    "cfl": "cyclical_focal",
    "ce": "cross_entropy",
    "focal": "focal",
    "cfl_reference": "cyclical_focal_reference",
    "asl_focal": "asymmetric_focal",
}

# Loss hyper-parameters of the papers' protocols (docs/method.md §1, §3, §5).
#   timm: the reference CIFAR / ImageNet command (gamma_hc=3, gamma_pos=2, gamma_neg=2, f=4,
#     smoothing 0.1 for every loss, as timm's default; reference xi counted from epoch 0).
#   imagenet_lt, places_lt: the authors' long-tail runs, as their released OLTR configs
#     (config/{ImageNet_LT,Places_LT}/stage_1_cfl.py) set them: gamma_hc=2, gamma_neg=4 for both;
#     gamma_pos=0, f=4 for ImageNet-LT and gamma_pos=1, f=2 for Places-LT (docs/method.md §3
#     quotes gamma_pos=0, f=2 for both: docs/studies.md says which is which). xi counted from
#     epoch 1 over E=30, overshooting 1 in the last epoch, as that code did; the OLTR baselines
#     train with plain (unsmoothed) cross-entropy.
#   oltr_main_defaults: the same runs as the authors' OLTR main.py trained them when started
#     without loss flags: main.py overwrites the config files' gamma_hc, gamma_pos, gamma_neg and f
#     with its command-line defaults (OLTR/main.py:20-27, 44-48), gamma_hc=2, gamma_pos=0,
#     gamma_neg=4, f=2 for both datasets (the setting docs/method.md §3 quotes); xi and smoothing
#     as above (imagenet_lt.py's ``as_run_without_flags``).
#   ldam: CIFAR-LT with the long-tail hyper-parameters of docs/method.md §3 (gamma_pos=0, f=2),
#     xi counted from epoch 0 (the reference code has no CIFAR-LT path; this keeps xi inside
#     [0, 1]); unsmoothed, as LDAM's baselines.
#   guidance: the author's untuned defaults (docs/method.md §1: gamma_hc=2, focal gamma 2, f=4),
#     unsmoothed, for benchmarks the papers did not run (MNIST-1D).
# The reference loss and ASL always smooth by 0.1 (built into the authors' Cyclical_FocalLoss and
# ASLSingleLabel: their non-target terms exist only through smoothing); ASL takes the protocol's
# gamma_pos (gamma_lc) and gamma_neg, as the authors' train.py passes its --gamma_pos and
# --gamma_neg to both. Focal loss (Lin et al.) always uses gamma 2.
PROTOCOLS = {
    "timm": dict(gamma_hc=3.0, gamma_lc=2.0, gamma_neg=2.0, cyclical_factor=4.0,
                 label_smoothing=0.1, xi_first_epoch=0),
    "imagenet_lt": dict(gamma_hc=2.0, gamma_lc=0.0, gamma_neg=4.0, cyclical_factor=4.0,
                        label_smoothing=0.0, xi_first_epoch=1),
    "places_lt": dict(gamma_hc=2.0, gamma_lc=1.0, gamma_neg=4.0, cyclical_factor=2.0,
                      label_smoothing=0.0, xi_first_epoch=1),
    "oltr_main_defaults": dict(gamma_hc=2.0, gamma_lc=0.0, gamma_neg=4.0, cyclical_factor=2.0,
                               label_smoothing=0.0, xi_first_epoch=1),
    "ldam": dict(gamma_hc=2.0, gamma_lc=0.0, gamma_neg=4.0, cyclical_factor=2.0,
                 label_smoothing=0.0, xi_first_epoch=0),
    "guidance": dict(gamma_hc=2.0, gamma_lc=2.0, gamma_neg=2.0, cyclical_factor=4.0,
                     label_smoothing=0.0, xi_first_epoch=0),
}
FOCAL_GAMMA = 2.0
REFERENCE_LABEL_SMOOTHING = 0.1


def _describe(choices: Mapping[str, Sequence[str]],
              values: Mapping[str, tuple[Callable[[str], Any], Any]]) -> str:
  groups = [" | ".join(tokens) for tokens in choices.values()]
  options = [f"{key}=<{convert.__name__}>" for key, (convert, _) in values.items()]
  return ", ".join(groups + ["smoke"] + options)


def one_of(*options: str) -> Callable[[str], str]:
  """A ``values`` converter for :func:`parse_arg` that accepts exactly ``options``.

  Examples:
    >>> parse_arg('model=mlp', values={'model': (one_of('cnn', 'mlp'), 'cnn')}).model
    'mlp'
  """

  def convert(text: str) -> str:
    if text not in options:
      raise ValueError(f"{text!r} is not one of {', '.join(options)}")
    return text

  convert.__name__ = "|".join(options)  # what the list of valid tokens shows
  return convert


def parse_arg(arg: str | None, *, choices: Mapping[str, Sequence[str]] = types.MappingProxyType({}),
              values: Mapping[str, tuple[Callable[[str], Any], Any]] = types.MappingProxyType({}),
              data_dir: bool = True) -> types.SimpleNamespace:
  """Reads a study's config argument, e.g. ``'c10,ratio=100,cfl_reference,smoke'``.

  Args:
    arg: the text after ``:`` in ``--config=FILE:ARG`` (None or empty for every default).
    choices: the study's groups of bare tokens, ``{field: (default, alternative, ...)}``; at most
      one token per group. The ``loss`` group (:data:`LOSSES`) is always added.
    values: the study's ``key=value`` tokens, ``{key: (converter, default)}``.
    data_dir: add the ``data_dir`` token (str, default None): False for studies that read no
      TFDS data.

  Returns:
    A namespace with one attribute per group and key, and ``smoke`` (bool).

  Raises:
    ValueError: for an unknown token (listing the valid ones), two tokens of one group, a
      repeated key or a value the converter rejects.
  """
  choices = {**choices, "loss": tuple(LOSSES)}
  values = {**values, "data_dir": (str, None)} if data_dir else dict(values)
  parsed = {field: tokens[0] for field, tokens in choices.items()}
  parsed.update({key: default for key, (_, default) in values.items()})
  parsed["smoke"] = False
  group_of = {token: field for field, tokens in choices.items() for token in tokens}
  seen = set()
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    key, has_value, text = token.partition("=")
    field = key if has_value else group_of.get(token, "smoke" if token == "smoke" else None)
    if field is None or (has_value and key not in values):
      raise ValueError(f"Unknown token {token!r} in config argument {arg!r}; valid tokens: "
                       f"{_describe(choices, values)}.")
    if field in seen:
      raise ValueError(f"Config argument {arg!r} sets {field!r} twice.")
    seen.add(field)
    if has_value:
      try:
        parsed[key] = values[key][0](text)
      except ValueError as error:
        raise ValueError(f"Bad value in {token!r} of config argument {arg!r}: {error}") from None
    else:
      parsed[field] = True if field == "smoke" else token
  return types.SimpleNamespace(**parsed)


def loss_config(loss: str, protocol: str) -> ml_collections.ConfigDict:
  """The ``config.loss`` entries of loss token ``loss`` under ``protocol`` (see PROTOCOLS).

  Keys left out keep the schema's defaults (``cfl_jax/training/config.py``).
  """
  hyper = PROTOCOLS[protocol]
  config = {"name": LOSSES[loss], "label_smoothing": hyper["label_smoothing"]}
  if loss == "focal":
    config["gamma_lc"] = FOCAL_GAMMA
  if loss in ("cfl", "cfl_reference"):
    config.update({key: hyper[key] for key in ("gamma_hc", "gamma_lc", "cyclical_factor")})
    config["xi_schedule"] = "paper"
    config["xi_granularity"] = "step"
  if loss in ("cfl_reference", "asl_focal"):
    config.update(gamma_lc=hyper["gamma_lc"], gamma_neg=hyper["gamma_neg"],
                  label_smoothing=REFERENCE_LABEL_SMOOTHING)
  if loss == "cfl_reference":
    config.update(xi_schedule="reference", xi_first_epoch=hyper["xi_first_epoch"])
  return ml_collections.ConfigDict(config)


def base_config(args: types.SimpleNamespace, *, name: str, dataset: Mapping[str, Any],
                model: str, dtype: str, protocol: str) -> ml_collections.ConfigDict:
  """The training schema's defaults with a study's run name, data, model and loss.

  Args:
    args: from :func:`parse_arg`.
    name: run name without the loss (the loss token is appended).
    dataset: ``name`` and keyword arguments for ``cfl_jax.data.get_dataset``; ``data_dir`` comes
      from ``args`` (when it has one) and can be set on the command line
      (``--config.dataset.data_dir=PATH``) even when the argument leaves it unset.
    model: ``cfl_jax.models`` name.
    dtype: compute dtype, ``'float32'`` or ``'bfloat16'``.
    protocol: key of :data:`PROTOCOLS` for the loss hyper-parameters.

  Returns:
    A config whose every schema key is present (so any can be overridden with ``--config.KEY``);
    the study sets its durations and optimizer, then returns :func:`finish`.
  """
  config = default_config()
  config.name = f"{name}_{args.loss}"
  config.dataset = ml_collections.ConfigDict(dict(dataset))
  if hasattr(args, "data_dir"):
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
    config.dataset.data_dir = args.data_dir
  config.model.name = model
  config.model.dtype = dtype
  config.loss.update(loss_config(args.loss, protocol))
  return config


# timm's RandAugment magnitude of the papers' recipes ("rand-m9").
RAND_AUGMENT_MAGNITUDE = 9
# The cosine's floor: the paper gives none and the authors' commands leave --min-lr at the
# default of their train.py, 1e-6 (the option's help text says "1e-5"; the default is 1e-6).
TIMM_MIN_LEARNING_RATE = 1e-6


def timm_config(args: types.SimpleNamespace, *, name: str, dataset: Mapping[str, Any],
                batch_size: int, learning_rate: float, weight_decay: float,
                warmup_init_learning_rate: float) -> ml_collections.ConfigDict:
  """The paper's timm recipe for balanced CIFAR and ImageNet (docs/method.md §5) on TResNet-M.

  201 epochs: 3 linear warm-up epochs from ``warmup_init_learning_rate`` (the authors'
  ``--warmup-lr``) to ``learning_rate``, cosine decay to
  :data:`TIMM_MIN_LEARNING_RATE` over the next 197, 1 cool-down epoch at that floor; SGD with
  Nesterov momentum 0.9, ``weight_decay`` on weights only (not biases or norm scales), bfloat16
  compute (the paper used AMP), the ``timm`` loss protocol. ``dataset`` carries the input
  pipeline (image size, RandAugment, random erasing).
  """
  config = base_config(args, name=name, dataset=dataset, model="tresnet_m", dtype="bfloat16",
                       protocol="timm")
  config.update(num_epochs=201, batch_size=batch_size)
  config.optimizer.update(name="sgd", learning_rate=learning_rate, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay, lr_schedule="cosine", warmup_epochs=3.0,
                          warmup_init_learning_rate=warmup_init_learning_rate,
                          cooldown_epochs=1.0,
                          min_learning_rate=TIMM_MIN_LEARNING_RATE)
  return config


def finish(config: ml_collections.ConfigDict,
           args: types.SimpleNamespace) -> ml_collections.ConfigDict:
  """``config``, shrunk by :func:`shrink_for_smoke` when ``args.smoke``."""
  return shrink_for_smoke(config) if args.smoke else config


def shrink_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns a study into its smoke test: the recipe's data pipeline and training path, tiny run.

  Kept: the dataset with its input size and augmentation (RandAugment, erasing, mixup, the views
  per image), the loss, the optimizer with its parameter groups, EMA. Shrunk: two optimizer steps
  at batch 16 (two images per device on eight devices, so that mixup has a partner for every row;
  times the views per image in rows), evaluated once at the end, no warm-up or cool-down, one
  final checkpoint. The model becomes ``tiny_cnn`` (the digits CNN with a 4x4 stem at stride
  4, with the study's feature layer, ``model.feature_dim``) and pretrained weights are not
  loaded: on a 2-core CPU, TResNet-M at 224 px took 90 s to initialise and 115 s for its first
  step at batch 2, ResNet-152 85 s to initialise, too slow for the test suite; the digits CNN
  itself (stride 1) made the CIFAR-10 smoke test take 50 s, ``tiny_cnn`` 19 s. The reference xi
  schedule counts whole epochs, so with ``cfl_reference`` the run is two whole epochs: point
  ``data_dir`` at tiny data (as the tests do).
  """
  config.name += "_smoke"
  config.model.update(name="tiny_cnn", dtype="float32", init_from="")
  config.num_epochs = 2
  config.num_train_steps = -1 if config.loss.get("xi_schedule") == "reference" else 2
  config.batch_size = 16
  config.eval_batch_size = 16
  config.optimizer.update(warmup_epochs=0.0, cooldown_epochs=0.0)
  if "shuffle_buffer" in config.dataset:
    config.dataset.shuffle_buffer = 64
  config.log_every_steps = 1
  config.eval_every_epochs = 0
  config.checkpoint_every_steps = 0
  config.max_to_keep = 1
  return config
