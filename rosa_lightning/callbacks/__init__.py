"""Lightning callbacks and plugins: retrieval runtime (executor lifecycle, CPU budget, timing),
ROSA adapter export, atomic checkpoint writes. Import the submodules directly."""
