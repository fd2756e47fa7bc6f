"""Synthetic PyTorch checkpoints with the real key lists (``tests/data/checkpoint_keys_*.json``)."""

import json
import pathlib

import numpy as np

_DATA = pathlib.Path(__file__).with_name("data")


def key_shapes(name: str) -> dict[str, list[int]]:
  """State-dict key -> PyTorch shape of timm's / torchvision's checkpoint of model ``name``."""
  return json.loads((_DATA / f"checkpoint_keys_{name}.json").read_text())


def random_tensors(name: str, seed: int = 0) -> dict[str, np.ndarray]:
  """Random tensors for every key, scaled so activations stay of order one."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for key, shape in key_shapes(name).items():
    if key.endswith("num_batches_tracked"):
      tensors[key] = np.array(100, np.int64)
    elif key.endswith(("running_var", "bn.weight", "bn1.weight", "bn2.weight", "bn3.weight",
                       "downsample.1.weight")):
      tensors[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith("weight"):
      fan_in = int(np.prod(shape[1:]))
      tensors[key] = (rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)).astype(np.float32)
    else:  # biases and running means
      tensors[key] = (0.1 * rng.standard_normal(shape, np.float32)).astype(np.float32)
  return tensors
