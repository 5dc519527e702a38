"""``mmdet-focal-triton configs``: the configs shipped with the package.

    mmdet-focal-triton configs                      # every shipped config, by name
    mmdet-focal-triton configs --path retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py
    mmdet-focal-triton configs --root               # the folder that holds them

A name is the config's path below the folder, with or without the ``mmdet_focal_triton::``
prefix; ``mmdet-focal-triton train`` accepts the prefixed name, and ``--path`` gives the file's
path for a ``_base_`` of your own config or for mmdet's own tools/train.py.
"""
from __future__ import annotations

import argparse
import sys

from ..shipped_configs import PREFIX, config_path, config_root, list_configs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0].strip('`: ') + '.',
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n', 1)[1])
    what = p.add_mutually_exclusive_group()
    what.add_argument('--path', metavar='NAME', help='print the path of the shipped config NAME')
    what.add_argument('--root', action='store_true', help='print the folder of the configs')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.root:
            print(config_root())
        elif args.path:
            print(config_path(args.path))
        else:
            print(f'# configs shipped with mmdet_focal_triton, in {config_root()}')
            print(f'# name them as mmdet-focal-triton train {PREFIX}NAME')
            for name in list_configs():
                print(name)
    except (FileNotFoundError, ValueError) as e:
        print(f'[configs] {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
