"""TResNet-M (Ridnik et al., 2021), as timm defines ``tresnet_m``.

A residual network built for GPU throughput::

  stem     space-to-depth (4x4 blocks -> 48 channels), 3x3 conv 48 -> 64, BatchNorm, LeakyReLU(0.01)
  stage 1  3 x basic block,      64 channels, squeeze-excitation (SE)
  stage 2  4 x basic block,     128 channels, SE, first block halves the resolution
  stage 3  11 x bottleneck,  256 x 4 channels, SE, first block halves the resolution
  stage 4  3 x bottleneck,   512 x 4 channels, no SE, first block halves the resolution
  head     global mean pool, dense layer over 2048 features

Inside a block every convolution has stride 1 and is followed by BatchNorm and LeakyReLU(1e-3)
(none after the last one); where a block halves the resolution, a fixed 3x3 binomial blur with
stride 2 (:func:`blur_pool`, "anti-aliased downsampling") follows the 3x3 convolution. SE sits
after the second convolution of a basic block and after the 3x3 convolution of a bottleneck; its
reduction width is ``max(width // 4, 64)`` (basic) or ``max(width // 2, 64)`` (bottleneck). The
shortcut is option ``'D'`` of :class:`resnet.Shortcut` (2x2 average pool, then 1x1 convolution and
BatchNorm); ReLU follows the sum. The last BatchNorm scale of each residual branch starts at zero.
Initialisation otherwise follows timm (He normal over fan-out for every convolution) except the
classifier, which is the package's shared :class:`layers.ClassifierHead` (LeCun normal kernel,
where timm draws from N(0, 0.01)).

At 1,000 classes the model has 31,389,032 parameters, as timm's ``tresnet_m`` (BatchNorm scale and
bias included, running statistics excluded). Inputs are images in [0, 1] (timm's mean 0, std 1),
with height and width multiples of 4 and at least :data:`MIN_INPUT_SIZE` (224 in the papers).

Original TResNet checkpoints used InPlaceABN; timm converts them to BatchNorm with
``weight = |weight| + 1e-5`` when loading, and its safetensors files hold the converted weights,
which :func:`cfl_jax.models.import_weights` reads as they are.

References:
  Ridnik, Lawen, Noy, Ben Baruch, Sharir, Friedman, "TResNet: High Performance GPU-Dedicated
  Architecture", WACV 2021, https://arxiv.org/abs/2003.13630.
  Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019,
  https://arxiv.org/abs/1904.11486 (blur pooling).
  timm ``timm/models/tresnet.py``, https://github.com/huggingface/pytorch-image-models.
"""

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfl_jax.models import layers
from cfl_jax.models.resnet import ResidualBlock

# Smallest height / width that keeps every blur pool's reflect padding valid (each stage input at
# least 2 pixels): 20 -> 5 after space-to-depth -> 3 -> 2 -> 1.
MIN_INPUT_SIZE = 20

_BLOCK_SLOPE = 1e-3  # LeakyReLU inside the residual branches
_STEM_SLOPE = 1e-2  # LeakyReLU after the stem convolution (PyTorch's default slope)


def space_to_depth(x: jax.Array, block_size: int = 4) -> jax.Array:
  """Moves each ``block_size`` x ``block_size`` patch into channels, in timm's channel order.

  Args:
    x: images ``[batch, H, W, C]`` with H and W multiples of ``block_size``.
    block_size: patch side.

  Returns:
    ``[batch, H / block_size, W / block_size, block_size**2 * C]``; output channel
    ``(i * block_size + j) * C + c`` holds input pixel ``(block_size * h + i, block_size * w + j)``
    of channel ``c``.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> space_to_depth(x)[0, 0, 0].tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
  """
  batch, height, width, channels = x.shape
  if height % block_size or width % block_size:
    raise ValueError(
        f"space_to_depth needs height and width divisible by {block_size}, got {height}x{width}."
    )
  x = x.reshape(batch, height // block_size, block_size, width // block_size, block_size, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, height // block_size, width // block_size, block_size**2 * channels)


def blur_pool(x: jax.Array) -> jax.Array:
  """Halves the resolution with a fixed 3x3 binomial blur (``[1, 2, 1]`` outer product / 16).

  Each channel is blurred on its own after one pixel of reflect padding, then sampled with
  stride 2, as timm's ``BlurPool2d(filt_size=3, stride=2)``.

  Args:
    x: features ``[batch, H, W, C]`` with H, W >= 2.

  Returns:
    ``[batch, ceil(H / 2), ceil(W / 2), C]`` in the dtype of ``x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> blur_pool(jnp.ones((1, 5, 6, 3))).shape
    (1, 3, 3, 3)
  """
  height, width, channels = x.shape[1:]
  if min(height, width) < 2:
    raise ValueError(
        f"blur_pool needs feature maps of at least 2x2 for reflect padding, got {height}x{width}; "
        f"TResNet inputs must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}."
    )
  taps = jnp.array([1.0, 2.0, 1.0], x.dtype) / 4
  kernel = jnp.tile((taps[:, None] * taps[None, :])[:, :, None, None], (1, 1, 1, channels))
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(2, 2),
      padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels,
  )


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation: channels scaled by ``sigmoid(fc2(relu(fc1(mean over H, W))))``.

  ``fc1`` and ``fc2`` are 1x1 convolutions with bias, as in timm's ``SEModule``.

  Attributes:
    reduced: channels between ``fc1`` and ``fc2``.
    dtype: compute dtype; parameters are float32.
  """

  reduced: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[batch, H, W, C]`` to the same shape."""
    fc = functools.partial(
        nn.Conv, kernel_size=(1, 1), kernel_init=layers.he_normal, dtype=self.dtype,
        param_dtype=jnp.float32,
    )
    gate = jnp.mean(x, axis=(1, 2), keepdims=True)
    gate = nn.relu(fc(self.reduced, name="fc1")(gate))
    gate = nn.sigmoid(fc(x.shape[-1], name="fc2")(gate))
    return x * gate


