"""Pretrained weights from PyTorch checkpoints (safetensors) as Flax variables.

:func:`import_weights` reads a local safetensors file in the naming of the library that published
the weights and returns ``{'params', 'batch_stats'}`` for :func:`cfl_jax.models.get_model`:

  model        checkpoint naming                    published weights
  tresnet_m    timm ``tresnet_m``                   ``timm/tresnet_m.miil_in1k`` (Hugging Face)
  resnet50     torchvision ``resnet50``             ``ResNet50_Weights.IMAGENET1K_V1`` / ``_V2``
  resnet152    torchvision ``resnet152``            ``ResNet152_Weights.IMAGENET1K_V1`` / ``_V2``

The file is read with the ``safetensors`` package (no PyTorch). Tensors change layout on the way:
convolution weights ``[out, in, kh, kw]`` become kernels ``[kh, kw, in, out]``, linear weights
``[out, in]`` become ``[in, out]``, BatchNorm ``weight`` / ``bias`` become ``scale`` / ``bias``
(params) and ``running_mean`` / ``running_var`` become ``mean`` / ``var`` (batch_stats);
``num_batches_tracked`` is read and ignored.

torchvision normalises its inputs with the ImageNet mean and standard deviation; timm's TResNet
weights expect images in [0, 1] without normalisation.
"""

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from absl import logging
from flax import traverse_util

from cfl_jax import models
from cfl_jax import store
from cfl_jax.models import layers

Path = tuple[str, ...]

#: Where each model's ImageNet weights are published, for the error about a missing file.
WEIGHTS_SOURCES = {
    "tresnet_m": "timm's tresnet_m.miil_in1k: model.safetensors of "
                 "https://huggingface.co/timm/tresnet_m.miil_in1k",
    "resnet50": "torchvision's ResNet50_Weights.IMAGENET1K_V1 "
                "(https://download.pytorch.org/models/resnet50-0676ba61.pth), converted with "
                "safetensors.torch.save_file(torch.load(PTH), PATH)",
    "resnet152": "torchvision's ResNet152_Weights.IMAGENET1K_V1 "
                 "(https://download.pytorch.org/models/resnet152-394f9c45.pth), converted with "
                 "safetensors.torch.save_file(torch.load(PTH), PATH)",
}

# Flax (collection, leaf name) -> PyTorch state-dict suffix.
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# Axis order taking a PyTorch weight of this rank to the Flax layout (and its inverse).
_TO_FLAX_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}
_TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}
# Input side used to build the models' variables; any size the models accept gives the same ones.
_INIT_SIZE = 32


def _block_prefix(module: str, root: str) -> str:
  """``stage{i}_block{j}`` (1-based) -> ``{root}layer{i}.{j - 1}``."""
  stage, block = module.removeprefix("stage").split("_block")
  return f"{root}layer{stage}.{int(block) - 1}"


def _timm_tresnet_module(path: Path) -> str:
  """Module path in :class:`cfl_jax.models.tresnet.TResNet` -> timm ``tresnet_m`` module name."""
  match path:
    case ("stem_conv",):
      return "body.conv1.conv"
    case ("stem_bn",):
      return "body.conv1.bn"
    case ("head", "dense"):
      return "head.fc"
    case (block, "shortcut", layer):  # the ConvNormAct after the average pool
      return f"{_block_prefix(block, 'body.')}.downsample.1.{layer}"
    case (block, "se", fc):
      return f"{_block_prefix(block, 'body.')}.se.{fc}"
    case (block, layer):  # conv{k} / bn{k} -> conv{k}.conv / conv{k}.bn
      kind, index = layer[:-1], layer[-1]
      return f"{_block_prefix(block, 'body.')}.conv{index}.{'conv' if kind == 'conv' else 'bn'}"
  raise ValueError(f"No timm name for TResNet module {'/'.join(path)}.")


