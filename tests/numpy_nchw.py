"""Independent numpy (float64) versions of PyTorch's NCHW layers, as oracles for the model tests.

Each function follows the PyTorch / timm operation named in its docstring, written from their
definitions and not from cfl_jax, on ``[N, C, H, W]`` arrays.
"""

import numpy as np

BN_EPS = 1e-5


def _windows(x, size, stride):
  """``[N, C, H', W', size, size]`` sliding windows of an already padded ``x``."""
  windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(2, 3))
  return windows[:, :, ::stride, ::stride]


def conv(x, weight, stride=1, bias=None):
  """``Conv2d`` with padding ``kernel // 2``; ``weight [out, in, kh, kw]``."""
  pad = weight.shape[-1] // 2
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  out = np.einsum("nchwij,ocij->nohw", _windows(x, weight.shape[-1], stride), weight)
  return out if bias is None else out + bias[None, :, None, None]


def batch_norm(x, weight, bias, running_mean, running_var):
  """``BatchNorm2d`` in eval mode (running statistics, eps 1e-5)."""
  per_channel = lambda v: np.asarray(v, np.float64)[None, :, None, None]
  normalised = (x - per_channel(running_mean)) / np.sqrt(per_channel(running_var) + BN_EPS)
  return normalised * per_channel(weight) + per_channel(bias)


def leaky_relu(x, slope):
  return np.where(x >= 0, x, slope * x)


def relu(x):
  return np.maximum(x, 0)


def max_pool_3x3_stride_2(x):
  """``MaxPool2d(3, 2, padding=1)``."""
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  return _windows(x, 3, 2).max(axis=(4, 5))


def space_to_depth(x):
  """timm's ``SpaceToDepth(4)``: view, permute ``(0, 3, 5, 1, 2, 4)``, view."""
  n, c, h, w = x.shape
  x = x.reshape(n, c, h // 4, 4, w // 4, 4).transpose(0, 3, 5, 1, 2, 4)
  return x.reshape(n, 16 * c, h // 4, w // 4)


def blur_pool(x):
  """timm's ``BlurPool2d(filt_size=3, stride=2)``: reflect pad 1, depthwise binomial filter."""
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
  taps = np.array([1.0, 2.0, 1.0]) / 4
  return np.einsum("nchwij,ij->nchw", _windows(x, 3, 2), np.outer(taps, taps))


def avg_pool_2x2_ceil(x):
  """``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``."""
  n, c, h, w = x.shape
  x = np.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2)), constant_values=np.nan)
  return np.nanmean(x.reshape(n, c, (h + 1) // 2, 2, (w + 1) // 2, 2), axis=(3, 5))


def to_nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def to_nchw(x):
  return np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))
