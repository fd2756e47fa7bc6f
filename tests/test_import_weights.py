"""Tests of cfl_jax.models.import_weights on synthetic checkpoints with the real key lists.

``tests/data/checkpoint_keys_*.json`` hold every state-dict key and PyTorch shape of timm's
``tresnet_m`` and torchvision's ``resnet50`` / ``resnet152`` (written from the PyTorch module
definitions by ``tests/data/write_checkpoint_keys.py``). Files with those keys and random values
must import into exactly the Flax models' variables, and the imported models must compute what an
independent numpy (NCHW, float64) forward pass computes with the same tensors.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from cfl_jax.models import IMPORTABLE_MODELS, get_model, import_weights

import checkpoint_fakes
import numpy_nchw as nchw

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """name -> (path of a random checkpoint, its tensors), written once per module."""
  directory = tmp_path_factory.mktemp("checkpoints")
  cache = {}

  def get(name):
    if name not in cache:
      tensors = checkpoint_fakes.random_tensors(name)
      path = directory / f"{name}.safetensors"
      safetensors.numpy.save_file(tensors, str(path))
      cache[name] = (path, tensors)
    return cache[name]

  return get


def _save(tmp_path, tensors):
  path = tmp_path / "edited.safetensors"
  safetensors.numpy.save_file(tensors, str(path))
  return path


def _abstract_variables(name, num_classes):
  model = get_model(name, num_classes=num_classes)
  x = jnp.zeros((1, 32, 32, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _shapes(tree):
  return jax.tree.map(lambda leaf: (leaf.shape, jnp.dtype(leaf.dtype)), tree)


# ---------------------------------------------------------------------------------------------
# Key coverage and errors.


def test_key_lists_hold_the_published_parameter_counts():
  """The key lists are the real checkpoints: their trainable sizes are timm's / torchvision's."""
  published = {"tresnet_m": 31_389_032, "resnet50": 25_557_032, "resnet152": 60_192_808}
  for name, total in published.items():
    shapes = checkpoint_fakes.key_shapes(name)
    trainable = [s for k, s in shapes.items() if not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))]
    assert sum(int(np.prod(s)) for s in trainable) == total
  assert {name: len(checkpoint_fakes.key_shapes(name)) for name in published} == {
      "tresnet_m": 434, "resnet50": 320, "resnet152": 932}


@pytest.mark.parametrize("name", IMPORTABLE_MODELS)
def test_full_checkpoint_imports_into_exactly_the_model_variables(name, checkpoints):
  path, tensors = checkpoints(name)
  variables = import_weights(name, path, num_classes=1000)
  assert _shapes(variables) == _shapes(_abstract_variables(name, 1000))
  # Every file tensor went somewhere: the model's leaves hold all the file's float values.
  file_values = sum(v.size for k, v in tensors.items() if not k.endswith("num_batches_tracked"))
  assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == file_values


def test_missing_unexpected_and_misshaped_tensors_are_one_error(checkpoints, tmp_path):
  _, tensors = checkpoints("resnet50")
  edited = dict(tensors)
  del edited["layer2.1.conv2.weight"], edited["layer4.2.bn3.running_var"]
  edited["layer5.0.conv1.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  edited["layer1.0.bn1.weight"] = np.ones(65, np.float32)
  edited["layer3.0.conv2.weight"] = np.zeros((256, 256, 1, 1), np.float32)
  with pytest.raises(ValueError) as error:
    import_weights("resnet50", _save(tmp_path, edited), num_classes=1000)
  message = str(error.value)
  assert "2 missing tensors: layer2.1.conv2.weight, layer4.2.bn3.running_var" in message
  assert "1 unexpected tensors: layer5.0.conv1.weight" in message
  assert (
      "2 mis-shaped tensors: layer1.0.bn1.weight (65,) (expected (64,)), "
      "layer3.0.conv2.weight (256, 256, 1, 1) (expected (256, 256, 3, 3))" in message
  )


def test_num_batches_tracked_is_optional(checkpoints, tmp_path):
  _, tensors = checkpoints("resnet50")
  without = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
  variables = import_weights("resnet50", _save(tmp_path, without), num_classes=1000)
  stem_var = variables["batch_stats"]["stem_bn"]["var"]
  np.testing.assert_array_equal(stem_var, tensors["bn1.running_var"])


def test_other_class_count_reinitialises_the_classifier(checkpoints, caplog):
  path, tensors = checkpoints("tresnet_m")
  with caplog.at_level(logging.WARNING):
    first = import_weights("tresnet_m", path, num_classes=10, seed=0)
  assert "classifier in" in caplog.text and "has 1000 classes, the model 10" in caplog.text
  assert "re-initialised" in caplog.text
  head = first["params"]["head"]["dense"]
  assert head["kernel"].shape == (2048, 10) and head["bias"].shape == (10,)
  assert not np.any(head["bias"])  # flax Dense's initial bias
  # LeCun normal over 2,048 inputs
  assert 0.8 < float(jnp.std(head["kernel"])) * np.sqrt(2048) < 1.2
  np.testing.assert_array_equal(
      first["params"]["stem_conv"]["kernel"],
      np.transpose(tensors["body.conv1.conv.weight"], (2, 3, 1, 0)),
  )
  second = import_weights("tresnet_m", path, num_classes=10, seed=1)
  assert not np.allclose(second["params"]["head"]["dense"]["kernel"], head["kernel"])


def test_feature_layer_is_new_and_the_file_fills_the_backbone(checkpoints, caplog):
  """Places-LT's model (OLTR's use_fc): the torchvision file fills the backbone; the 2,048 -> 512
  layer and the 512 -> 365 classifier are the model's own initialisation; the file's classifier
  is left unused."""
  path, tensors = checkpoints("resnet50")
  with caplog.at_level(logging.WARNING):
    variables = import_weights("resnet50", path, num_classes=365, seed=3, feature_dim=512)
  assert "new feature layer (512) and classifier" in caplog.text
  model = get_model("resnet50", num_classes=365, feature_dim=512)
  init = lambda: model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False)
  assert _shapes(variables) == _shapes(jax.eval_shape(init))
  # Test time: compiled, the init's new modules alone cost a second; the whole eager init, 15.
  initial = jax.jit(lambda: {m: init()["params"][m] for m in ("features", "head")})()
  for module in ("features", "head"):
    jax.tree.map(np.testing.assert_array_equal, variables["params"][module], initial[module])
  np.testing.assert_array_equal(variables["params"]["stage4_block3"]["conv3"]["kernel"],
                                np.transpose(tensors["layer4.2.conv3.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(variables["batch_stats"]["stem_bn"]["var"],
                                tensors["bn1.running_var"])


def test_classifier_of_another_feature_width_is_misshaped(checkpoints, tmp_path):
  _, tensors = checkpoints("resnet50")
  edited = dict(tensors, **{"fc.weight": np.zeros((10, 1024), np.float32),
                            "fc.bias": np.zeros(10, np.float32)})
  with pytest.raises(ValueError, match=r"2 mis-shaped tensors: fc.bias \(10,\) \(classifier\), "
                                       r"fc.weight \(10, 1024\) \(expected \(1000, 2048\)\)"):
    import_weights("resnet50", _save(tmp_path, edited), num_classes=1000)


def test_classifier_with_inconsistent_class_counts_is_misshaped(checkpoints, tmp_path):
  _, tensors = checkpoints("resnet50")
  edited = dict(tensors, **{"fc.weight": np.zeros((10, 2048), np.float32)})  # bias keeps 1000
  with pytest.raises(ValueError,
                     match=r"1 mis-shaped tensors: fc.weight \(10, 2048\) \(classifier\)"):
    import_weights("resnet50", _save(tmp_path, edited), num_classes=1000)


def test_unknown_model_and_missing_file(tmp_path):
  with pytest.raises(ValueError, match="importable models: tresnet_m, resnet50, resnet152"):
    import_weights("resnet10", tmp_path / "x.safetensors", num_classes=10)
  with pytest.raises(FileNotFoundError, match="No weights file"):
    import_weights("resnet50", tmp_path / "absent.safetensors", num_classes=10)


# ---------------------------------------------------------------------------------------------
# Numerics: an independent numpy forward pass in PyTorch's NCHW layout, float64 (numpy_nchw.py).


def _bn(x, sd, prefix):
  return nchw.batch_norm(
      x, *(sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
  )


def _timm_conv_norm(x, sd, prefix, stride=1):
  return _bn(nchw.conv(x, sd[f"{prefix}.conv.weight"], stride), sd, f"{prefix}.bn")


def _timm_se(x, sd, prefix):
  gate = x.mean(axis=(2, 3), keepdims=True)
  gate = nchw.relu(nchw.conv(gate, sd[f"{prefix}.fc1.weight"], bias=sd[f"{prefix}.fc1.bias"]))
  gate = nchw.conv(gate, sd[f"{prefix}.fc2.weight"], bias=sd[f"{prefix}.fc2.bias"])
  return x / (1 + np.exp(-gate))


def _timm_tresnet_stem(x, sd):
  """SpaceToDepth(4), then ConvNormAct 48 -> 64 with LeakyReLU(0.01)."""
  return nchw.leaky_relu(_timm_conv_norm(nchw.space_to_depth(x), sd, "body.conv1"), 1e-2)


def _timm_tresnet_block(x, sd, prefix, bottleneck, stride):
  """timm's BasicBlock / Bottleneck with SE and, at stride 2, blur pool and pooled shortcut."""
  downsample = nchw.blur_pool if stride == 2 else (lambda y: y)
  if bottleneck:
    y = nchw.leaky_relu(_timm_conv_norm(x, sd, f"{prefix}.conv1"), 1e-3)
    y = downsample(nchw.leaky_relu(_timm_conv_norm(y, sd, f"{prefix}.conv2"), 1e-3))
    y = _timm_conv_norm(_timm_se(y, sd, f"{prefix}.se"), sd, f"{prefix}.conv3")
  else:
    y = downsample(nchw.leaky_relu(_timm_conv_norm(x, sd, f"{prefix}.conv1"), 1e-3))
    y = _timm_se(_timm_conv_norm(y, sd, f"{prefix}.conv2"), sd, f"{prefix}.se")
  if f"{prefix}.downsample.1.conv.weight" in sd:
    shortcut = _timm_conv_norm(nchw.avg_pool_2x2_ceil(x), sd, f"{prefix}.downsample.1")
  else:
    shortcut = x
  return nchw.relu(y + shortcut)


