"""What the studies under ``experiments/`` share: composing and running arms (``runs``), evaluating a trained model
at other lengths and by position (``evaluate``), per-layer retrieval diagnostics (``diagnostics``), markdown tables,
results files and plots (``report``, matplotlib from the ``studies`` extra) and the agreement statistics of the
finite-difference probes (``statistics``). Import the submodules directly."""
