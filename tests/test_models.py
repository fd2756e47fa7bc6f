"""Tests of cfl_jax.models: registry, shapes, parameter counts, dtypes, BatchNorm modes."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cfl_jax.models import MODEL_NAMES, get_model, resnet

# name -> (input height = width, channels, number of classes)
_INPUTS = {
    "digits_cnn": (8, 1, 10),
    "tiny_cnn": (224, 3, 10),
    "resnet20": (32, 3, 10),
    "resnet32": (32, 3, 10),
    "resnet56": (32, 3, 10),
    "resnet18_cifar": (32, 3, 10),
    "resnet10": (64, 3, 1000),
    "resnet50": (64, 3, 1000),
    "resnet152": (64, 3, 1000),
    "tresnet_m": (224, 3, 1000),
}

# Published sizes in millions (He et al. 2016 table 6 for the CIFAR nets; torchvision for the
# ImageNet nets and for ResNet-18-CIFAR as in kuangliu/pytorch-cifar; timm for TResNet-M) and the
# exact counts of the PyTorch references (BatchNorm scale and bias included, running statistics
# excluded).
_PARAM_COUNTS = {
    "resnet20": (0.27, 269_722),
    "resnet32": (0.46, 464_154),
    "resnet56": (0.85, 853_018),
    "resnet18_cifar": (11.17, 11_173_962),
    "resnet10": (5.42, 5_418_792),
    "resnet50": (25.56, 25_557_032),
    "resnet152": (60.19, 60_192_808),
    "tresnet_m": (31.39, 31_389_032),  # timm's tresnet_m; derivation in test_tresnet.py
}


def _images(name, batch=2, seed=0):
  size, channels, _ = _INPUTS[name]
  return jax.random.normal(jax.random.key(seed), (batch, size, size, channels))


def _init(model, x):
  return jax.jit(lambda key: model.init(key, x, train=False))(jax.random.key(0))


def _abstract_variables(model, x):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _num_params(variables):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


def test_names_match_the_contract():
  mnist1d_models = {"mnist1d_cnn", "mnist1d_mlp", "mnist1d_logistic"}  # test_models_mnist1d.py
  assert set(MODEL_NAMES) == set(_INPUTS) | mnist1d_models


@pytest.mark.parametrize("name", sorted(_INPUTS))
def test_output_shape_and_dtype(name):
  num_classes = _INPUTS[name][2]
  model = get_model(name, num_classes=num_classes)
  x = _images(name)
  variables = _abstract_variables(model, x)
  logits, updates = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
  )
  assert logits.shape == (2, num_classes)
  assert logits.dtype == jnp.float32
  assert jax.tree.map(jnp.shape, updates["batch_stats"]) == jax.tree.map(
      jnp.shape, variables["batch_stats"]
  )


@pytest.mark.parametrize("name", sorted(_PARAM_COUNTS))
def test_parameter_counts_match_published(name):
  published_millions, exact = _PARAM_COUNTS[name]
  model = get_model(name, num_classes=_INPUTS[name][2])
  count = _num_params(_abstract_variables(model, _images(name)))
  assert count == exact
  assert round(count / 1e6, 2) == published_millions


def test_digits_cnn_is_small():
  model = get_model("digits_cnn", num_classes=10)
  assert _num_params(_abstract_variables(model, _images("digits_cnn"))) < 100_000


def _forward_flops(name, size):
  model = get_model(name, num_classes=10)
  x = jnp.zeros((1, size, size, 3))
  variables = _abstract_variables(model, x)
  lowered = jax.jit(lambda v: model.apply(v, x, train=False)).lower(variables)
  return lowered.compile().cost_analysis()["flops"]


def test_tiny_cnn_is_the_digits_cnn_with_a_stride_4_stem():
  x = _images("tiny_cnn")
  tiny = _abstract_variables(get_model("tiny_cnn", num_classes=10), x)
  digits = _abstract_variables(get_model("digits_cnn", num_classes=10), x)
  assert jax.tree.map(jnp.shape, tiny["batch_stats"]) == jax.tree.map(jnp.shape,
                                                                        digits["batch_stats"])
  assert tiny["params"]["conv1"]["kernel"].shape == (4, 4, 3, 32)
  # At 224 px: a 4x4 stride-4 stem leaves about a sixteenth of the work.
  assert _forward_flops("tiny_cnn", 224) < _forward_flops("digits_cnn", 224) / 12


def test_cifar_resnets_use_parameter_free_option_a_shortcuts():
  variables = _abstract_variables(get_model("resnet20", num_classes=10), _images("resnet20"))
  assert "shortcut" not in variables["params"]["stage2_block1"]
  variables = _abstract_variables(get_model("resnet18_cifar", num_classes=10), _images("resnet20"))
  assert set(variables["params"]["stage2_block1"]["shortcut"]) == {"conv", "bn"}


@pytest.mark.parametrize("name", ["resnet20", "resnet10"])
def test_stem_resolution(name):
  """CIFAR stem keeps 32x32 until stage 2; the ImageNet stem divides by 4 before stage 1."""
  model = get_model(name, num_classes=10)
  x = _images(name)
  variables = _abstract_variables(model, x)
  apply = lambda v: model.apply(
      v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
  )
  _, state = jax.eval_shape(apply, variables)
  stage1 = state["intermediates"]["stage1_block1"]["__call__"][0]
  assert stage1.shape[1:3] == {"resnet20": (32, 32), "resnet10": (16, 16)}[name]


def test_dtype_may_be_given_by_name():
  assert get_model("resnet20", num_classes=10, dtype="bfloat16").dtype == jnp.bfloat16


def test_bfloat16_compute_keeps_float32_params_and_finite_logits():
  model = get_model("resnet20", num_classes=10, dtype=jnp.bfloat16)
  x = _images("resnet20")
  variables = _init(model, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, state = jax.jit(lambda v: model.apply(
      v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
  ))(variables)  # compiled: one program instead of one per operation (test time)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert state["intermediates"]["stage3_block3"]["__call__"][0].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(state["batch_stats"])} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", ["digits_cnn", "resnet20"])
def test_batch_stats_update_only_in_train_mode(name):
  model = get_model(name, num_classes=10)
  x = _images(name, batch=4) * 3.0 + 1.0
  variables = _init(model, x)

  _, train_updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  changed = jax.tree.map(
      lambda a, b: not np.allclose(a, b), train_updates["batch_stats"], variables["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))

  eval_logits, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], variables["batch_stats"])
  # Evaluation normalises with running statistics, so each example's logits ignore the others.
  single = model.apply(variables, x[:1], train=False)
  np.testing.assert_allclose(single, eval_logits[:1], rtol=1e-5, atol=1e-5)
  train_single, _ = model.apply(variables, x[:1], train=True, mutable=["batch_stats"])
  train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(train_single, train_logits[:1], atol=1e-3)


def test_sharded_batch_matches_unsharded():
  """Under jit with the batch split over 8 devices, BatchNorm uses the global batch."""
  model = get_model("digits_cnn", num_classes=10)
  x = _images("digits_cnn", batch=16)
  variables = _init(model, x)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
  step = jax.jit(lambda v, images: model.apply(v, images, train=True, mutable=["batch_stats"]))
  logits, updates = step(variables, x)
  sharded_logits, sharded_updates = step(variables, sharded_x)
  np.testing.assert_allclose(sharded_logits, logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sharded_updates, updates
  )


def test_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match="resnet20.*resnet152"):
    get_model("resnet18", num_classes=10)


def test_too_few_classes():
  with pytest.raises(ValueError, match="num_classes"):
    get_model("resnet20", num_classes=1)


def test_unknown_shortcut_option():
  model = resnet.ResNet(
      stage_sizes=(1, 1),
      widths=(4, 8),
      block_cls=resnet.BasicBlock,
      stem="cifar",
      shortcut="C",
      num_classes=2,
  )
  with pytest.raises(ValueError, match="shortcut option 'C'"):
    _abstract_variables(model, jnp.zeros((1, 8, 8, 3)))



def test_feature_layer_before_the_classifier():
  """``feature_dim``: OLTR's use_fc, pooled features -> dense (PyTorch's nn.Linear init) -> ReLU
  -> classifier, as a top-level ``features`` module (outside ``head``)."""
  model = get_model("resnet10", num_classes=7, feature_dim=16)
  x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
  variables = _init(model, x)
  features, head = variables["params"]["features"], variables["params"]["head"]["dense"]
  assert features["kernel"].shape == (512, 16) and head["kernel"].shape == (16, 7)
  bound = 512**-0.5  # U(+-1 / sqrt(fan_in)) for the kernel and the bias
  for leaf in (features["kernel"], features["bias"]):
    assert 0.9 * bound < float(jnp.abs(leaf).max()) <= bound
  # The logits are the classifier applied to relu(dense(mean-pooled backbone features)).
  plain = get_model("resnet10", num_classes=512)
  plain_variables = {"params": {**variables["params"], "head": {"dense": {
      "kernel": jnp.eye(512), "bias": jnp.zeros(512)}}}, "batch_stats": variables["batch_stats"]}
  plain_variables["params"].pop("features")
  pooled = jax.jit(lambda v: plain.apply(v, x, train=False))(plain_variables)
  hidden = jax.nn.relu(pooled @ features["kernel"] + features["bias"])
  np.testing.assert_allclose(jax.jit(lambda v: model.apply(v, x, train=False))(variables),
                             hidden @ head["kernel"] + head["bias"], rtol=1e-4, atol=1e-5)


def test_feature_layer_only_where_the_model_has_one():
  assert "features" in _abstract_variables(get_model("digits_cnn", num_classes=3, feature_dim=8),
                                           jnp.zeros((1, 8, 8, 1)))["params"]
  with pytest.raises(ValueError,
                     match="'mnist1d_cnn' has no feature layer.*digits_cnn, tiny_cnn, resnet20"):
    get_model("mnist1d_cnn", num_classes=10, feature_dim=8)
  with pytest.raises(ValueError, match="feature_dim must be >= 0"):
    get_model("resnet10", num_classes=10, feature_dim=-1)
