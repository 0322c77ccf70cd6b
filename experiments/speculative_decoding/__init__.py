"""ROSA-native speculative decoding against plain greedy decoding at long context on the CPU (README.md here)."""
