"""Training and scoring of the CTR model (stages train and evaluate): splits as tensors and batches (data), the
training loop (loop), scoring whole splits (predict), and checkpoints and resume state (checkpoint)."""
