"""Curves and tables of runs, sweeps and benchmark files: python scripts/plot.py DIR [DIR ...]"""

import sys

from jaxrl.plot import main

if __name__ == "__main__":
  sys.exit(main())