class TResNetBlock(ResidualBlock):
  """A TResNet residual block; subclasses arrange the helpers below in ``branch``.

  Attributes (besides :class:`resnet.ResidualBlock`'s):
    use_se: apply :class:`SqueezeExcite` in the branch.
    dtype: compute dtype of the SE module.
  """

  se_divisor: ClassVar[int]
  use_se: bool = True
  dtype: Any = jnp.float32

  def conv_norm_act(self, x: jax.Array, features: int, kernel_size: int, index: int) -> jax.Array:
    """``conv{index}`` (stride 1), ``bn{index}``, LeakyReLU(1e-3)."""
    x = self.conv(features, kernel_size, name=f"conv{index}")(x)
    return nn.leaky_relu(self.norm(name=f"bn{index}")(x), _BLOCK_SLOPE)

  def conv_norm_last(self, x: jax.Array, features: int, kernel_size: int, index: int) -> jax.Array:
    """The branch's last ``conv{index}`` and ``bn{index}``, whose scale starts at zero."""
    x = self.conv(features, kernel_size, name=f"conv{index}")(x)
    return self.norm(name=f"bn{index}", scale_init=nn.initializers.zeros)(x)

  def downsample(self, x: jax.Array) -> jax.Array:
    """Blur pool where the block halves the resolution, identity otherwise."""
    return blur_pool(x) if self.strides == 2 else x

  def squeeze_excite(self, x: jax.Array) -> jax.Array:
    """SE with ``max(width // se_divisor, 64)`` reduced channels, if ``use_se``."""
    if not self.use_se:
      return x
    return SqueezeExcite(max(self.width // self.se_divisor, 64), self.dtype, name="se")(x)


class TResNetBasicBlock(TResNetBlock):
  """3x3 conv-norm-act (+ blur pool), 3x3 conv-norm, SE; ``expansion = 1``."""

  expansion: ClassVar[int] = 1
  se_divisor: ClassVar[int] = 4

  def branch(self, x: jax.Array) -> jax.Array:
    y = self.downsample(self.conv_norm_act(x, self.width, 3, 1))
    return self.squeeze_excite(self.conv_norm_last(y, self.width, 3, 2))


class TResNetBottleneck(TResNetBlock):
  """1x1 conv-norm-act, 3x3 conv-norm-act (+ blur pool), SE, 1x1 conv-norm; ``expansion = 4``."""

  expansion: ClassVar[int] = 4
  se_divisor: ClassVar[int] = 2

  def branch(self, x: jax.Array) -> jax.Array:
    y = self.conv_norm_act(x, self.width, 1, 1)
    y = self.squeeze_excite(self.downsample(self.conv_norm_act(y, self.width, 3, 2)))
    return self.conv_norm_last(y, self.expansion * self.width, 1, 3)


class TResNet(nn.Module):
  """TResNet: space-to-depth stem, four stages of anti-aliased residual blocks, dense head.

  Attributes:
    stage_sizes: number of blocks in each stage.
    widths: block width of each stage (the stem has ``widths[0]`` channels).
    block_types: block class of each stage.
    se_stages: whether each stage uses squeeze-excitation.
    num_classes: number of output logits.
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.
    feature_dim: width of a dense + ReLU feature layer between the pooled features and the
      classifier (OLTR's ``use_fc``, see :func:`layers.classify`); 0 for none.

  Parameters are named ``stem_conv``, ``stem_bn``, ``stage{i}_block{j}`` (from 1) and ``head``,
  as in :class:`resnet.ResNet`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = TResNetM(num_classes=10)
    >>> x = jnp.zeros((1, 32, 32, 3))
    >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
    (1, 10)
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block_types: Sequence[type[TResNetBlock]]
  se_stages: Sequence[bool]
  num_classes: int
  dtype: Any = jnp.float32
  feature_dim: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images ``[batch, H, W, C]`` to float32 logits ``[batch, num_classes]``."""
    height, width = x.shape[1:3]
    if height % 4 or width % 4 or min(height, width) < MIN_INPUT_SIZE:
      raise ValueError(
          f"TResNet needs height and width that are multiples of 4 and at least {MIN_INPUT_SIZE}, "
          f"got {height}x{width}."
      )
    conv = layers.conv_factory(self.dtype)
    norm = layers.norm_factory(self.dtype, train=train)
    x = conv(self.widths[0], 3, name="stem_conv")(space_to_depth(x))
    x = nn.leaky_relu(norm(name="stem_bn")(x), _STEM_SLOPE)
    stages = zip(self.stage_sizes, self.widths, self.block_types, self.se_stages, strict=True)
    for i, (num_blocks, stage_width, block_cls, use_se) in enumerate(stages):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(
            stage_width, strides, "D", conv, norm, use_se, self.dtype,
            name=f"stage{i + 1}_block{j + 1}",
        )(x)
    return layers.classify(x, num_classes=self.num_classes, dtype=self.dtype,
                           feature_dim=self.feature_dim)


TResNetM = functools.partial(
    TResNet,
    stage_sizes=(3, 4, 11, 3),
    widths=(64, 128, 256, 512),
    block_types=(TResNetBasicBlock, TResNetBasicBlock, TResNetBottleneck, TResNetBottleneck),
    se_stages=(True, True, True, False),
)
