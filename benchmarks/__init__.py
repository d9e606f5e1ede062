"""Performance benchmarks of bert_jax against PyTorch and Hugging Face Flax (see RESULTS.md)."""
