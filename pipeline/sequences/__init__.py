"""User histories (stage build_sequences): reading each source's events into labelled rows (inputs), the history,
split and negative-sampling machinery with plain-Python references (build), and the per-item side features
written as items.parquet (item_features)."""
