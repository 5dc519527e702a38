"""``python -m mmdet_focal_triton COMMAND [OPTIONS]``: the package's command line
(``mmdet-focal-triton``, see ``mmdet_focal_triton.cli``)."""
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
