"""Evaluate a trained run's saved policy: python scripts/evaluate.py runs/NAME [--episodes N] [--video DIR] ..."""

import sys

from jaxrl.cli import evaluate_main

if __name__ == "__main__":
  sys.exit(evaluate_main())
