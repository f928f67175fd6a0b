"""pipeline/itememb/pca.py against sklearn, pipeline/itememb/neighbours.py (faiss, exact and approximate) against
the exact numpy reference, and the `mmctr neighbours` command with its cover gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from sklearn.decomposition import PCA

from pipeline.cli.main import main
from pipeline.core.config import ParamsError
from pipeline.core.io import DataError
from pipeline.core.items import mean_norm_rows, nonzero_rows, unit_rows
from pipeline.itememb.gallery import (
    GALLERY_CAPTION,
    GALLERY_COLUMNS,
    GALLERY_COVER,
    GALLERY_MAX_NEIGHBOURS,
    PLACEHOLDER_GREY,
    gallery_size,
)
from pipeline.itememb.neighbours import (
    approx_index,
    exact_topk,
    faiss_index,
    faiss_topk,
    item_neighbours,
    recall_at_k,
    result_cosines,
    usable_items,
)
from pipeline.itememb.pca import FittedPCA, Normalizer, aligned_matrices, fit_pca
from pipeline.itememb.report import neighbours_without_self


def _embeddings(n: int = 80, ft: int = 12, fi: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 4))
    text = (latent @ rng.normal(size=(4, ft)) + 0.3 * rng.normal(size=(n, ft)) + 2.0).astype(np.float32)
    image = (5 * latent @ rng.normal(size=(4, fi)) + rng.normal(size=(n, fi))).astype(np.float32)
    return text, image


def _normalise(x: np.ndarray, mode: str) -> np.ndarray:
    x = x.astype(np.float64)
    if mode == "l2":
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if mode == "standard":
        return (x - x.mean(axis=0)) / x.std(axis=0)
    return x


def _frame(ids: list[int] | np.ndarray, emb: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"item_id": pl.Series(ids, dtype=pl.Int32),
                         "emb": pl.Series(emb, dtype=pl.Array(pl.Float32, emb.shape[1]))})


# ---------------------------------------------------------------------------------------------- PCA


@pytest.mark.parametrize("normalize", ["l2", "standard", "none"])
@pytest.mark.parametrize("dim", [1, 5, 21])
def test_transform_equals_sklearn_on_normalised_concat(normalize: str, dim: int) -> None:
    text, image = _embeddings()
    fitted = fit_pca(text, image, dim=dim, normalize=normalize, seed=0)
    x = np.concatenate([_normalise(text, normalize), _normalise(image, normalize)], axis=1)
    expected = PCA(n_components=dim, svd_solver="full").fit_transform(x)
    got = fitted.transform(text, image)
    assert got.shape == (80, dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert fitted.explained_variance_ratio.shape == (dim,)
    assert fitted.explained_variance_ratio.sum() <= 1 + 1e-9


def test_standard_normaliser_ignores_constant_columns() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    norm = Normalizer.fit(x, "standard")
    out = norm(x)
    np.testing.assert_allclose(out[:, 0], (x[:, 0] - 3.0) / x[:, 0].std())
    np.testing.assert_array_equal(out[:, 1], 0.0)


def test_items_with_no_text_and_no_image_get_a_zero_row() -> None:
    """Both inputs zero (title and cover unusable): a zero row, as in the extracted tables, not the one vector
    -mean @ components.T that every such item would share (each the others' perfect neighbour)."""
    text, image = _embeddings()
    text[[3, 9]] = 0.0
    image[[3, 9, 11]] = 0.0  # item 11 keeps its text
    scores = fit_pca(text, image, dim=4, normalize="l2", seed=0).transform(text, image)
    assert not scores[[3, 9]].any() and scores[11].any() and np.delete(scores, [3, 9], axis=0).any(axis=1).all()


def test_transform_applies_the_fitted_statistics_to_new_rows() -> None:
    text, image = _embeddings(seed=1)
    fitted = fit_pca(text[:60], image[:60], dim=4, normalize="standard", seed=0)
    # transforming one row alone must not re-estimate mean/std from that row
    np.testing.assert_allclose(fitted.transform(text[70:71], image[70:71]), fitted.transform(text, image)[70:71],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", ["l2", "standard", "none"])
def test_save_load_round_trip(tmp_path: Path, normalize: str) -> None:
    text, image = _embeddings(seed=2)
    fitted = fit_pca(text, image, dim=6, normalize=normalize, seed=0)
    path = tmp_path / "pca.npz"
    fitted.save(path)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert all(z[name].dtype != object for name in z.files)
    loaded = FittedPCA.load(path)
    assert loaded.text.mode == loaded.image.mode == normalize
    np.testing.assert_array_equal(loaded.transform(text, image), fitted.transform(text, image))
    np.testing.assert_array_equal(loaded.explained_variance_ratio, fitted.explained_variance_ratio)
    assert [p.name for p in tmp_path.iterdir()] == ["pca.npz"]  # no temporary file left behind


def test_load_rejects_a_non_pca_file(tmp_path: Path) -> None:
    path = tmp_path / "pca.npz"
    np.savez(path, mean=np.zeros(3))
    with pytest.raises(DataError, match="not a fitted PCA file"):
        FittedPCA.load(path)


@pytest.mark.parametrize(("n", "dim"), [(10, 11), (80, 22), (80, 100)])
def test_dim_above_min_items_features_is_a_params_error(n: int, dim: int) -> None:
    text, image = _embeddings(n=n)
    with pytest.raises(ParamsError) as info:
        fit_pca(text, image, dim=dim, normalize="l2", seed=0)
    assert str(info.value).startswith(f"fit_pca.dim: {dim} exceeds")


def test_l2_leaves_zero_rows_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = Normalizer.fit(x, "l2")(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(unit_rows(x), out)
    assert not np.isnan(out).any()


def test_mean_norm_rows_rescales_the_table_by_one_factor() -> None:
    """The nonzero rows' mean norm becomes 1 and every row is divided by that one factor, so directions, cosines and
    ratios of norms stay; zero rows (the padding row, items with no embedding) stay zero and do not count."""
    x = np.array([[0.0, 0.0], [6.0, 8.0], [0.0, 20.0], [0.0, 0.0]], dtype=np.float32)  # norms 0, 10, 20, 0
    out, scale = mean_norm_rows(x)
    assert scale == 15.0 and out.dtype == np.float32
    np.testing.assert_allclose(out, x / 15.0, rtol=1e-7)
    assert np.linalg.norm(out[[1, 2]], axis=1).mean() == pytest.approx(1.0)
    # the scale a provider's PCA happened to have does not reach the model: any multiple gives the same table
    rng = np.random.default_rng(0)
    y = rng.standard_normal((50, 8)) * rng.gamma(2.0, size=(50, 1))
    np.testing.assert_allclose(mean_norm_rows(37.5 * y)[0], mean_norm_rows(y)[0], rtol=1e-6)
    zeros, unit = mean_norm_rows(np.zeros((3, 4)))
    assert unit == 1.0 and not zeros.any()



def test_one_rule_for_an_item_without_content() -> None:
    """`nonzero_rows` is the one test of a content-less item: usable_items (neighbours, quantize) and mean_norm_rows
    (fit_pca's rescale) agree on which rows are empty, a row with one tiny value included."""
    x = np.array([[0.0, 0.0], [1e-30, 0.0], [3.0, 4.0], [-0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_array_equal(nonzero_rows(x), [False, True, True, False, True])
    np.testing.assert_array_equal(usable_items(x), [1, 2, 4])  # row 0 is padding, never an item
    assert mean_norm_rows(x)[1] == pytest.approx((1e-30 + 5.0 + 2.0) / 3)

# ---------------------------------------------------------------------------------------------- aligned_matrices


def test_aligned_matrices_join_by_id() -> None:
    text, image = _embeddings(n=30)
    ids = np.arange(1, 31)
    base = aligned_matrices(_frame(ids, text), _frame(ids, image))
    assert base[0].tolist() == ids.tolist()
    np.testing.assert_array_equal(base[1], text)
    np.testing.assert_array_equal(base[2], image)
    perm = np.random.default_rng(0).permutation(30)
    for t, i in [(_frame(ids[perm], text[perm]), _frame(ids, image)),
                 (_frame(ids, text), _frame(ids[perm], image[perm])),
                 (_frame(ids[perm], text[perm]), _frame(ids[perm[::-1]], image[perm[::-1]]))]:
        got = aligned_matrices(t, i)
        for a, b in zip(got, base):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("text_ids", "image_ids", "item", "side"), [
    ([1, 2, 3, 4], [1, 2, 4], 3, "image"),
    ([1, 2, 4], [4, 3, 2, 1], 3, "text"),
    ([2, 3], [1, 2, 3, 9], 1, "text"),
])
def test_aligned_matrices_missing_id_names_id_and_side(text_ids: list[int], image_ids: list[int], item: int,
                                                       side: str) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DataError) as info:
        aligned_matrices(_frame(text_ids, rng.normal(size=(len(text_ids), 3))),
                         _frame(image_ids, rng.normal(size=(len(image_ids), 2))))
    assert str(info.value).startswith(f"item_id {item} has no {side} embedding")


# ---------------------------------------------------------------------------------------------- neighbours


def _assert_same_topk(got: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> None:
    (gs, gi), (rs, ri) = got, ref
    assert gs.shape == rs.shape and gi.shape == ri.shape
    np.testing.assert_allclose(gs, rs, atol=1e-5)
    # indices must agree wherever the score is clear of the scores ranked next to it
    step = rs[:, :-1] - rs[:, 1:]  # (Q, k-1)
    gap = np.full(rs.shape, np.inf)
    gap[:, 1:] = step
    gap[:, :-1] = np.minimum(gap[:, :-1], step)
    clear = gap > 1e-5
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(gi[clear], ri[clear])


@pytest.mark.parametrize("k", [1, 5, 17, 200])
@pytest.mark.parametrize("seed", [0, 1])
def test_faiss_topk_equals_exact(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(200, 16)).astype(np.float32) * rng.uniform(0.1, 10, size=(200, 1))
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    got = faiss_topk(faiss_index(vectors, use_gpu=False), queries, k)
    ref = exact_topk(vectors, queries, k)
    _assert_same_topk(got, ref)
    assert (np.diff(ref[0], axis=1) <= 1e-7).all()  # best first


def test_exact_topk_breaks_ties_by_lower_index() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    scores, idx = exact_topk(vectors, np.array([[5.0, 0.0]]), 4)
    assert idx.tolist() == [[0, 2, 3, 1]]
    np.testing.assert_allclose(scores, [[1, 1, 1, 0]])
    # faiss returns tied rows highest first; faiss_topk orders them as the reference does
    tied = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)  # rows 0-4, 5-9, 10-14: three directions
    got = faiss_topk(faiss_index(tied, use_gpu=False), tied[[7]], 5)
    assert got[1].tolist() == exact_topk(tied, tied[[7]], 5)[1].tolist() == [[5, 6, 7, 8, 9]]


def _item_table(n: int = 60, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(n + 1, d)).astype(np.float32)
    table[0] = 0.0
    return table


@pytest.mark.parametrize("k", [1, 4, 59, 100])
def test_item_neighbours_match_the_exact_ranking(k: int) -> None:
    table = _item_table()
    for item_id in (1, 17, 60):
        found = item_neighbours(table, item_id, k)
        scores, rows = exact_topk(table, table[item_id:item_id + 1], table.shape[0])
        expected = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r not in (0, item_id)][:k]
        assert len(found) == min(k, 59)
        assert [i for i, _ in found] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)
        assert all(0 < i <= 60 and i != item_id for i, _ in found)
        assert all(a[1] >= b[1] for a, b in zip(found, found[1:]))


def test_item_neighbours_exclude_the_query_even_with_a_duplicate() -> None:
    table = _item_table()
    table[9] = table[4] * 3  # same direction: cosine 1 with item 4
    found = item_neighbours(table, 4, 3)
    assert found[0][0] == 9 and found[0][1] == pytest.approx(1.0, abs=1e-5)
    assert 4 not in [i for i, _ in found]


def test_items_with_a_zero_vector_are_neither_neighbours_nor_queries() -> None:
    """An item whose title and cover were unusable has a zero row: no direction, so it is never listed (it was, at
    cosine 0, above every item of negative cosine) and asking for its neighbours is an error, as embedding_report
    leaves such items out."""
    table = _item_table()
    table[[3, 8, 20]] = 0.0
    table[5] = -table[1]  # every other item's cosine with item 1 made negative below
    table[2:] = -np.abs(table[2:]) * np.sign(table[1])
    found = item_neighbours(table, 1, 59)
    assert not {3, 8, 20} & {i for i, _ in found} and len(found) == 56
    assert all(s < 0 for _, s in found)
    with pytest.raises(ValueError, match=r"item 8 has a zero vector in the item table"):
        item_neighbours(table, 8, 3)


@pytest.mark.parametrize("item_id", [0, -1, 61, 1000])
def test_item_neighbours_reject_ids_outside_the_table(item_id: int) -> None:
    with pytest.raises(ValueError, match=f"item {item_id} is not in the item table"):
        item_neighbours(_item_table(), item_id, 3)


# ---------------------------------------------------------------------------------------------- mmctr neighbours


def _write_item_info(tmp_path: Path, table: np.ndarray, order: np.ndarray | None = None) -> Path:
    n = table.shape[0]
    order = np.arange(n) if order is None else order
    info = pl.DataFrame({
        "item_id": pl.Series(np.arange(n)[order], dtype=pl.Int32),
        "item_tags": pl.Series([[0, i % 3] for i in order], dtype=pl.List(pl.Int32)),
        "item_emb_d4": pl.Series(table[order], dtype=pl.Array(pl.Float32, 4)),
    })
    path = tmp_path / "item_info.parquet"
    info.write_parquet(path)
    return path


def _cli_files(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(4)
    table = rng.normal(size=(13, 4)).astype(np.float32)
    table[0] = 0.0
    table[11] = table[5] * 2 + 0.01 * rng.normal(size=4).astype(np.float32)  # near-duplicate of item 5
    titles = tmp_path / "title_en.csv"
    titles.write_text("".join(f"{i},title {i}, part two\n" for i in range(1, 13)))
    return _write_item_info(tmp_path, table), titles, table


def test_cli_neighbours_prints_hostile_titles_on_one_line(tmp_path: Path) -> None:
    """A (quoted, multi-line) title holding a fake result row, an ESC colour sequence and a bidi override: printed
    as escapes on its own line, so the listing keeps its k + 1 lines; emoji and other text are kept."""
    info, titles, table = _cli_files(tmp_path)
    hostile = 'x\n  9  99  1.000  fake row\x1b[31m red \u202eevil 猫 👍'
    text = titles.read_text().replace("5,title 5, part two\n", '5,"' + hostile + '"\n')
    titles.write_text(text)
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", "3", "--item-info", str(info),
                                       "--titles", str(titles)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and "\x1b" not in result.output and "\u202e" not in result.output
    assert lines[0] == "query 5: x\\n  9  99  1.000  fake row\\x1b[31m red \\u202eevil 猫 👍"


def test_cli_neighbours_lists_k_nearest_with_titles(tmp_path: Path) -> None:
    info, titles, table = _cli_files(tmp_path)
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", "4", "--item-info", str(info),
                                       "--titles", str(titles)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "query 5: title 5, part two"
    assert len(lines) == 5
    parsed = [line.split(maxsplit=3) for line in lines[1:]]
    assert [int(p[0]) for p in parsed] == [1, 2, 3, 4]
    ids = [int(p[1]) for p in parsed]
    assert ids[0] == 11  # the planted near-duplicate
    assert all(p[3] == f"title {i}, part two" for p, i in zip(parsed, ids))
    expected = [i for i, _ in item_neighbours(table, 5, 4)]
    assert ids == expected
    scores = [float(p[2]) for p in parsed]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.99


@pytest.mark.parametrize("item", ["0", "13", "99"])
def test_cli_neighbours_unknown_item_is_one_line(tmp_path: Path, item: str) -> None:
    info, titles, _ = _cli_files(tmp_path)
    result = CliRunner().invoke(main, ["neighbours", "--item", item, "--item-info", str(info),
                                       "--titles", str(titles)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: item {item} is not in the item table (ids 1..12)"


def test_cli_neighbours_rejects_a_shuffled_item_table(tmp_path: Path) -> None:
    _, titles, table = _cli_files(tmp_path)
    info = _write_item_info(tmp_path, table, order=np.array([0, 1, 3, 2, *range(4, 13)]))
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "--item-info", str(info),
                                       "--titles", str(titles)])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"Error: {info}: row 2 holds item_id 3")
    assert len(result.output.strip().splitlines()) == 1


def test_cli_neighbours_reads_a_list_column_and_refuses_a_nan_row(tmp_path: Path) -> None:
    """The embedding column is read as the pipeline's readers read it: a List column (as the challenge's own
    item_info stores item_emb_d128) gives the same neighbours as an Array one; a NaN in one row, which would drop
    that item from every listing, and rows of unequal length are one line naming the file, row and column."""
    info, titles, table = _cli_files(tmp_path)
    as_array = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", "4", "--item-info", str(info),
                                         "--titles", str(titles)])
    frame = pl.read_parquet(info)
    listed = tmp_path / "listed.parquet"
    frame.with_columns(pl.col("item_emb_d4").cast(pl.List(pl.Float64))).write_parquet(listed)
    as_list = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", "4", "--item-info", str(listed),
                                        "--titles", str(titles)])
    assert as_list.exit_code == 0 and as_list.output == as_array.output
    rows = [list(map(float, r)) for r in table]
    for bad, message in ((lambda r: r.__setitem__(7, [0.1, float("nan"), 0.2, 0.3]),
                          "row 7: item_emb_d4 holds a non-finite value"),
                         (lambda r: r.__setitem__(3, [0.1, 0.2]),
                          "row 3: item_emb_d4 has length 2, expected length 4")):
        broken_rows = [list(r) for r in rows]
        bad(broken_rows)
        broken = tmp_path / "broken.parquet"
        frame.with_columns(pl.Series("item_emb_d4", broken_rows, dtype=pl.List(pl.Float64))).write_parquet(broken)
        result = CliRunner().invoke(main, ["neighbours", "--item", "1", "--item-info", str(broken), "--titles",
                                           str(titles)])
        assert result.exit_code == 1 and result.output.strip() == f"Error: {broken}: {message}"


