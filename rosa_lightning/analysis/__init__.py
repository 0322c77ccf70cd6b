"""Shared helpers of the studies under ``experiments/``: composing and running arms (``runs``), evaluating a
trained model at other lengths and by position (``evaluate``), per-layer retrieval diagnostics
(``diagnostics``), and markdown tables and plots (``report``). Import the submodules directly."""
