"""ns per (route, token) of the retrieval kernel vs a baseline of the published approach (README.md
in this folder)."""
