"""mmctr library: pure functions over polars frames, numpy arrays and tensors, one module per concern."""
