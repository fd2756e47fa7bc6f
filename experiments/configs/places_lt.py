r"""Places-LT (OLTR benchmark, Liu et al. 2019): the paper's long-tailed scene study.

  python -m experiments.train \
      --config=experiments/configs/places_lt.py:cfl_reference,init_from=resnet152.safetensors \
      --workdir=runs/places_lt_cfl_reference

Argument (comma-separated): the loss, ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference`` |
``asl_focal``; the loss settings, ``config_file`` (default: the authors'
``Places_LT/stage_1_cfl.py``, gamma_hc=2, gamma_pos=1, gamma_neg=4, f=2) |
``as_run_without_flags`` (OLTR ``main.py``'s command-line defaults, which overwrite the config
file's: gamma_pos=0, the rest the same; see ``imagenet_lt.py``);
``init_from=PATH`` (required): torchvision's ResNet-152 ImageNet weights as safetensors, i.e.
``ResNet152_Weights.IMAGENET1K_V1`` (https://download.pytorch.org/models/resnet152-394f9c45.pth)
converted with ``safetensors.torch.save_file(torch.load(PTH), PATH)``; ``data_dir=PATH`` (TFDS
data directory holding the prepared ``places_lt``); ``smoke`` (no weights needed).

Targets the paper's Places-LT table (overall, many-, medium- and few-shot top-1 of ResNet-152).
62,500 training images over 365 classes (4,980 down to 5 per class), evaluated on the balanced
36,500-image test list. OLTR's stage-1 recipe as the authors' ``Places_LT/stage_1_cfl.py`` ran
it: ResNet-152 fine-tuned from ImageNet weights, its pooled 2,048 features fed to a new dense
2,048 -> 512 + ReLU layer (OLTR's ``use_fc``: ``model.feature_dim=512``, initialised as PyTorch's
``nn.Linear``) and a new 512 -> 365 classifier; learning rate 0.001 on the backbone and the
512-wide layer (both are OLTR's feature model) and 0.1 on the classifier, both x0.1 every 10
epochs, 30 epochs, batch 128, SGD momentum 0.9, weight decay 5e-4 on every parameter, 224-px
random-resized crop, flip and colour jitter 0.4 (``imagenet_lt.py``); the losses and the
evaluation are ``imagenet_lt.py``'s (read its docstring; here the validation list has 7,300
images, 20 per class). Only stage 1 is implemented, not OLTR's stage-2 meta-embedding
classifier.

Where the port differs: the ImageNet weights are torchvision's ``IMAGENET1K_V1`` (top-1 78.3 %)
where OLTR loads a Caffe-converted ResNet-152 (``./logs/caffe_resnet152.pth``, not published with
its code; presumably He et al.'s original release, top-1 error 23.0 %, which was trained on BGR,
mean-subtracted 0-255 inputs and strides in the first 1x1 convolution of a downsampling
bottleneck, where torchvision's and OLTR's blocks stride in the 3x3); the classifier starts from
the port's LeCun-normal initialisation (PyTorch's is uniform). The weights are loaded once at the
start of a run (a resumed run takes them from its checkpoint); BatchNorm statistics are updated
during fine-tuning as in PyTorch's train mode.
"""

import ml_collections

from experiments.configs import common
from experiments.configs import imagenet_lt

# OLTR's Places-LT feature model: use_fc, a 2,048 -> 512 dense + ReLU layer before the classifier.
PLACES_FEATURE_DIM = 512


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Places-LT with the loss and weights named in ``arg`` (see the module docstring)."""
  args = imagenet_lt.parse_arg(arg, init_from=(str, None))
  if args.init_from is None and not args.smoke:
    raise ValueError(
        "places_lt fine-tunes ImageNet weights: add init_from=PATH, torchvision's "
        "ResNet152_Weights.IMAGENET1K_V1 (https://download.pytorch.org/models/"
        "resnet152-394f9c45.pth) converted with safetensors.torch.save_file(torch.load(PTH), "
        "PATH).")
  config = imagenet_lt.oltr_recipe(args, name="places_lt", dataset="places_lt",
                                   model="resnet152")
  config.model.update(init_from=args.init_from or "", feature_dim=PLACES_FEATURE_DIM)
  config.optimizer.update(learning_rate=0.001, head_learning_rate=0.1)
  return common.finish(config, args)
