"""The CTR model (Transformer over history + DCNv2), one model per file."""
