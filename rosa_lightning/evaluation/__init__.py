"""Evaluation: LongBench v1 / LongBench-E and RULER needle-in-a-haystack (``python eval.py``).

Modules: ``longbench`` (official per-sample metrics, prompts, aggregation), ``niah`` (RULER
niah_single_1 generator and scorer), and the harness that runs a model over them.
"""
