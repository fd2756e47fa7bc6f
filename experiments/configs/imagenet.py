r"""ImageNet-2012 (ILSVRC-2012, 1,000 classes): the paper's large balanced study.

  python -m experiments.train --config=experiments/configs/imagenet.py:cfl \
      --workdir=runs/imagenet_cfl

Argument (comma-separated): the loss, ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference``;
``data_dir=PATH`` (TFDS data directory holding the prepared ``imagenet2012``); ``smoke``.

The paper trained TResNet-M with the timm recipe on 4 GPUs: batch 4 x 384, learning rate 0.6,
weight decay 2e-5, EMA of the weights, mixup 0.2, random erasing 0.4, RandAugment. TResNet, EMA,
mixup, random erasing and RandAugment do not exist here. This config keeps the rest:

* ResNet-50 at 224 px (random-resized crop + flip; centre crop at eval), bfloat16 compute;
* global batch 1536 (split over all devices), SGD Nesterov 0.9, peak learning rate 0.6, 3
  warm-up epochs from 0.01, cosine decay, weight decay 2e-5 on weights only;
* 201 epochs (assumed: SPEC gives the length only for CIFAR, "same family" for ImageNet);
* CFL gamma_hc=3, gamma_lc=2, f=4, label smoothing 0.1 for every loss (``common.PROTOCOLS``).

Evaluated on the 50,000 validation images.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """ImageNet with the loss named in ``arg`` (see the module docstring)."""
  args = common.parse_arg(arg)
  dataset = {"name": "imagenet2012", "image_size": 224, "shuffle_buffer": 16_384}
  config = common.timm_config(args, name="imagenet", dataset=dataset, model="resnet50",
                              batch_size=1536, learning_rate=0.6, weight_decay=2e-5)
  config.update(eval_batch_size=1000, log_every_steps=200, eval_every_epochs=10,
                checkpoint_every_steps=2500)
  return common.finish(config, args)
