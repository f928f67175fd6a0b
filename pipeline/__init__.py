"""mmctr library: pure functions over polars frames, numpy arrays and tensors, grouped by the phases of dvc.yaml.

    core/       what every stage shares: params (config), atomic I/O and value checks, stage helpers, devices and
                ranks, metrics, the feature map, the item id -> row index
    sources/    raw inputs by data.source: MicroLens readers, the challenge files, the synthetic generator and its
                planted model (make_synthetic; the oracle used by evaluate)
    extract/    text and image encoders, batching, the resumable shard store (extract_text, extract_image)
    itememb/    item-embedding space: PCA inputs and fit, nearest neighbours, the neighbour gallery, the report
                (fit_pca, embedding_report, `mmctr neighbours`)
    sequences/  user histories, splits, negatives and item features (build_sequences)
    training/   split tensors, the training loop, prediction, checkpoints (train, evaluate)
    cli/        the `mmctr` command: neighbours, compare, results, tune (no stage imports it)

A phase imports the core and, where it reads raw inputs, sources/; never another phase. model/ imports the core
only. Each stage's deps in dvc.yaml are exactly these folders (tests/test_dvc_deps.py).
"""
