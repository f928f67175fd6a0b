"""The `mmctr` command (main): neighbours, results, compare and tune over DVC experiments (compare, tune). No stage
imports it, so it is in no stage's deps."""
