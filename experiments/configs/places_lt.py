r"""Places-LT (OLTR benchmark, Liu et al. 2019): the paper's long-tailed scene study.

  python -m experiments.train \
      --config=experiments/configs/places_lt.py:cfl_reference,init_from=resnet152.safetensors \
      --workdir=runs/places_lt_cfl_reference

Argument (comma-separated): the loss, ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference``;
``init_from=PATH`` (required): torchvision's ResNet-152 ImageNet weights as safetensors, i.e.
``ResNet152_Weights.IMAGENET1K_V1`` (https://download.pytorch.org/models/resnet152-394f9c45.pth)
converted with ``safetensors.torch.save_file(torch.load(PTH), PATH)``; ``data_dir=PATH`` (TFDS
data directory holding the prepared ``places_lt``); ``smoke`` (no weights needed).

Targets the paper's Places-LT table (overall, many-, medium- and few-shot top-1 of ResNet-152).
62,500 training images over 365 classes (4,980 down to 5 per class), evaluated on the balanced
36,500-image test list. OLTR's recipe as the paper ran it: ResNet-152 fine-tuned from ImageNet
weights (the 1,000-class classifier is replaced by a fresh 365-class one), learning rate 0.001 on
the backbone and 0.1 on the classifier, both x0.1 every 10 epochs, 30 epochs, batch 128, SGD
momentum 0.9, weight decay 5e-4 on every parameter, 224-px random-resized crop + flip; the
losses and the evaluation are ``imagenet_lt.py``'s (read its docstring; here the validation list
has 7,300 images, 20 per class).

Where the port differs: the weights are loaded once at the start of a run (a resumed run takes
them from its checkpoint); BatchNorm statistics are updated during fine-tuning as in PyTorch's
train mode.
"""

import ml_collections

from experiments.configs import common
from experiments.configs import imagenet_lt


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Places-LT with the loss and weights named in ``arg`` (see the module docstring)."""
  args = common.parse_arg(arg, values={"init_from": (str, None)})
  if args.init_from is None and not args.smoke:
    raise ValueError(
        "places_lt fine-tunes ImageNet weights: add init_from=PATH, torchvision's "
        "ResNet152_Weights.IMAGENET1K_V1 (https://download.pytorch.org/models/"
        "resnet152-394f9c45.pth) converted with safetensors.torch.save_file(torch.load(PTH), "
        "PATH).")
  config = imagenet_lt.oltr_recipe(args, name="places_lt", dataset="places_lt",
                                   model="resnet152")
  config.model.init_from = args.init_from or ""
  config.optimizer.update(learning_rate=0.001, head_learning_rate=0.1)
  return common.finish(config, args)
