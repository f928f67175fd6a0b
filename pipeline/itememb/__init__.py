"""The item-embedding space (stages fit_pca and embedding_report, and `mmctr neighbours`): which text/image vectors
the PCA is fit on by source (inputs), the PCA itself (pca), cosine nearest neighbours with faiss and an exact
reference (neighbours), a PNG gallery of an item's neighbours (gallery), and the embedding report (report)."""
