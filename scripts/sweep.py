"""Run a grid of configs x seeds: python scripts/sweep.py CONFIG [--seeds 0 1 2] [key=v1,v2 ...]"""

import sys

from jaxrl.sweep import main

if __name__ == "__main__":
  sys.exit(main())
