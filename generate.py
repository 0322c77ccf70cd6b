"""Generate text with a ROSA model: `python generate.py model.backbone=<dir> adapter=<file> prompt="..."`
(configs in conf/, see conf/generate.yaml)."""
from rosa_lightning.generation.cli import main

if __name__ == "__main__":
    main()
