"""GPU check: the CUDA retrieval pipeline against the CPU path, and step time and memory at Qwen3-0.6B shape (README.md)."""