def _torchvision_resnet_module(path: Path) -> str:
  """Module path in :class:`cfl_jax.models.resnet.ResNet` -> torchvision ``ResNet`` module name."""
  match path:
    case ("stem_conv",):
      return "conv1"
    case ("stem_bn",):
      return "bn1"
    case ("head", "dense"):
      return "fc"
    case (block, "shortcut", layer):
      return f"{_block_prefix(block, '')}.downsample.{0 if layer == 'conv' else 1}"
    case (block, layer):
      return f"{_block_prefix(block, '')}.{layer}"
  raise ValueError(f"No torchvision name for ResNet module {'/'.join(path)}.")


_CHECKPOINT_NAMING: dict[str, Callable[[Path], str]] = {
    "tresnet_m": _timm_tresnet_module,
    "resnet50": _torchvision_resnet_module,
    "resnet152": _torchvision_resnet_module,
}

#: The models whose ImageNet weights :func:`import_weights` reads.
IMPORTABLE_MODELS = tuple(_CHECKPOINT_NAMING)


def _to_flax(tensor: np.ndarray) -> np.ndarray:
  """PyTorch weight layout -> Flax layout (identity for vectors)."""
  axes = _TO_FLAX_AXES.get(tensor.ndim)
  return np.transpose(tensor, axes) if axes else tensor


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax shape -> the shape PyTorch stores for the same tensor."""
  axes = _TO_TORCH_AXES.get(len(flax_shape))
  return tuple(flax_shape[a] for a in axes) if axes else tuple(flax_shape)


def _match(
    expected: dict[Path, jax.ShapeDtypeStruct],
    tensors: dict[str, np.ndarray],
    torch_module: Callable[[Path], str],
) -> tuple[dict[Path, np.ndarray], int | None, list[str]]:
  """Pairs each model variable with its file tensor.

  Args:
    expected: the model's flattened variables, ``(collection, *module path, leaf) -> shape``.
    tensors: the file's ``state-dict key -> tensor``.
    torch_module: module path -> PyTorch module name.

  Returns:
    ``(variables, file_classes, problems)``: the matched variables in Flax layout (the classifier
    left out when the file's has another class count), that class count (``None`` if the
    classifier matched) and one line per kind of problem (missing, unexpected, mis-shaped).
  """
  flat, consumed, missing, misshaped, head_classes = {}, set(), [], [], {}
  for (collection, *module, leaf), abstract in expected.items():
    key = f"{torch_module(tuple(module))}.{_LEAF_NAMES[collection, leaf]}"
    if leaf == "mean":  # one num_batches_tracked per BatchNorm, if the file has it
      consumed.add(key.replace("running_mean", "num_batches_tracked"))
    if key not in tensors:
      missing.append(key)
      continue
    consumed.add(key)
    value = _to_flax(tensors[key])
    if value.shape == abstract.shape:
      flat[collection, *module, leaf] = value
    elif module[0] == "head" and value.shape[:-1] == abstract.shape[:-1]:
      head_classes[key] = value.shape[-1]
    else:
      misshaped.append(f"{key} {tensors[key].shape} (expected {_torch_shape(abstract.shape)})")
  # Only a whole classifier for one other class count is replaced; anything else is an error.
  num_head_leaves = sum(path[1] == "head" for path in expected)
  if head_classes and (
      len(head_classes) < num_head_leaves or len(set(head_classes.values())) > 1
  ):
    misshaped += [f"{key} {tensors[key].shape} (classifier)" for key in head_classes]
    head_classes = {}
  unexpected = set(tensors) - consumed
  kinds = {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}
  problems = [
      f"{len(keys)} {kind} tensors: {', '.join(sorted(keys))}"
      for kind, keys in kinds.items()
      if keys
  ]
  return flat, next(iter(head_classes.values()), None), problems


def import_weights(
    name: str, path: str | os.PathLike, *, num_classes: int, seed: int = 0, feature_dim: int = 0
) -> dict[str, dict]:
  """Reads a timm / torchvision safetensors checkpoint as variables of ``get_model(name)``.

  Every tensor of the file must land in the model and every model variable must come from the
  file. A classifier trained for another number of classes (same feature width) is replaced by
  the model's own initialisation from ``jax.random.key(seed)``, and a warning says so. With
  ``feature_dim`` (OLTR's ``use_fc`` layer, which published checkpoints lack) the file fills the
  backbone only: the feature layer and the classifier behind it come from that initialisation
  and the file's classifier is left unused.

  Args:
    name: one of ``IMPORTABLE_MODELS`` (``'tresnet_m'``, ``'resnet50'``, ``'resnet152'``).
    path: ``.safetensors`` file (local or ``gs://...``) in the naming of the table in the module
      docstring.
    num_classes: output logits of the model the variables are for.
    seed: key seed of the re-initialised classifier (and feature layer), if there is one.
    feature_dim: the model's feature layer width (``get_model``'s); 0 for none.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` with exactly the tree structure and shapes of
    ``get_model(name, num_classes=num_classes).init(...)``, as float32 arrays.

  Raises:
    ValueError: for a model without a checkpoint naming, or a file whose tensors do not fit the
      model; one message lists every missing, unexpected and mis-shaped tensor.
    FileNotFoundError: if ``path`` does not exist.

  Examples:
    >>> import os, tempfile, numpy as np, safetensors.numpy
    >>> path = os.path.join(tempfile.mkdtemp(), 'resnet50.safetensors')
    >>> safetensors.numpy.save_file({'fc.weight': np.zeros((1000, 2048), np.float32)}, path)
    >>> import_weights('resnet50', path, num_classes=1000)
    Traceback (most recent call last):
    ...
    ValueError: .../resnet50.safetensors does not fit resnet50: 266 missing tensors: bn1.bias, ...

  References:
    timm checkpoints: https://huggingface.co/timm/tresnet_m.miil_in1k;
    torchvision: https://pytorch.org/vision/stable/models/resnet.html.
  """
  if name not in _CHECKPOINT_NAMING:
    raise ValueError(
        f"No checkpoint naming for model {name!r}; "
        f"importable models: {', '.join(IMPORTABLE_MODELS)}."
    )
  if not store.as_path(path).is_file():
    raise FileNotFoundError(f"No weights file at {os.fspath(path)!r}; {name}'s ImageNet weights "
                            f"are {WEIGHTS_SOURCES[name]}.")
  model = models.get_model(name, num_classes=num_classes, feature_dim=feature_dim)
  images = jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3))
  init = lambda: model.init(jax.random.key(seed), images, train=False)
  expected = traverse_util.flatten_dict(jax.eval_shape(init))
  tensors = safetensors.numpy.load(store.as_path(path).read_bytes())
  fresh: tuple[str, ...] = ()  # top-level modules taken from the model's initialisation
  if feature_dim:
    fresh = (layers.FEATURE_MODULE, "head")
    expected = {key: value for key, value in expected.items() if key[1] not in fresh}
    file_head = _CHECKPOINT_NAMING[name](("head", "dense")) + "."
    tensors = {key: value for key, value in tensors.items() if not key.startswith(file_head)}
    logging.warning("%s: new feature layer (%d) and classifier, initialised (seed %d); the "
                    "backbone is from %s.", name, feature_dim, seed, os.fspath(path))
  flat, file_classes, problems = _match(expected, tensors, _CHECKPOINT_NAMING[name])
  if problems:
    raise ValueError(f"{os.fspath(path)} does not fit {name}: {'; '.join(problems)}.")
  if file_classes is not None:
    logging.warning(
        "%s: the classifier in %s has %d classes, the model %d; re-initialised it (seed %d).",
        name, os.fspath(path), file_classes, num_classes, seed,
    )
    fresh = ("head",)
  if fresh:
    # Under jit, XLA drops everything these modules' initial values do not depend on.
    initial = jax.jit(lambda: {module: init()["params"][module] for module in fresh})()
    flat.update(traverse_util.flatten_dict({"params": initial}))
  logging.info("%s: imported %d tensors from %s.", name, len(tensors), os.fspath(path))
  variables = traverse_util.unflatten_dict(flat)
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
