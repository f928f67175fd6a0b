"""Raw inputs by `data.source`: the MicroLens release readers (microlens), the WWW2025 MMCTR challenge files
(challenge), item titles and covers of whichever source is configured (items), and the synthetic MicroLens-like
generator (synthetic, synthetic_items) with the planted click model and its Bayes oracle (planted)."""
