"""Residual networks (He et al., 2016) for CIFAR- and ImageNet-sized images.

One generic :class:`ResNet` is configured by a stage spec (blocks per stage, stage widths), a
block type (:class:`BasicBlock` or :class:`BottleneckBlock`), a stem and a shortcut option::

  name            block       blocks per stage  widths          stem      shortcut
  ResNet20/32/56  basic       (n, n, n)         16, 32, 64      cifar     A
  ResNet18CIFAR   basic       (2, 2, 2, 2)      64, 128, ..512  cifar     B
  ResNet10        basic       (1, 1, 1, 1)      64, 128, ..512  imagenet  B
  ResNet50        bottleneck  (3, 4, 6, 3)      64, 128, ..512  imagenet  B
  ResNet152       bottleneck  (3, 8, 36, 3)     64, 128, ..512  imagenet  B

with n = 3, 5, 9 for depth 6n + 2 = 20, 32, 56. The ``cifar`` stem is one 3x3 convolution at
stride 1 (no max-pool); the ``imagenet`` stem is a 7x7 convolution at stride 2 and a 3x3 max-pool
at stride 2. Every stage after the first halves the resolution in its first block.

Shortcuts where shape changes: option ``A`` (the paper's CIFAR networks) subsamples and pads the
new channels with zeros, adding no parameters; option ``B`` projects with a 1x1 convolution and
BatchNorm (the ImageNet networks, torchvision); option ``D`` (ResNet-D, He et al. 2019; used by
TResNet) average-pools before a stride-1 1x1 convolution and BatchNorm. Bottleneck blocks stride in
their 3x3 convolution ("ResNet v1.5", as torchvision). Parameter counts equal the published
ones: ResNet-20/32/56 0.27M / 0.46M / 0.85M and ResNet-18-CIFAR 11.2M (10 classes); ResNet-10
5.4M, ResNet-50 25.6M and ResNet-152 60.2M (1000 classes).

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  https://arxiv.org/abs/1512.03385 (CIFAR networks: section 4.2).
  Liu, Miao, Zhan, Wang, Gong, Yu, "Large-Scale Long-Tailed Recognition in an Open World"
  (OLTR), CVPR 2019, https://arxiv.org/abs/1904.05160 (ResNet-10 backbone for ImageNet-LT).
  He, Zhang, Zhang, Zhang, Xie, Li, "Bag of Tricks for Image Classification with Convolutional
  Neural Networks", CVPR 2019, https://arxiv.org/abs/1812.01187 (ResNet-D shortcut, option D).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfl_jax.models import layers

ModuleDef = Callable[..., nn.Module]


class Shortcut(nn.Module):
  """Shortcut connection: identity, or option A / option B where the block changes shape.

  Attributes:
    features: output channels.
    strides: spatial stride of the block.
    option: ``'A'`` (subsample and zero-pad channels), ``'B'`` (strided 1x1 convolution +
      BatchNorm) or ``'D'`` (``strides`` x ``strides`` average pool in PyTorch's ceil mode, not
      counting the padding, then a stride-1 1x1 convolution + BatchNorm).
    conv: convolution factory (:func:`layers.conv_factory`).
    norm: BatchNorm factory (:func:`layers.norm_factory`).
  """

  features: int
  strides: int
  option: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[batch, H, W, C]`` to ``[batch, ceil(H / strides), ceil(W / strides), features]``."""
    if self.strides == 1 and x.shape[-1] == self.features:
      return x
    if self.option == "A":
      x = x[:, :: self.strides, :: self.strides, :]
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
    if self.option == "B":
      return self.norm(name="bn")(self.conv(self.features, 1, self.strides, name="conv")(x))
    if self.option == "D":
      if self.strides > 1:
        window = (self.strides, self.strides)
        ceil_padding = [(0, -size % self.strides) for size in x.shape[1:3]]
        x = nn.avg_pool(x, window, window, ceil_padding, count_include_pad=False)
      return self.norm(name="bn")(self.conv(self.features, 1, name="conv")(x))
    raise ValueError(f"Unknown shortcut option {self.option!r}; expected 'A', 'B' or 'D'.")


