#!/usr/bin/env python3
"""Reproduce the official ResNet-RS top-1 table; takes the options of `rsconvert table`.

Example smoke run on two variants and 500 images:

    python scripts/reproduce_table.py --data /data/imagenet/tfrecords \
        --variants resnet-rs-50-i160,resnet-rs-101-i160 --limit 500
"""

import sys

from converter.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["table"]
    main()
