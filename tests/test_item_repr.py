"""train.item_repr: the learnt item part from semantic ids (model/layers.py CTRBase.learnt_item) against a plain
per-level lookup, in every model; the checkpoint round trip; the semantic_ids.parquet reader; and what it
changes for an item that training never shows."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from model.factory import MODELS, build_model
from pipeline.core.io import DataError
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.data import load_semantic_ids
from pipeline.training.loop import fit
from tests.conftest import N_ITEMS, SMALL, feature_map, item_tables, toy_split, train_cfg

CPU = torch.device("cpu")
LEVELS, K = 2, 5


def codes_table(seed: int = 0) -> torch.Tensor:
    """(N+1, LEVELS) codes in 0..K-1, row 0 all -1."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, K, (N_ITEMS + 1, LEVELS), generator=g)
    codes[0] = -1
    return codes


def arch(model: str, item_repr: str):
    base = dataclasses.replace(SMALL, model=model, item_repr=item_repr)
    return base if model == "transformer_dcn" else dataclasses.replace(base, transformer_layers=1)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("item_repr", ["semantic", "id+semantic"])
def test_learnt_item_part_is_the_sum_of_its_code_embeddings(model: str, item_repr: str):
    torch.manual_seed(0)
    codes = codes_table()
    codes[2] = codes[1]  # a twin
    net = build_model(arch(model, item_repr), feature_map(), *item_tables(), codes)
    with torch.no_grad():
        net.code_emb.weight[1:].normal_()  # FuxiCTR's init is ~1e-4: make the parts tell apart
    ids = torch.tensor([[0, 3, 7], [12, 12, 1]])
    table = net.code_emb.weight
    ref = torch.zeros(2, 3, SMALL.embedding_dim)
    for (r, c), i in np.ndenumerate(ids.numpy()):
        if i:
            ref[r, c] = sum(table[level * K + int(codes[i, level]) + 1] for level in range(LEVELS))
            if item_repr == "id+semantic":
                ref[r, c] += net.item_emb.weight[i]
    torch.testing.assert_close(net.learnt_item(ids), ref)
    assert (net.item_emb is None) == (item_repr == "semantic")
    assert net.code_emb.weight.shape == (LEVELS * K + 1, SMALL.embedding_dim)
    assert any(p is net.code_emb.weight for p in net.embedding_parameters())
    # items with the same codes have the same learnt part under `semantic` only
    same = torch.equal(net.learnt_item(torch.tensor([1])), net.learnt_item(torch.tensor([2])))
    assert same == (item_repr == "semantic")


def test_id_repr_builds_the_model_it_always_did():
    """item_repr id ignores any codes: no code table, no codes buffer, the same weights for a seed."""
    torch.manual_seed(0)
    plain = build_model(SMALL, feature_map(), *item_tables())
    torch.manual_seed(0)
    given = build_model(SMALL, feature_map(), *item_tables(), codes_table())
    assert given.code_emb is None and "item_codes" not in given.state_dict()
    assert list(plain.state_dict()) == list(given.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(v, given.state_dict()[k])


@pytest.mark.parametrize("codes", [None, codes_table()[:10]])
def test_semantic_repr_without_codes_for_every_item_names_the_key(codes):
    with pytest.raises(ValueError, match=r"^train\.item_repr 'semantic' needs semantic ids for 61 item rows"):
        build_model(dataclasses.replace(SMALL, item_repr="semantic"), feature_map(), *item_tables(), codes)


def test_checkpoint_keeps_the_codes_and_scores_the_same(tmp_path):
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(SMALL, item_repr="id+semantic"), feature_map(), *item_tables(),
                      codes_table()).eval()
    with torch.no_grad():
        net.code_emb.weight[1:].normal_()
    save_checkpoint(tmp_path / "m.pt", net, feature_map())
    back, _ = load_checkpoint(tmp_path / "m.pt", CPU)
    assert torch.equal(back.item_codes, net.item_codes)
    split = toy_split(40, seed=3)
    batch = {"item_seq": split.item_seq, "item_id": split.item_id, **split.context}
    torch.testing.assert_close(back(batch), net(batch), rtol=0, atol=0)


def test_an_item_never_trained_on_learns_through_its_codes():
    """Item 1 never appears in the train split. Under `id` its learnt part is still its initial id embedding after
    training; under `semantic` it moved, with the codes it shares with the items that were trained on."""
    train, valid = toy_split(600, seed=1), toy_split(200, seed=2)
    seen = (train.item_id != 1) & ~(train.item_seq == 1).any(dim=1)
    train = dataclasses.replace(train, item_seq=train.item_seq[seen], item_id=train.item_id[seen],
                                context={k: v[seen] for k, v in train.context.items()}, label=train.label[seen],
                                user_id=train.user_id[seen])
    moved = {}
    for item_repr in ("id", "semantic"):
        torch.manual_seed(0)
        net = build_model(dataclasses.replace(SMALL, item_repr=item_repr), feature_map(), *item_tables(),
                          codes_table())
        before = net.learnt_item(torch.tensor([1])).detach().clone()
        fit(net, train, valid, train_cfg(epochs=2, patience=5), CPU)
        moved[item_repr] = float((net.learnt_item(torch.tensor([1])).detach() - before).abs().max())
    assert moved["id"] == 0.0 and moved["semantic"] > 1e-3


def _ids_file(path, codes, ids=None) -> str:
    n = len(codes)
    pl.DataFrame({"item_id": pl.Series(ids if ids is not None else np.arange(n), dtype=pl.Int32),
                  "codes": pl.Series(codes, dtype=pl.List(pl.Int16))}).write_parquet(path)
    return str(path)


def test_semantic_ids_reader_checks_its_contract(tmp_path):
    good = [[-1, -1], [0, 3], [4, 4]]
    np.testing.assert_array_equal(load_semantic_ids(_ids_file(tmp_path / "a.parquet", good), 3).numpy(), good)
    cases = [
        (good, 4, None, r"codes for 2 items, the item table has 3 \(rerun quantize\)"),
        ([[0, 0], [0, 3], [4, 4]], 3, None, r"row 0: codes must be -1 for row 0"),
        ([[-1, -1], [0, 3], [4, -2]], 3, None, r"row 2: codes must be -1 for row 0 \(padding\) and >= 0"),
        ([[-1, -1], [0, 3], [4]], 3, None, r"row 2: codes has length 1, expected length 2"),
        (good, 3, [0, 2, 1], r"row 1 holds item_id 2"),
    ]
    for i, (codes, n_rows, ids, message) in enumerate(cases):
        path = _ids_file(tmp_path / f"bad{i}.parquet", codes, ids)
        with pytest.raises(DataError, match=message):
            load_semantic_ids(path, n_rows)
