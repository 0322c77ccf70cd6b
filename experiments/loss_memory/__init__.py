"""Peak memory of the loss at Qwen3's vocabulary: all logits vs chunks (README.md in this folder)."""
