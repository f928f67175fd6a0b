"""Embedding extraction (stages extract_text and extract_image): the BERT-family text encoder (text), the open_clip
image tower over covers (image), batches that halve on CUDA out-of-memory (batching) and the resumable shard store
and embedding-frame contract both write through (store). clip_configs/ holds the open_clip configs we ship."""