def _torchvision_stem(x, sd):
  """conv1 7x7 stride 2, bn1, ReLU, MaxPool2d(3, 2, padding 1)."""
  return nchw.max_pool_3x3_stride_2(nchw.relu(_bn(nchw.conv(x, sd["conv1.weight"], 2), sd, "bn1")))


def _torchvision_bottleneck(x, sd, prefix, stride):
  y = nchw.relu(_bn(nchw.conv(x, sd[f"{prefix}.conv1.weight"]), sd, f"{prefix}.bn1"))
  y = nchw.relu(_bn(nchw.conv(y, sd[f"{prefix}.conv2.weight"], stride), sd, f"{prefix}.bn2"))
  y = _bn(nchw.conv(y, sd[f"{prefix}.conv3.weight"]), sd, f"{prefix}.bn3")
  shortcut = nchw.conv(x, sd[f"{prefix}.downsample.0.weight"], stride)
  shortcut = _bn(shortcut, sd, f"{prefix}.downsample.1")
  return nchw.relu(y + shortcut)


def _flax_intermediates(name, path, size):
  """Imported model applied (float32, eval mode) to random images; inputs and block outputs."""
  model = get_model(name, num_classes=1000)
  variables = import_weights(name, path, num_classes=1000)
  images = jax.random.uniform(jax.random.key(0), (2, size, size, 3))
  _, state = jax.jit(functools.partial(
      model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]
  ))(variables, images)
  intermediates = state["intermediates"].items()
  outputs = {k: nchw.to_nchw(v["__call__"][0]) for k, v in intermediates if "block" in k}
  return nchw.to_nchw(images), outputs


