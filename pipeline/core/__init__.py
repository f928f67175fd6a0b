"""The shared core every stage and the model import: params dataclasses and their loader (config), atomic writes and
value checks (io), stage entry-point helpers (stage), devices, ranks and autocast (distributed), metrics, the
feature map (feature_map) and the item id -> row index (items). It imports no other part of the project."""
