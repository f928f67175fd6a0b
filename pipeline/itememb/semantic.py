"""Semantic ids of a whole item table: the quantize stage's logic, residual k-means or an RQ-VAE fitted to the
items that have content, and a code for every item.

Items whose row is all zeros (no usable title or cover, or a release's missing embedding; `usable_items`) are left
out of the fit and of the metrics: identical points at the origin drew every item of a flat embedding into their
cluster (level 1 used 2 of 64 codes on a data set with 5% of them). Each gets the codes of the zero vector under
the fitted codebooks, so they share one tuple.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.config import QuantizeConfig
from pipeline.core.io import DataError
from pipeline.itememb.neighbours import usable_items
from pipeline.itememb.quantize import assign_codes, quantize_report, residual_kmeans
from pipeline.itememb.rqvae import train_rqvae


def semantic_ids(table: np.ndarray, tags: np.ndarray, cfg: QuantizeConfig, source: str) -> tuple[np.ndarray, dict]:
    """table (N+1, D) float (row i = item i, row 0 = padding), tags (N+1, T) int (0 = no tag) ->
    (codes (N+1, cfg.levels) int16: row 0 all -1, item i's codes coarse to fine in 0..codebook_size-1;
    the quantize_report metrics, plus empty_items and, with rqvae, decoder_recon_error and final_loss).
    A DataError naming `source` when fewer items have content than there are centroids per level."""
    content = usable_items(table)  # (M,) ids of the items with a non-zero row
    if len(content) < cfg.codebook_size:
        raise DataError(f"{source}: {len(content)} items with a non-zero embedding (of {len(table) - 1}), fewer "
                        f"than quantize.codebook_size ({cfg.codebook_size}) centroids")
    x, content_tags = table[content], tags[np.concatenate([[0], content])]  # (M, D), (M+1, T): row r = content[r]
    if cfg.method == "rqvae":
        fit = train_rqvae(x, cfg.levels, cfg.codebook_size, hidden=cfg.rqvae_hidden,
                          latent_dim=cfg.rqvae_latent_dim, epochs=cfg.rqvae_epochs,
                          learning_rate=cfg.rqvae_learning_rate, beta=cfg.rqvae_beta,
                          batch_size=cfg.rqvae_batch_size, seed=cfg.seed)
        fitted, zero_codes = fit.codes, fit.zero_codes
        # The codebooks quantise the encoder's latent, so the per-level errors are the latent's.
        report = {"method": "rqvae", **quantize_report(fit.latent, fitted, fit.codebooks, content_tags,
                                                       cfg.sample_items, cfg.seed),
                  "decoder_recon_error": fit.recon_error, "final_loss": fit.losses[-1]}
    else:
        fitted, codebooks = residual_kmeans(x, cfg.levels, cfg.codebook_size, cfg.iterations, cfg.seed)
        zero_codes = assign_codes(np.zeros((1, x.shape[1])), codebooks)[0]
        report = {"method": "kmeans", **quantize_report(x, fitted, codebooks, content_tags, cfg.sample_items,
                                                        cfg.seed)}
    report["empty_items"] = len(table) - 1 - len(content)
    codes = np.vstack([np.full((1, cfg.levels), -1, dtype=np.int16),
                       np.broadcast_to(zero_codes, (len(table) - 1, cfg.levels))])  # (N+1, L)
    codes[content] = fitted
    return codes, report
