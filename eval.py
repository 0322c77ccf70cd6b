"""Evaluate a model on LongBench / LongBench-E / RULER NIAH: `python eval.py run_dir=<run dir> [overrides]`
(configs in conf/, see conf/eval.yaml)."""
from rosa_lightning.evaluation.cli import main

if __name__ == "__main__":
    main()