class ResidualBlock(nn.Module):
  """``relu(branch(x) + shortcut(x))``; subclasses define the branch and its channel expansion.

  Attributes:
    width: channels of the branch's inner convolutions; the output has ``expansion * width``.
    strides: spatial stride of the block.
    shortcut: option ``'A'``, ``'B'`` or ``'D'``, see :class:`Shortcut`.
    conv: convolution factory (:func:`layers.conv_factory`).
    norm: BatchNorm factory (:func:`layers.norm_factory`).
  """

  expansion: ClassVar[int]
  width: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[batch, H, W, C]`` to ``[batch, ceil(H / s), ceil(W / s), expansion * width]``."""
    features = self.expansion * self.width
    shortcut = Shortcut(
        features, self.strides, self.shortcut, self.conv, self.norm, name="shortcut"
    )
    return nn.relu(self.branch(x) + shortcut(x))

  def branch(self, x: jax.Array) -> jax.Array:
    """The residual branch, without the final ReLU; called inside ``__call__``."""
    raise NotImplementedError


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions (the first strided) with BatchNorm; ``expansion = 1``."""

  expansion: ClassVar[int] = 1

  def branch(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.norm(name="bn1")(self.conv(self.width, 3, self.strides, name="conv1")(x)))
    return self.norm(name="bn2")(self.conv(self.width, 3, name="conv2")(y))


class BottleneckBlock(ResidualBlock):
  """1x1 reduce, 3x3 (strided), 1x1 expand, each with BatchNorm; ``expansion = 4``."""

  expansion: ClassVar[int] = 4

  def branch(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.norm(name="bn1")(self.conv(self.width, 1, name="conv1")(x)))
    y = nn.relu(self.norm(name="bn2")(self.conv(self.width, 3, self.strides, name="conv2")(y)))
    return self.norm(name="bn3")(self.conv(self.expansion * self.width, 1, name="conv3")(y))


# stem name -> (kernel size, stride, followed by a 3x3 stride-2 max-pool)
_STEMS = {"cifar": (3, 1, False), "imagenet": (7, 2, True)}


class ResNet(nn.Module):
  """Generic residual network: stem, stages of residual blocks, global mean pool, dense head.

  Attributes:
    stage_sizes: number of blocks in each stage.
    widths: block width of each stage (the stem has ``widths[0]`` channels).
    block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
    stem: ``'cifar'`` (3x3 convolution, stride 1) or ``'imagenet'`` (7x7 stride 2 + max-pool).
    shortcut: option ``'A'`` or ``'B'``, see :class:`Shortcut`.
    num_classes: number of output logits.
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.
    feature_dim: width of a dense + ReLU feature layer between the pooled features and the
      classifier (OLTR's ``use_fc``, see :func:`layers.classify`); 0 for none.

  Parameters are named ``stem_conv``, ``stem_bn``, ``stage{i}_block{j}`` (from 1), ``features``
  (with ``feature_dim``) and ``head`` (the classifier, :class:`layers.ClassifierHead`), so an
  optimizer can treat the classifier apart from the backbone.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet(stage_sizes=(1,), widths=(4,), block_cls=BasicBlock, stem='cifar',
    ...                shortcut='A', num_classes=10)  # tiny; ResNet20 and others are presets
    >>> x = jnp.zeros((2, 8, 8, 3))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    >>> logits.shape, sorted(updates)
    ((2, 10), ['batch_stats'])
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block_cls: type[ResidualBlock]
  stem: str
  shortcut: str
  num_classes: int
  dtype: Any = jnp.float32
  feature_dim: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images ``[batch, H, W, C]`` to float32 logits ``[batch, num_classes]``."""
    conv = layers.conv_factory(self.dtype)
    norm = layers.norm_factory(self.dtype, train=train)
    if self.stem not in _STEMS:
      raise ValueError(f"Unknown stem {self.stem!r}; expected one of {sorted(_STEMS)}.")
    kernel_size, strides, max_pool = _STEMS[self.stem]
    x = conv(self.widths[0], kernel_size, strides, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    if max_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        name = f"stage{i + 1}_block{j + 1}"
        x = self.block_cls(width, strides, self.shortcut, conv, norm, name=name)(x)
    return layers.classify(x, num_classes=self.num_classes, dtype=self.dtype,
                           feature_dim=self.feature_dim)


_CIFAR: dict[str, Any] = dict(widths=(16, 32, 64), block_cls=BasicBlock, stem="cifar",
                              shortcut="A")
_IMAGENET: dict[str, Any] = dict(widths=(64, 128, 256, 512), stem="imagenet", shortcut="B")

ResNet20 = functools.partial(ResNet, stage_sizes=(3, 3, 3), **_CIFAR)
ResNet32 = functools.partial(ResNet, stage_sizes=(5, 5, 5), **_CIFAR)
ResNet56 = functools.partial(ResNet, stage_sizes=(9, 9, 9), **_CIFAR)
ResNet18CIFAR = functools.partial(
    ResNet,
    stage_sizes=(2, 2, 2, 2),
    widths=(64, 128, 256, 512),
    block_cls=BasicBlock,
    stem="cifar",
    shortcut="B",
)
ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, **_IMAGENET)
ResNet50 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, **_IMAGENET
)
ResNet152 = functools.partial(
    ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock, **_IMAGENET
)
