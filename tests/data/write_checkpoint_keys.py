"""Writes the state-dict key lists (name -> PyTorch shape) of the checkpoints import_weights reads.

The lists are written from the PyTorch module definitions, independently of cfl_jax, so the
import tests check the Flax models against the checkpoints' real layout:

- ``tresnet_m``: timm ``timm/models/tresnet.py`` (``TResNet(layers=[3, 4, 11, 3])``): ``body.conv1``
  is a ``ConvNormAct`` (``.conv``, ``.bn``), blocks are ``body.layer{i}.{j}`` with ``conv1`` ..
  ``conv3`` as ``ConvNormAct`` / ``ConvNormActAa`` (the blur filter is a non-persistent buffer),
  ``se.fc1`` / ``se.fc2`` 1x1 convolutions with bias, ``downsample.1`` the ``ConvNormAct`` after
  the average pool; the classifier is ``head.fc``.
- ``resnet50`` / ``resnet152``: torchvision ``torchvision/models/resnet.py``: ``conv1``, ``bn1``,
  ``layer{i}.{j}.conv{k}`` / ``bn{k}``, ``downsample.0`` (conv) / ``downsample.1`` (BatchNorm),
  ``fc``.

Every BatchNorm contributes weight, bias, running_mean, running_var and a 0-d num_batches_tracked.

Run from the repository root: ``python tests/data/write_checkpoint_keys.py``.
"""

import json
import pathlib

NUM_CLASSES = 1000


class StateDict:
  """Collects ``key -> shape`` in PyTorch's registration order."""

  def __init__(self):
    self.shapes = {}

  def conv(self, key, in_channels, out_channels, kernel_size, bias=False):
    self.shapes[f"{key}.weight"] = [out_channels, in_channels, kernel_size, kernel_size]
    if bias:
      self.shapes[f"{key}.bias"] = [out_channels]

  def batch_norm(self, key, channels):
    for name in ("weight", "bias", "running_mean", "running_var"):
      self.shapes[f"{key}.{name}"] = [channels]
    self.shapes[f"{key}.num_batches_tracked"] = []

  def linear(self, key, in_features, out_features):
    self.shapes[f"{key}.weight"] = [out_features, in_features]
    self.shapes[f"{key}.bias"] = [out_features]


def timm_tresnet_m():
  sd = StateDict()

  def conv_norm_act(key, cin, cout, k):
    sd.conv(f"{key}.conv", cin, cout, k)
    sd.batch_norm(f"{key}.bn", cout)

  def squeeze_excite(key, channels, reduced):
    sd.conv(f"{key}.fc1", channels, reduced, 1, bias=True)
    sd.conv(f"{key}.fc2", reduced, channels, 1, bias=True)

  conv_norm_act("body.conv1", 3 * 16, 64, 3)
  inplanes = 64
  stages = [("basic", 64, 3, 1, True), ("basic", 128, 4, 2, True),
            ("bottleneck", 256, 11, 2, True), ("bottleneck", 512, 3, 2, False)]
  for i, (block, planes, blocks, stride, use_se) in enumerate(stages, start=1):
    expansion = 1 if block == "basic" else 4
    for j in range(blocks):
      key = f"body.layer{i}.{j}"
      # TResNet._make_layer: downsample when stride != 1 or channels change; AvgPool2d first if
      # stride == 2, so the ConvNormAct is downsample.1 there.
      if j == 0 and (stride != 1 or inplanes != planes * expansion):
        downsample = f"{key}.downsample.{1 if stride == 2 else 0}"
        conv_norm_act(downsample, inplanes, planes * expansion, 1)
      if block == "basic":
        conv_norm_act(f"{key}.conv1", inplanes, planes, 3)
        conv_norm_act(f"{key}.conv2", planes, planes, 3)
        if use_se:
          squeeze_excite(f"{key}.se", planes, max(planes // 4, 64))
      else:
        conv_norm_act(f"{key}.conv1", inplanes, planes, 1)
        conv_norm_act(f"{key}.conv2", planes, planes, 3)
        if use_se:
          squeeze_excite(f"{key}.se", planes, max(planes * 4 // 8, 64))
        conv_norm_act(f"{key}.conv3", planes, planes * 4, 1)
      inplanes = planes * expansion
  sd.linear("head.fc", 2048, NUM_CLASSES)
  return sd.shapes


def torchvision_resnet(layers):
  sd = StateDict()
  sd.conv("conv1", 3, 64, 7)
  sd.batch_norm("bn1", 64)
  inplanes = 64
  for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
    stride = 1 if i == 1 else 2
    for j in range(blocks):
      key = f"layer{i}.{j}"
      sd.conv(f"{key}.conv1", inplanes, planes, 1)
      sd.batch_norm(f"{key}.bn1", planes)
      sd.conv(f"{key}.conv2", planes, planes, 3)
      sd.batch_norm(f"{key}.bn2", planes)
      sd.conv(f"{key}.conv3", planes, planes * 4, 1)
      sd.batch_norm(f"{key}.bn3", planes * 4)
      if j == 0 and (stride != 1 or inplanes != planes * 4):
        sd.conv(f"{key}.downsample.0", inplanes, planes * 4, 1)
        sd.batch_norm(f"{key}.downsample.1", planes * 4)
      inplanes = planes * 4
  sd.linear("fc", 2048, NUM_CLASSES)
  return sd.shapes


CHECKPOINTS = {
    "tresnet_m": timm_tresnet_m,
    "resnet50": lambda: torchvision_resnet((3, 4, 6, 3)),
    "resnet152": lambda: torchvision_resnet((3, 8, 36, 3)),
}

if __name__ == "__main__":
  for name, build in CHECKPOINTS.items():
    path = pathlib.Path(__file__).with_name(f"checkpoint_keys_{name}.json")
    path.write_text(json.dumps(build(), indent=0) + "\n")
    print(path)
