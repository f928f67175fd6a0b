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
from tests.conftest import N_ITEMS, SMALL, check_training_dropout, feature_map, item_tables, toy_split, train_cfg

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
                  "codes": pl.Series(codes, dtype=pl.List(pl.Int64))}).write_parquet(path)
    return str(path)


def test_semantic_ids_reader_checks_its_contract(tmp_path):
    good = [[-1, -1], [0, 3], [4, 4]]
    np.testing.assert_array_equal(load_semantic_ids(_ids_file(tmp_path / "a.parquet", good), 3).numpy(), good)
    cases = [
        (good, 4, None, r"codes for 2 items, the item table has 3 \(rerun quantize: `dvc repro`\)"),
        ([[0, 0], [0, 3], [4, 4]], 3, None, r"row 0: codes must be -1 for row 0"),
        ([[-1, -1], [0, 3], [4, -2]], 3, None, r"row 2: codes must be -1 for row 0 \(padding\) and in 0\.\.32767"),
        # a hostile code would size the code table: it is refused before any model is built
        ([[-1, -1], [0, 3], [4, 1 << 15]], 3, None, r"row 2: codes must be -1 for row 0 \(padding\) and in 0"),
        ([[-1, -1], [0, -1], [4, 4]], 3, None, r"row 1: codes must be -1"),  # an item's -1: its row, not row 0
        ([None, [0, 3], [4, 4]], 3, None, r"row 0: codes is null"),
        ([[-1] * 65, [0] * 65, [1] * 65], 3, None, r"lists of length 65, expected 1\.\.64"),
        ([[-1, -1], [0, 3], [4]], 3, None, r"row 2: codes has length 1, expected length 2"),
        (good, 3, [0, 2, 1], r"row 1 holds item_id 2"),
    ]
    for i, codes in enumerate(([["-1"], ["x"], ["2"]], [-1, 1, 2])):  # strings, and no lists at all
        path = tmp_path / f"dtype{i}.parquet"
        pl.DataFrame({"item_id": pl.Series([0, 1, 2], dtype=pl.Int32), "codes": codes}).write_parquet(path)
        with pytest.raises(DataError, match=r"column 'codes' has dtype .*, expected a list of integers"):
            load_semantic_ids(path, 3)
    huge = tmp_path / "huge.parquet"  # unsigned codes past int64
    pl.DataFrame({"item_id": pl.Series([0, 1, 2], dtype=pl.Int32),
                  "codes": pl.Series([[1], [2], [1 << 63]], dtype=pl.List(pl.UInt64))}).write_parquet(huge)
    with pytest.raises(DataError, match=r"huge\.parquet: column 'codes' does not fit Int64"):
        load_semantic_ids(huge, 3)
    for i, (codes, n_rows, ids, message) in enumerate(cases):
        path = _ids_file(tmp_path / f"bad{i}.parquet", codes, ids)
        with pytest.raises(DataError, match=message):
            load_semantic_ids(path, n_rows)


def test_mm_prior_is_the_principal_projection_of_the_frozen_embedding():
    """mm_prior against sklearn's PCA (same directions up to sign, sign fixed by the largest loading), rows of mean
    norm 1, zero columns past the embedding's rank, and the same table on every call."""
    from sklearn.decomposition import PCA

    from model.layers import mm_prior

    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(4)) * torch.tensor([5.0, 4, 3, 2, 1, 0.5])
    got = mm_prior(x, 4).double().numpy()
    pca = PCA(n_components=4, svd_solver="full").fit(x.numpy().astype(np.float64))
    ref = pca.transform(x.numpy().astype(np.float64))
    ref *= np.sign(pca.components_[np.arange(4), np.abs(pca.components_).argmax(1)])
    ref /= np.linalg.norm(ref, axis=1).mean()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.linalg.norm(got, axis=1).mean() == pytest.approx(1.0, abs=1e-6)
    wide = mm_prior(x, 9)
    assert wide.shape == (50, 9) and torch.equal(wide[:, 6:], torch.zeros(50, 3))
    assert torch.equal(mm_prior(x, 4), mm_prior(x, 4))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_id_init_mm_starts_each_id_embedding_at_its_items_prior(model: str):
    """id_init mm: id rows 1..N are mm_prior of the frozen table (row 0 stays padding), far from FuxiCTR's
    ~1e-4 noise; two items with the same frozen embedding start at the same id embedding; nothing else changes."""
    tags, mm = item_tables()
    mm[2] = mm[1]
    cfg = dataclasses.replace(arch(model, "id"), id_init="mm")
    torch.manual_seed(0)
    net = build_model(cfg, feature_map(), tags, mm)
    torch.manual_seed(0)
    plain = build_model(dataclasses.replace(cfg, id_init="random"), feature_map(), tags, mm)
    from model.layers import mm_prior

    torch.testing.assert_close(net.item_emb.weight[1:], mm_prior(mm[1:], SMALL.embedding_dim))
    assert torch.equal(net.item_emb.weight[0], torch.zeros(SMALL.embedding_dim))
    assert torch.equal(net.item_emb.weight[1], net.item_emb.weight[2])
    random_max = float(plain.item_emb.weight.detach()[1:].norm(dim=1).max())
    assert random_max < 1e-2 < float(net.item_emb.weight.detach()[1:].norm(dim=1).min())
    for name, value in plain.state_dict().items():
        if name != "item_emb.weight":
            assert torch.equal(value, net.state_dict()[name]), name


def test_id_init_mm_needs_id_embeddings():
    with pytest.raises(ValueError, match=r"^train\.id_init: mm initialises the id embeddings"):
        dataclasses.replace(SMALL, item_repr="semantic", id_init="mm")


@pytest.mark.parametrize("item_repr", ["id", "id+semantic"])
def test_id_dropout_zeroes_whole_id_embeddings_in_training_only(item_repr: str):
    """train.id_dropout: in training each occurrence's learnt part loses its whole id embedding (keeping the
    semantic part) with that probability; in eval, and at 0, nothing changes and no random number is drawn."""
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(SMALL, item_repr=item_repr), feature_map(), *item_tables(), codes_table())
    with torch.no_grad():
        net.item_emb.weight[1:].normal_()
        if net.code_emb is not None:
            net.code_emb.weight[1:].normal_()
    ids = torch.randint(1, N_ITEMS + 1, (40, 25))
    net.eval()
    full = net.learnt_item(ids)
    check_training_dropout(net, "id_dropout", lambda: net.learnt_item(ids), full, full - net.item_emb(ids))


def test_id_dropout_needs_id_embeddings():
    from pipeline.core.config import TrainConfig, from_dict

    with pytest.raises(ValueError, match=r"^train\.id_dropout: drops id embeddings"):
        from_dict(TrainConfig, {"item_repr": "semantic", "id_dropout": 0.5}, "train")