def test_tresnet_m_matches_numpy_timm_forward(checkpoints):
  """Stem + a stride-1 basic block, the anti-aliased basic and bottleneck downsampling blocks.

  36-pixel images make stage 2's input 9x9, so the reflect padding and the ceil-mode pooled
  shortcut meet odd sizes.
  """
  path, sd = checkpoints("tresnet_m")
  images, flax_out = _flax_intermediates("tresnet_m", path, 36)
  expected = {
      "stage1_block1": _timm_tresnet_block(
          _timm_tresnet_stem(images, sd), sd, "body.layer1.0", bottleneck=False, stride=1),
      "stage2_block1": _timm_tresnet_block(
          flax_out["stage1_block3"], sd, "body.layer2.0", bottleneck=False, stride=2),
      "stage3_block1": _timm_tresnet_block(
          flax_out["stage2_block4"], sd, "body.layer3.0", bottleneck=True, stride=2),
  }
  for block, want in expected.items():
    assert flax_out[block].shape == want.shape, block
    np.testing.assert_allclose(flax_out[block], want, rtol=1e-4, atol=1e-4, err_msg=block)


def test_resnet50_matches_numpy_torchvision_forward(checkpoints):
  path, sd = checkpoints("resnet50")
  images, flax_out = _flax_intermediates("resnet50", path, 32)
  expected = {
      "stage1_block1": _torchvision_bottleneck(_torchvision_stem(images, sd), sd, "layer1.0", 1),
      "stage2_block1": _torchvision_bottleneck(flax_out["stage1_block3"], sd, "layer2.0", 2),
  }
  for block, want in expected.items():
    assert flax_out[block].shape == want.shape, block
    np.testing.assert_allclose(flax_out[block], want, rtol=1e-4, atol=1e-4, err_msg=block)
