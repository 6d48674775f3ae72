"""python -m sample_world --out WORLD [options]; see sample_world/__init__.py."""

import sys

from sample_world.world import main

if __name__ == "__main__":
    sys.exit(main())