def test_cli_neighbours_gallery_has_a_bounded_canvas(tmp_path: Path) -> None:
    """-k sizes the gallery's canvas: past GALLERY_MAX_NEIGHBOURS tiles it is a usage error, before any work (the
    challenge's 91,717 items would ask for an 8 GiB image)."""
    info, titles, _ = _cli_files(tmp_path)
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", str(GALLERY_MAX_NEIGHBOURS + 1),
                                       "--item-info", str(info), "--titles", str(titles), "--gallery",
                                       str(tmp_path / "g.png")])
    assert result.exit_code == 2 and f"--gallery draws at most {GALLERY_MAX_NEIGHBOURS} neighbours" in result.output
    assert not (tmp_path / "g.png").exists()


def test_cli_neighbours_on_a_table_without_items_says_so(tmp_path: Path) -> None:
    _, titles, table = _cli_files(tmp_path)
    info = _write_item_info(tmp_path, table[:1])  # the padding row only
    result = CliRunner().invoke(main, ["neighbours", "--item", "1", "--item-info", str(info), "--titles", str(titles)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {info}: holds no items (row 0 is the padding item, items 1..N follow it)"


def test_cli_neighbours_refuses_a_params_file_that_is_not_there(tmp_path: Path) -> None:
    """Only the default params.yaml may be absent (the defaults are used); a --params the user named must exist."""
    info, titles, _ = _cli_files(tmp_path)
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "--item-info", str(info), "--titles",
                                       str(titles), "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and result.output.strip() == f"Error: {tmp_path / 'nope.yaml'}: params file not found"


def _semantic_ids(tmp_path: Path, codes: list[list[int]]) -> Path:
    path = tmp_path / "semantic_ids.parquet"
    pl.DataFrame({"item_id": pl.Series(np.arange(len(codes)), dtype=pl.Int32),
                  "codes": pl.Series(codes, dtype=pl.Array(pl.Int16, 3))}).write_parquet(path)
    return path


CODES = [[-1, -1, -1], [0, 0, 0], [1, 2, 3], [0, 0, 1], [1, 2, 0], [0, 1, 1], [0, 0, 2], [2, 2, 2], [0, 0, 0],
         [1, 0, 0], [0, 1, 0], [0, 5, 5], [3, 3, 3]]


def test_cli_neighbours_by_codes_ranks_by_shared_prefix_then_cosine(tmp_path: Path) -> None:
    """Item 1's codes (0, 0, 0): item 8 shares all three, items 3 and 6 two, items 5, 10, 11 one; equal prefixes
    go by cosine, and items sharing no code are not listed."""
    info, titles, table = _cli_files(tmp_path)
    ids_path = _semantic_ids(tmp_path, CODES)
    result = CliRunner().invoke(main, ["neighbours", "--item", "1", "-k", "10", "--by", "codes", "--item-info",
                                       str(info), "--titles", str(titles), "--semantic-ids", str(ids_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[1] == f"(only 6 other items share a code with it in {ids_path}: showing all of them, not 10)"
    parsed = [line.split() for line in lines[2:]]
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit[1]
    by_cos = lambda ids: sorted(ids, key=lambda i: -cos[i])  # noqa: E731
    assert [int(p[1]) for p in parsed] == [8, *by_cos([3, 6]), *by_cos([5, 10, 11])]
    assert [p[4] for p in parsed] == ["3/3", "2/3", "2/3", "1/3", "1/3", "1/3"]
    assert [float(p[2]) for p in parsed] == pytest.approx([cos[int(p[1])] for p in parsed], abs=1e-3)


def test_cli_neighbours_by_codes_leaves_out_items_with_a_zero_vector(tmp_path: Path) -> None:
    """Items without content share the zero vector's code: as in cosine search they are never listed, and a
    query of one is an error."""
    _, titles, table = _cli_files(tmp_path)
    table[[6, 8]] = 0.0  # item 8 shares all of item 1's codes, item 6 two
    info = _write_item_info(tmp_path, table)
    ids_path = _semantic_ids(tmp_path, CODES)
    args = ["--by", "codes", "--item-info", str(info), "--titles", str(titles), "--semantic-ids", str(ids_path)]
    result = CliRunner().invoke(main, ["neighbours", "--item", "1", "-k", "10", *args])
    assert result.exit_code == 0, result.output
    assert [int(line.split()[1]) for line in result.output.strip().splitlines()[2:]] == [3, 5, 10, 11] or \
        {int(line.split()[1]) for line in result.output.strip().splitlines()[2:]} == {3, 5, 10, 11}
    result = CliRunner().invoke(main, ["neighbours", "--item", "8", *args])
    assert result.exit_code == 1 and "item 8 has a zero vector in the item table" in result.output


def test_cli_neighbours_by_codes_needs_codes_for_every_item(tmp_path: Path) -> None:
    info, titles, _ = _cli_files(tmp_path)
    short = _semantic_ids(tmp_path, CODES[:-2])
    result = CliRunner().invoke(main, ["neighbours", "--item", "1", "--by", "codes", "--item-info", str(info),
                                       "--titles", str(titles), "--semantic-ids", str(short)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {short}: codes for 10 items, the item table has 12 (rerun quantize: "
                                     "`dvc repro`)")
    missing = tmp_path / "none.parquet"
    result = CliRunner().invoke(main, ["neighbours", "--item", "1", "--by", "codes", "--item-info", str(info),
                                       "--titles", str(titles), "--semantic-ids", str(missing)])
    assert result.output.strip() == f"Error: {missing}: file not found (run `dvc repro` first, or pass --semantic-ids)"


# ---------------------------------------------------------------------------------------------- approximate indexes


def _clustered(n: int = 2000, d: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return (centres[rng.integers(0, clusters, size=n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_recall_at_k_counts_results_as_near_as_the_exact_kth() -> None:
    exact = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, 0.3, 0.2]])
    assert recall_at_k(exact, exact) == 1.0
    missed = np.array([[0.6, 0.7, 0.1, 0.0], [-np.inf] * 4])  # two of row 0's; nothing for row 1 (faiss's -1)
    assert recall_at_k(missed, exact) == pytest.approx((2 / 4 + 0) / 2)
    assert recall_at_k(exact[:, ::-1], exact) == 1.0  # order within the top k does not matter
    assert recall_at_k(np.array([[0.9, 0.8, 0.7, 0.6 - 1e-7]]), exact[:1]) == 1.0  # tied with the k-th: found
    with pytest.raises(ValueError, match="shapes"):
        recall_at_k(exact[:, :2], exact)


def test_recall_of_tied_neighbours_is_by_nearness_not_by_which_tied_id() -> None:
    """Groups of identical vectors: exact search keeps the lowest ids of a tied group, an approximate search any of
    them; each is as near, so recall counts it (by ids, HNSW's recall read 0.70 where its results were as near)."""
    rng = np.random.default_rng(0)
    table = np.vstack([np.zeros((1, 8)), np.repeat(rng.normal(size=(50, 8)), 40, axis=0)]).astype(np.float32)
    ids = usable_items(table)
    queries = ids[::97]
    exact = neighbours_without_self(approx_index(table[ids], "flat"), table, ids, queries, 10)
    shuffled = exact.copy()
    for row, q in zip(shuffled, queries):  # the same group's other members, as an approximate index might give
        group = (q - 1) // 40
        others = [i for i in range(group * 40 + 1, group * 40 + 41) if i != q]
        row[:] = rng.choice(others, size=10, replace=False)
    assert recall_at_k(result_cosines(table, queries, shuffled), result_cosines(table, queries, exact)) == 1.0


def test_flat_index_equals_exact() -> None:
    vectors = _clustered(300)
    queries = vectors[::7]
    got = approx_index(vectors, "flat").search(unit_rows(queries), 10)
    _assert_same_topk(got, exact_topk(vectors, queries, 10))


@pytest.mark.parametrize("kind, knobs", [("ivf", {"nlist": 32, "nprobe": 16}),
                                         ("hnsw", {"hnsw_m": 16, "ef_search": 128})])
def test_approximate_index_recall_is_high_with_generous_search(kind: str, knobs: dict) -> None:
    vectors = _clustered()
    queries = vectors[::10]
    _, approx = approx_index(vectors, kind, seed=0, **knobs).search(unit_rows(queries), 10)
    _, exact = exact_topk(vectors, queries, 10)
    assert recall_at_k(approx, exact) > 0.9
    scores, _ = approx_index(vectors, kind, seed=0, **knobs).search(unit_rows(queries), 10)
    assert (scores <= 1 + 1e-5).all()  # inner products of unit rows are cosines


def test_ivf_with_one_probe_loses_recall_and_is_reproducible() -> None:
    vectors = _clustered(seed=1)
    queries = vectors[::10]
    _, exact = exact_topk(vectors, queries, 10)
    runs = [approx_index(vectors, "ivf", nlist=64, nprobe=1, seed=3).search(unit_rows(queries), 10)[1]
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert recall_at_k(runs[0], exact) < recall_at_k(
        approx_index(vectors, "ivf", nlist=64, nprobe=64, seed=3).search(unit_rows(queries), 10)[1], exact)


def test_unknown_index_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown index 'lsh'"):
        approx_index(_clustered(50), "lsh")


# ---------------------------------------------------------------------------------------------- gallery


def _colour(item: int) -> tuple[int, int, int]:
    return (30 + 17 * item % 200, 200 - 13 * item % 180, 40 + 29 * item % 200)


def _raw_dir(tmp_path: Path, missing: int) -> Path:
    from PIL import Image

    raw = tmp_path / "raw"
    (raw / "covers").mkdir(parents=True)
    for name in ("pairs.csv", "likes_and_views.txt"):
        (raw / name).write_text("")
    for item in range(1, 13):
        if item != missing:
            Image.new("RGB", (64, 48), _colour(item)).save(raw / "covers" / f"{item}.jpg", quality=95)
    return raw


def _tile_mean(img, pos: int) -> np.ndarray:
    x = (pos % GALLERY_COLUMNS) * GALLERY_COVER
    y = (pos // GALLERY_COLUMNS) * (GALLERY_COVER + GALLERY_CAPTION)
    m = 10  # inside the query's frame
    return np.asarray(img.crop((x + m, y + m, x + GALLERY_COVER - m, y + GALLERY_COVER - m))).reshape(-1, 3).mean(0)


@pytest.mark.parametrize("k", [3, 5, 8])
def test_cli_neighbours_gallery_draws_query_and_neighbour_covers(tmp_path: Path, k: int) -> None:
    from PIL import Image

    info, titles, table = _cli_files(tmp_path)
    found = [i for i, _ in item_neighbours(table, 5, k)]
    raw = _raw_dir(tmp_path, missing=found[1])
    (raw / "title_en.csv").write_text(titles.read_text())
    out = tmp_path / "g" / "gallery.png"
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", str(k), "--item-info", str(info),
                                       "--titles", str(titles), "--raw-dir", str(raw), "--gallery", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"gallery: {out}"
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == gallery_size(k + 1)
        cols = min(k + 1, GALLERY_COLUMNS)
        rows = -(-(k + 1) // GALLERY_COLUMNS)
        assert img.size == (cols * GALLERY_COVER, rows * (GALLERY_COVER + GALLERY_CAPTION))
        img = img.convert("RGB")
        for pos, item in enumerate([5, *found]):
            want = PLACEHOLDER_GREY if item == found[1] else _colour(item)
            np.testing.assert_allclose(_tile_mean(img, pos), want, atol=4)
    assert [p.name for p in out.parent.iterdir()] == ["gallery.png"]  # no temporary left behind


def test_cli_neighbours_gallery_without_raw_folder_is_one_line(tmp_path: Path) -> None:
    info, titles, _ = _cli_files(tmp_path)
    out = tmp_path / "gallery.png"
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "--item-info", str(info), "--titles",
                                       str(titles), "--raw-dir", str(tmp_path / "nope"), "--gallery", str(out)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'nope'}: raw data directory not found"
    assert not out.exists()


def _broken_png(path: Path) -> None:
    """A 64x48 PNG with 6 bytes inserted in its image data: it opens, and decoding it raises SyntaxError ("broken
    PNG file"), which is not an OSError."""
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(png, format="PNG")
    data = png.getvalue()
    path.write_bytes(data[:107] + b"\xd6@99_\xf6" + data[107:])


@pytest.mark.parametrize("cover", ["bomb 64 Mpx", "bomb 400 Mpx", "broken PNG"])
def test_cli_neighbours_gallery_draws_a_bad_cover_grey(tmp_path: Path, cover: str) -> None:
    """64 Mpx is over GALLERY_MAX_PIXELS, 400 Mpx raises PIL's bomb error, and a broken PNG PIL's SyntaxError: each
    is a grey tile, and the gallery is written."""
    from PIL import Image

    info, titles, table = _cli_files(tmp_path)
    found = [i for i, _ in item_neighbours(table, 5, 3)]
    raw = _raw_dir(tmp_path, missing=0)
    (raw / "title_en.csv").write_text(titles.read_text())
    path = raw / "covers" / f"{found[0]}.jpg"
    if cover == "broken PNG":
        _broken_png(path)
    else:  # a tiny file, a huge image
        side = 8_000 if cover == "bomb 64 Mpx" else 20_000
        Image.new("1", (side, side)).save(path, format="PNG")
    out = tmp_path / "gallery.png"
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", "3", "--item-info", str(info),
                                       "--titles", str(titles), "--raw-dir", str(raw), "--gallery", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        np.testing.assert_allclose(_tile_mean(img.convert("RGB"), 1), PLACEHOLDER_GREY, atol=1)


@pytest.mark.parametrize("gallery, message", [
    ("g.jpg", "g.jpg: the gallery is a PNG image; give a path ending in .png"),
    ("title_en.csv/g.png", "title_en.csv/g.png: title_en.csv is a file, not a folder"),
])
def test_cli_neighbours_gallery_path_is_checked_first(tmp_path: Path, gallery: str, message: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    info, titles, _ = _cli_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "--item-info", str(info), "--titles",
                                       str(titles), "--gallery", gallery])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: " + message.format(tmp=tmp_path)


def test_cli_help_version_and_hints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CliRunner().invoke(main, ["-h"]).output.startswith("Usage: ")
    assert CliRunner().invoke(main, ["--version"]).output.startswith("mmctr, version ")
    assert "how many neighbours" in CliRunner().invoke(main, ["neighbours", "-h"]).output
    info, titles, table = _cli_files(tmp_path)
    result = CliRunner().invoke(main, ["neighbours", "--item", "5", "-k", "500", "--item-info", str(info),
                                       "--titles", str(titles)])
    n_other = table.shape[0] - 2
    assert result.exit_code == 0
    assert f"(only {n_other} other items in {info}: showing all of them, not 500)" in result.output
    assert len(result.output.strip().splitlines()) == n_other + 2
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["neighbours", "--item", "5"])
    assert result.output.strip() == ("Error: data/features/item_info.parquet: file not found (run `dvc repro` "
                                     "first, or pass --item-info)")
    result = CliRunner().invoke(main, ["compare", "--dry-run"])
    assert result.exit_code == 2 and "--dry-run goes with --queue" in result.output
