"""One thin click command per DVC stage; each module is named after its dvc.yaml entry."""
