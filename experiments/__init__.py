"""The studies and benchmarks of rosa_lightning, one subpackage per question, and their shared harness.

Run from the repository root as modules, e.g. ``python -m experiments.branch_learning.run``; the library
(``rosa_lightning``) never imports this package.
"""
