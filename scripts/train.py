"""Train a DQN/IQN agent: python scripts/train.py configs/cartpole_dqn.yaml [key=value ...]"""

import sys

from jaxrl.cli import main

if __name__ == "__main__":
  sys.exit(main())
