#!/usr/bin/env python
"""Train an image classifier from a YAML config (timm's convention: a thin script at the repo root).

    python train.py --config configs/quickstart.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node=2 train.py --config configs/cifar10/cbam.yaml

The same as ``visattn train ...``; the logic lives in ``visattn.training``.
"""

import sys

from visattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
