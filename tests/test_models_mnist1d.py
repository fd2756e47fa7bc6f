"""Tests of the MNIST-1D baselines against numpy re-implementations of the PyTorch definitions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfl_jax.models import get_model

NAMES = ("mnist1d_cnn", "mnist1d_mlp", "mnist1d_logistic")

# Parameter counts of greydanus/mnist1d notebooks/models.py at 10 classes, by hand:
#   ConvBase:   Conv1d(1, 25, 5) + Conv1d(25, 25, 3) x 2 + Linear(125, 10)
#   MLPBase:    Linear(40, 100) + Linear(100, 100) + Linear(100, 10)
#   LinearBase: Linear(40, 10)
PUBLISHED_PARAMETERS = {
    "mnist1d_cnn": (1 * 5 * 25 + 25) + 2 * (25 * 3 * 25 + 25) + (125 * 10 + 10),  # 5,210
    "mnist1d_mlp": (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10),  # 15,210
    "mnist1d_logistic": 40 * 10 + 10,  # 410
}


def _signals(batch=3, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, 40, 1))


@functools.cache
def _params(name):
  model = get_model(name, num_classes=10)
  return model, jax.jit(lambda key: model.init(key, _signals(), train=False))(
      jax.random.key(1))["params"]


def _conv1d(x, kernel, bias, stride=2, padding=1):
  """PyTorch Conv1d on ``[batch, length, channels]`` with a ``[k, in, out]`` kernel."""
  x = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
  k = kernel.shape[0]
  length = (x.shape[1] - k) // stride + 1
  return np.stack([np.einsum("bkc,kco->bo", x[:, i * stride:i * stride + k], kernel)
                   for i in range(length)], axis=1) + bias


def _numpy_forward(name, params, x):
  relu = lambda v: np.maximum(v, 0.0)
  p = jax.tree.map(np.asarray, params)
  x = np.asarray(x, np.float64)
  if name == "mnist1d_cnn":
    for layer in ("conv1", "conv2", "conv3"):
      x = relu(_conv1d(x, p[layer]["kernel"], p[layer]["bias"]))
    assert x.shape[1:] == (5, 25)  # lengths 40 -> 19 -> 10 -> 5, as the PyTorch model's
    return x.reshape(len(x), -1) @ p["dense"]["kernel"] + p["dense"]["bias"]
  x = x.reshape(len(x), -1)
  if name == "mnist1d_logistic":
    return x @ p["dense"]["kernel"] + p["dense"]["bias"]
  h = relu(x @ p["dense1"]["kernel"] + p["dense1"]["bias"])
  h = h + relu(h @ p["dense2"]["kernel"] + p["dense2"]["bias"])
  return h @ p["dense3"]["kernel"] + p["dense3"]["bias"]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_equal_the_published_models(name):
  _, params = _params(name)
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("name", NAMES)
def test_forward_pass_is_the_published_architecture(name):
  model, params = _params(name)
  x = _signals()
  logits = jax.jit(lambda p: model.apply({"params": p}, x, train=True))(params)
  np.testing.assert_allclose(logits, _numpy_forward(name, params, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_output_shape_and_dtype(name, dtype):
  model = get_model(name, num_classes=7, dtype=dtype)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), _signals(), train=False))
  logits = jax.eval_shape(lambda v: model.apply(v, _signals(batch=5), train=False), variables)
  assert logits.shape == (5, 7) and logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert set(variables) == {"params"}  # no BatchNorm statistics


@pytest.mark.parametrize("name", NAMES)
def test_initialisation_is_pytorchs_uniform_over_fan_in(name):
  _, params = _params(name)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    layer = params[path[0].key]
    fan_in = int(np.prod(layer["kernel"].shape[:-1]))  # kernel [..., in, out]
    bound = fan_in**-0.5
    assert np.abs(leaf).max() <= bound, path
    assert np.abs(leaf).max() > 0.5 * bound, path  # biases too are drawn, not zero


def test_cnn_rejects_unbatched_or_flat_signals():
  model = get_model("mnist1d_cnn", num_classes=10)
  with pytest.raises(ValueError, match=r"signals \[batch, length, channels\], got shape \(3, 40\)"):
    model.init(jax.random.key(0), jnp.zeros((3, 40)), train=False)
