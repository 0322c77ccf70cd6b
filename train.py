"""Train ROSA-Tuning: `python train.py [hydra overrides]` (configs in conf/, see README)."""
from rosa_lightning.cli import main

if __name__ == "__main__":
    main()
