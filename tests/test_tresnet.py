"""Tests of cfl_jax.models.tresnet: TResNet-M's size and shapes, its layers against numpy (NCHW).

The numpy references follow timm's PyTorch definitions (NCHW layout), so they check the NHWC Flax
code against the layout the pretrained weights were trained in.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfl_jax.models import get_model, layers, resnet, tresnet

import numpy_nchw as nchw

# Parameters of timm's tresnet_m at 1,000 classes, counted by hand from timm/models/tresnet.py
# (conv weights out*in*k*k, BatchNorm weight + bias, SE fc1 / fc2 with bias, fc weight + bias):
#   stem    48*64*9 + 2*64                                                          =     27,776
#   stage1  3 * (2 * (64*64*9 + 128) + 2 * 64*64 + 64 + 64)                         =    246,912
#   stage2  block 1: 64*128*9 + 128*128*9 + 4*128 + SE(128 -> 64) 16,576
#                    + shortcut 64*128 + 256 = 246,720; blocks 2-4: 3 * 312,000     =  1,182,720
#   stage3  block 1: 1,086,848 (with shortcut 128*1024 + 2,048); blocks 2-11: 10 * 1,183,104
#           (1024*256 + 256*256*9 + 256*1024 + BN 3,072 + SE(256 -> 128) 65,920)   = 12,917,888
#   stage4  block 1: 6,039,552; blocks 2-3: 2 * 4,462,592 (no SE)                  = 14,964,736
#   head    2048*1000 + 1000                                                        =  2,049,000
#   total                                                                           = 31,389,032
_TIMM_COUNTS = {
    "stem": 27_776,
    "stage1": 246_912,
    "stage2": 1_182_720,
    "stage3": 12_917_888,
    "stage4": 14_964_736,
    "head": 2_049_000,
}


def _abstract_variables(model, size):
  x = jnp.zeros((2, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def test_parameter_count_equals_timm_tresnet_m():
  params = _abstract_variables(get_model("tresnet_m", num_classes=1000), 224)["params"]
  counts = dict.fromkeys(_TIMM_COUNTS, 0)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    top = path[0].key
    group = "stem" if top.startswith("stem") else top.split("_")[0]
    counts[group] += int(np.prod(leaf.shape))
  assert counts == _TIMM_COUNTS
  assert sum(counts.values()) == 31_389_032


def test_stage_shapes_at_224():
  model = get_model("tresnet_m", num_classes=1000, dtype="bfloat16")
  x = jnp.zeros((2, 224, 224, 3))
  variables = _abstract_variables(model, 224)
  logits, state = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, capture_intermediates=True,
                            mutable=["intermediates", "batch_stats"]),
      variables,
  )
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  stage_outputs = {
      name: state["intermediates"][name]["__call__"][0]
      for name in ("stem_bn", "stage1_block3", "stage2_block4", "stage3_block11", "stage4_block3")
  }
  assert {name: out.shape[1:] for name, out in stage_outputs.items()} == {
      "stem_bn": (56, 56, 64),
      "stage1_block3": (56, 56, 64),
      "stage2_block4": (28, 28, 128),
      "stage3_block11": (14, 14, 1024),
      "stage4_block3": (7, 7, 2048),
  }
  assert {out.dtype for out in stage_outputs.values()} == {jnp.dtype(jnp.bfloat16)}
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_squeeze_excite_widths_follow_timm():
  """SE in stages 1-3 only, reduced to max(width // 4, 64) (basic) / max(width // 2, 64)."""
  params = _abstract_variables(get_model("tresnet_m", num_classes=10), 32)["params"]
  reduced = {
      name: params[name]["se"]["fc1"]["kernel"].shape[2:]
      for name in ("stage1_block1", "stage2_block2", "stage3_block5")
  }
  assert reduced == {"stage1_block1": (64, 64), "stage2_block2": (128, 64),
                     "stage3_block5": (256, 128)}
  assert "se" not in params["stage4_block1"]
  assert "shortcut" not in params["stage1_block1"]  # 64 -> 64 at stride 1: identity


def test_smallest_input_runs_and_smaller_ones_are_refused():
  model = get_model("tresnet_m", num_classes=10)
  variables = _abstract_variables(model, tresnet.MIN_INPUT_SIZE)
  x = jnp.zeros((1, tresnet.MIN_INPUT_SIZE, tresnet.MIN_INPUT_SIZE, 3))
  assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (1, 10)
  for size in (16, 30):
    with pytest.raises(ValueError, match=f"multiples of 4 and at least 20, got {size}x{size}"):
      _abstract_variables(model, size)


def test_space_to_depth_matches_timm_channel_order():
  x = np.random.default_rng(0).normal(size=(2, 3, 8, 12)).astype(np.float32)
  got = tresnet.space_to_depth(jnp.asarray(nchw.to_nhwc(x)))
  np.testing.assert_array_equal(got, nchw.to_nhwc(nchw.space_to_depth(x)))


@pytest.mark.parametrize("size", [(8, 8), (7, 5), (2, 3)])
def test_blur_pool_matches_timm(size):
  x = np.random.default_rng(1).normal(size=(2, 3, *size))
  got = tresnet.blur_pool(jnp.asarray(nchw.to_nhwc(x), jnp.float32))
  np.testing.assert_allclose(got, nchw.to_nhwc(nchw.blur_pool(x)), rtol=1e-5, atol=1e-6)


def test_blur_pool_keeps_dtype_and_refuses_single_pixels():
  assert tresnet.blur_pool(jnp.ones((1, 4, 4, 2), jnp.bfloat16)).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="at least 2x2"):
    tresnet.blur_pool(jnp.ones((1, 1, 4, 2)))


def test_option_d_shortcut_pools_in_ceil_mode_without_padding():
  """AvgPool2d(2, ceil_mode=True, count_include_pad=False) then 1x1 conv and BatchNorm."""
  x = np.random.default_rng(2).normal(size=(2, 3, 5, 7))
  shortcut = resnet.Shortcut(
      4, 2, "D", layers.conv_factory(jnp.float32), layers.norm_factory(jnp.float32, train=False)
  )
  images = jnp.asarray(nchw.to_nhwc(x), jnp.float32)
  variables = shortcut.init(jax.random.key(0), images)
  got = shortcut.apply(variables, images)
  kernel = np.asarray(variables["params"]["conv"]["kernel"]).transpose(3, 2, 0, 1)
  fresh_bn = (np.ones(4), np.zeros(4), np.zeros(4), np.ones(4))  # scale, bias, mean, var
  expected = nchw.batch_norm(nchw.conv(nchw.avg_pool_2x2_ceil(x), kernel), *fresh_bn)
  np.testing.assert_allclose(got, nchw.to_nhwc(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_cls", [tresnet.TResNetBasicBlock, tresnet.TResNetBottleneck])
def test_fresh_blocks_start_as_identity(block_cls):
  """The last BatchNorm scale of each branch starts at zero, so a block starts as relu(x)."""
  width = 8
  features = block_cls.expansion * width
  block = block_cls(
      width, 1, "D", layers.conv_factory(jnp.float32),
      layers.norm_factory(jnp.float32, train=True), use_se=True,
  )
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, features))
  variables = block.init(jax.random.key(0), x)
  last_bn = {tresnet.TResNetBasicBlock: "bn2", tresnet.TResNetBottleneck: "bn3"}[block_cls]
  assert not np.any(variables["params"][last_bn]["scale"])
  assert np.all(variables["params"]["bn1"]["scale"] == 1)
  out, _ = block.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(out, jax.nn.relu(x), rtol=1e-6, atol=1e-6)
