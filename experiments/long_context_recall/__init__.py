"""Global vs window vs window + ROSA vs token channel on recall tasks, and at longer lengths
(README.md in this folder)."""
