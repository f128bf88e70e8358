"""Text data for the transformer tasks: the user's files (or the packaged defaults) as the splits the
training loop and the comparison runner read.

Two tasks, two shapes:

* ``sequence-classification``: :class:`ClassificationData` — texts (optionally text pairs, GLUE
  style) with integer labels in ``train`` / ``val`` / ``test`` lists of :class:`TextExample`, the
  label names in ``labels``; :func:`encode_classification` turns a split into an
  :class:`EncodedSplit` (token ids per example, unpadded, and the labels);
* ``causal-lm``: :class:`LMData` — documents split into training and held-out documents (no
  document crosses the split), each side packed into fixed-length token blocks ``(n, seq_len)``.

Where the data comes from:

* :func:`load_classification` — ``"wordnet_glosses"`` (:data:`CLASSIFICATION_DEFAULT`: WordNet
  definitions labelled with their lexicographer class, from the Debian package ``wordnet-base``)
  or a ``.csv`` / ``.tsv`` (GLUE layout) / ``.jsonl`` / ``.json`` file with a text column (and
  optionally a second text column for pairs) and a label column; stratified, seeded
  train / val / test splits, or the test split from a file of its own;
* :func:`read_lm_documents` / :func:`load_lm_data` — documents from ``"glosses"``,
  ``"fortunes"`` (the Debian package ``fortunes``), ``"wikitext2"`` (the packaged WikiText-2 test
  text) or ``.txt`` / ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` files, split by document
  (:func:`split_documents`) and packed into blocks (:func:`pack_blocks`).

The files are read through ``datasets`` (local files only, nothing downloads; its cache goes to a
temporary folder that is removed afterwards, never to the user's home). ``datasets`` is imported
only when a file is read, so the package imports without it.

    >>> data = load_classification("glue/SST-2/train.tsv", text_column="sentence", seed=0)
    >>> enc = encode_classification(tokenizer, data.train, max_length=128)
    >>> lm = load_lm_data(tokenizer, ["notes.txt"], seq_len=256, max_train_blocks=512)
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import torch

from ..data.text import balanced_split, label_index, read_fortunes, read_wordnet_glosses
from ..errors import ConfigError, DependencyError
from .lm import pack_documents

__all__ = [
    "CLASSIFICATION_DEFAULT",
    "ClassificationData",
    "EncodedSplit",
    "LMData",
    "LM_DEFAULT",
    "LM_SOURCES",
    "TextExample",
    "encode_classification",
    "load_classification",
    "load_lm_data",
    "pack_blocks",
    "read_lm_documents",
    "split_documents",
]

#: The packaged classification data set :func:`load_classification` reads by default.
CLASSIFICATION_DEFAULT = "wordnet_glosses"
#: The packaged document sources :func:`read_lm_documents` / :func:`load_lm_data` read by default.
LM_DEFAULT = ("glosses", "fortunes")
#: The named (packaged) document sources of :func:`read_lm_documents`.
LM_SOURCES = ("glosses", "fortunes", "wikitext2")

@dataclass(frozen=True)
class TextExample:
    """One classification example: ``text`` (and ``text_pair`` for sentence-pair tasks), label index."""

    text: str
    label: int
    text_pair: Optional[str] = None


@dataclass
class ClassificationData:
    """Classification splits; ``labels[i]`` is the name of label index ``i``."""

    name: str
    labels: list[str]
    train: list[TextExample]
    val: list[TextExample]
    test: list[TextExample]
    meta: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.labels)


@dataclass
class EncodedSplit:
    """A tokenised classification split: ``input_ids[i]`` the token ids of example ``i`` (special
    tokens included, not padded), ``labels[i]`` its label; ``pad_id`` pads batches."""

    input_ids: list[list[int]]
    labels: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LMData:
    """Causal-LM blocks: ``train`` ``(n, seq_len)`` and ``held_out`` ``(m, seq_len)`` int64 token
    ids, packed from disjoint documents."""

    name: str
    train: torch.Tensor
    held_out: torch.Tensor
    seq_len: int
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# reading local files through ``datasets``

_TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json"}
_LM_FORMATS = {".txt": "text", **_TABLE_FORMATS}


class _Table(NamedTuple):
    """A file read whole: its format, column names, ``datasets`` features and columns as lists."""

    fmt: str
    columns: list[str]
    features: Any
    data: dict[str, list]


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """Silence ``datasets``' per-file progress bars while a file is read, restoring the caller's
    setting afterwards (reading a small local file is not worth a bar)."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is installed with the hf extra
        raise DependencyError("reading text data files needs the `datasets` package, which is not installed: "
                              "pip install 'inhernet[hf]' (or pip install datasets)") from exc
    return datasets


def _existing_file(path: Path, what: str) -> Path:
    """``path`` when it is a non-empty file; a ConfigError naming the file and the fix otherwise."""
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"{what} {str(path)!r} {where} (looked for {path.resolve()}): "
                          "give the path of a data file")
    with open(path, "rb") as fh:  # empty or whitespace only? (read in chunks: files can be large)
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return path
    raise ConfigError(f"{what} {str(path)!r} is empty: give a file with a header row and data rows "
                      "(.csv / .tsv), objects (.jsonl / .json) or text (.txt)")


def _read_table(path: Path, *, delimiter: str | None, what: str, formats: dict[str, str]) -> _Table:
    """Read a whole local file with the ``datasets`` builder its suffix names (``delimiter`` given:
    a delimited file whatever the suffix). ``.tsv`` and any tab-delimited file are read with
    ``quoting=csv.QUOTE_NONE`` (the GLUE layout: quote characters are text); ``.csv`` with the usual
    CSV quoting. Cells are read as written (``na_filter=False``: ``NA`` or ``null`` stay text, an
    empty cell is ``""``)."""
    _existing_file(path, what)
    suffix = path.suffix.lower()
    fmt = "csv" if delimiter is not None and suffix not in (".tsv", ".csv") else formats.get(suffix)
    if fmt is None:
        known = ", ".join(sorted(formats))
        raise ConfigError(f"{what} {str(path)!r} has the suffix {suffix or '(none)'!r}, which is not a format "
                          f"read here ({known}): rename the file to one of them, or set data.delimiter "
                          "to read it as a delimited text file")
    datasets = _import_datasets()
    kwargs: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        sep = delimiter if delimiter is not None else ("\t" if fmt == "tsv" else ",")
        kwargs = dict(delimiter=sep, na_filter=False,
                      quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL)
        builder = "csv"
    elif fmt == "text":
        kwargs = dict(sample_by="paragraph")
        builder = "text"
    else:
        builder = "json"
    with tempfile.TemporaryDirectory(prefix="inhernet-datasets-") as cache, _quiet(datasets):
        try:
            ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train",
                                       cache_dir=cache, keep_in_memory=True, **kwargs)
        except Exception as exc:  # datasets / pandas / pyarrow report bad files in many ways
            if "corresponds to no data" in str(exc):
                raise ConfigError(f"{what} {str(path)!r} has no data rows (only a header?): "
                                  "give a file with data rows") from exc
            hint = ("set data.delimiter if the columns are separated otherwise"
                    if builder == "csv" else "check that every line is one JSON object" if builder == "json"
                    else "check the file's encoding (UTF-8)")
            raise ConfigError(f"{what} {str(path)!r} could not be read as {fmt} "
                              f"({type(exc).__name__}: {exc}): {hint}") from exc
        table = _Table(fmt, list(ds.column_names), ds.features, ds.to_dict())
    if not table.columns or not table.data[table.columns[0]]:
        raise ConfigError(f"{what} {str(path)!r} has no data rows: give a file with data rows")
    return table


def _text_values(table: _Table, column: str, path: Path, option: str, what: str) -> list:
    """The values of the text column ``column``, checked: it exists and holds text."""
    if column not in table.columns:
        raise ConfigError(f"{option}={column!r} is not a column of {path.name} ({what} {str(path)!r}; "
                          f"columns: {', '.join(map(repr, table.columns))}): set data.{option} "
                          "to the column that holds the text")
    dtype = getattr(table.features[column], "dtype", None)
    if dtype not in ("string", "large_string", "null"):
        raise ConfigError(f"{option}={column!r} of {path.name} holds {dtype or 'nested'} values, not text "
                          f"(columns: {', '.join(map(repr, table.columns))}): set data.{option} "
                          "to the column that holds the text")
    return table.data[column]


# --------------------------------------------------------------------------------------------------
# classification


class _Row(NamedTuple):
    """An example before label indexing: ``label`` is the normalised label value (int or str) and
    ``row`` its 1-based data-row number in its file. Duck-types ``LabelledText`` (a ``.label``) so
    :func:`balanced_split` and :func:`label_index` work on it."""

    text: str
    text_pair: Optional[str]
    label: Any
    row: int


_INT = re.compile(r"[+-]?\d+")


def _label_value(value: Any) -> Any:
    """A label as read → an int (ints, integral floats, strings of digits) or a stripped string;
    ``None`` when missing (``None``, NaN, empty)."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else str(value)
    text = str(value).strip()
    if not text:
        return None
    return int(text) if _INT.fullmatch(text) else text


def _read_labelled_file(path: Path, *, text_column: str, label_column: str, text_pair_column: str | None,
                        delimiter: str | None, what: str) -> tuple[list[_Row], dict]:
    """Rows of a labelled file (empty texts dropped and counted), with its format and counts."""
    table = _read_table(path, delimiter=delimiter, what=what, formats=_TABLE_FORMATS)
    texts = _text_values(table, text_column, path, "text_column", what)
    pairs = (_text_values(table, text_pair_column, path, "text_pair_column", what)
             if text_pair_column is not None else None)
    if label_column not in table.columns:
        hint = (" (GLUE test files carry no labels: leave data.test_file unset and the labelled file is "
                "split into train / val / test)" if what == "test file" else "")
        raise ConfigError(f"label_column={label_column!r} is not a column of {path.name} ({what} {str(path)!r}; "
                          f"columns: {', '.join(map(repr, table.columns))}): set data.label_column "
                          f"to the column that holds the labels{hint}")
    rows: list[_Row] = []
    dropped = 0
    for i, (text, raw) in enumerate(zip(texts, table.data[label_column])):
        pair = pairs[i] if pairs is not None else None
        text = (text or "").strip()
        pair = (pair or "").strip() if pairs is not None else None
        if not text or (pairs is not None and not pair):
            dropped += 1
            continue
        label = _label_value(raw)
        if label is None:
            raise ConfigError(f"{what} {str(path)!r}: data row {i + 1} (header not counted) has no label in "
                              f"column {label_column!r}: fill it in or remove the row")
        rows.append(_Row(text, pair, label, i + 1))
    meta = {"format": table.fmt, "rows": len(texts), "dropped": dropped}
    return rows, meta


def _unify_labels(*groups: list[_Row]) -> list[list[_Row]]:
    """All label values as ints when every one is an int, else all as strings (so they sort)."""
    if all(isinstance(r.label, int) for g in groups for r in g):
        return [list(g) for g in groups]
    return [[r._replace(label=str(r.label)) for r in g] for g in groups]


def _allocate(sizes: Sequence[int], total: int) -> list[int]:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder, exact integer
    arithmetic, ties to the earlier group); never more than a group holds."""
    avail = sum(sizes)
    total = max(0, min(total, avail))
    if total == 0:
        return [0] * len(sizes)
    base = [s * total // avail for s in sizes]
    remainders = [s * total % avail for s in sizes]
    for i in sorted(range(len(sizes)), key=lambda i: (-remainders[i], i))[:total - sum(base)]:
        base[i] += 1
    return base


def _by_label(rows: Sequence[_Row], rng: random.Random) -> list[list[_Row]]:
    """The rows grouped by label (labels sorted), each group shuffled by ``rng``."""
    groups: dict[Any, list[_Row]] = defaultdict(list)
    for r in rows:
        groups[r.label].append(r)
    out = []
    for label in sorted(groups):
        group = groups[label]
        rng.shuffle(group)
        out.append(group)
    return out


def _take_stratified(groups: list[list[_Row]], total: int) -> tuple[list[_Row], list[list[_Row]]]:
    """``total`` rows taken from the front of the groups in proportion to their sizes; the rest."""
    counts = _allocate([len(g) for g in groups], total)
    taken = [r for g, k in zip(groups, counts) for r in g[:k]]
    return taken, [g[k:] for g, k in zip(groups, counts)]


def _check_fraction(value: float, option: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(f"data.{option}={value!r} must be a number in [0, 1): the share of the examples "
                          "put into that split")
    return float(value)


def _check_count(value: int | None, option: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"data.{option}={value!r} must be a positive integer, or None for no limit")
    return value


def load_classification(name: str = CLASSIFICATION_DEFAULT, *, text_column: str = "text",
                        label_column: str = "label", text_pair_column: str | None = None,
                        test_file: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                        per_class: int | None = None, max_examples: int | None = None, seed: int = 0,
                        delimiter: str | None = None) -> ClassificationData:
    """Labelled texts as train / val / test splits.

    ``name`` is ``"wordnet_glosses"`` (WordNet definitions → their lexicographer class, 45 classes,
    from :func:`inhernet.data.text.read_wordnet_glosses`) or the path of a file whose format is
    given by its suffix: ``.csv`` (comma separated, CSV quoting), ``.tsv`` (GLUE layout: tab
    separated, a header row, no quoting, so ``"`` is text), ``.jsonl`` / ``.json`` (one JSON object
    per line; a JSON array of objects also reads). ``delimiter`` reads the file as delimited text
    with that separator whatever its suffix (a tab again without quoting). Cells are taken as
    written: ``NA`` is a text, not a missing value.

    Columns: ``text_column`` (and ``text_pair_column`` for sentence-pair tasks such as MRPC / QQP)
    and ``label_column``; a missing one is a ConfigError listing the file's columns. Rows with an
    empty text (or empty pair text) are dropped and counted in ``meta["dropped"]``; a row without a
    label is an error naming its row number. Labels that are all integers keep their order: the
    integers ``0..K-1`` are the label indices themselves (``labels == ["0", ..., "K-1"]``); other
    integers, or strings, are sorted and numbered ``0..K-1`` (``labels`` holds the values as text).

    Sampling (before the split, seeded): ``per_class`` keeps ``per_class`` random examples of every
    class that has that many and leaves the rarer classes out; ``max_examples`` then caps the total,
    stratified by label. The label list holds the classes that remain (and those of ``test_file``).

    Splits, stratified by label and seeded by ``seed`` (the same inputs give the same splits):
    ``round(test_fraction * n)`` examples to test and ``round(val_fraction * n)`` to val, the rest to
    train; with ``test_file`` (same columns, its own suffix) the test split is that file, whole, and
    ``name`` is split into train / val only. Each split is in a seeded random order. A split may
    miss some classes; an empty train split is an error.

    ``meta``: ``source`` (the resolved path, or the data set name), ``format``, ``rows`` (data rows
    read), ``dropped``, ``test_source`` / ``test_rows`` / ``test_dropped`` with a test file,
    ``left_out_classes`` (by ``per_class``), ``sizes`` and the options used.
    """
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    _check_count(per_class, "per_class")
    _check_count(max_examples, "max_examples")
    if test_file is None and val_fraction + test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} leaves "
                          "nothing to train on: keep their sum below 1")
    name = os.fspath(name)
    meta: dict[str, Any] = {}
    test_rows: list[_Row] | None = None
    if name == CLASSIFICATION_DEFAULT:
        if test_file is not None:
            raise ConfigError(f"data.test_file applies to a data file, not to the packaged {name!r} "
                              "(its test split is drawn from it): leave data.test_file unset, or give a file")
        rows = [_Row(t.text, None, t.label, i + 1) for i, t in enumerate(read_wordnet_glosses())]
        meta.update(source=name, format="wordnet", rows=len(rows), dropped=0)
    else:
        path = Path(name).expanduser()
        if not path.exists() and not path.suffix:
            raise ConfigError(f"{name!r} is neither a packaged data set ({CLASSIFICATION_DEFAULT!r}) nor an "
                              "existing file: give the path of a .csv / .tsv / .jsonl / .json file")
        rows, file_meta = _read_labelled_file(path, text_column=text_column, label_column=label_column,
                                              text_pair_column=text_pair_column, delimiter=delimiter,
                                              what="data file")
        meta.update(source=str(path.resolve()), **file_meta, text_column=text_column, label_column=label_column,
                    text_pair_column=text_pair_column)
        if test_file is not None:
            tpath = Path(os.fspath(test_file)).expanduser()
            test_rows, test_meta = _read_labelled_file(tpath, text_column=text_column, label_column=label_column,
                                                       text_pair_column=text_pair_column, delimiter=delimiter,
                                                       what="test file")
            if not test_rows:
                raise ConfigError(f"test file {str(tpath)!r} has no example with a text: check "
                                  "data.text_column / data.text_pair_column")
            meta.update(test_source=str(tpath.resolve()), test_rows=test_meta["rows"],
                        test_dropped=test_meta["dropped"])
        if test_rows is None:
            rows = _unify_labels(rows)[0]
        else:
            rows, test_rows = _unify_labels(rows, test_rows)
    if not rows:
        raise ConfigError(f"{name!r} has no example with a text (all {meta['rows']} rows empty): check "
                          "data.text_column / data.text_pair_column")

    classes_before = {r.label for r in rows}
    if per_class is not None:
        try:
            rows = balanced_split(rows, per_class, 0, seed=seed)[0]
        except ValueError as exc:
            largest = max(Counter(r.label for r in rows).values())
            raise ConfigError(f"data.per_class={per_class}: no class of {name!r} has that many examples "
                              f"(the largest has {largest}): lower data.per_class") from exc
    meta["left_out_classes"] = sorted(map(str, classes_before - {r.label for r in rows}))
    if max_examples is not None and max_examples < len(rows):
        rows = _take_stratified(_by_label(rows, random.Random(seed)), max_examples)[0]

    rng = random.Random(seed)
    groups = _by_label(rows, rng)
    n = len(rows)
    test, groups = _take_stratified(groups, 0 if test_rows is not None else round(test_fraction * n))
    val, groups = _take_stratified(groups, round(val_fraction * n))
    train = [r for g in groups for r in g]
    if not train:
        raise ConfigError(f"the train split of {name!r} is empty ({n} examples, val_fraction={val_fraction:g}, "
                          f"test_fraction={test_fraction:g}): lower the fractions or give more examples")
    if test_rows is not None:
        test = list(test_rows)
    for split in (train, val, test):
        rng.shuffle(split)

    index = label_index([*rows, *test])  # sorted values → 0..K-1 (ints 0..K-1 map to themselves)
    labels = [str(value) for value in index]

    def examples(split: list[_Row]) -> list[TextExample]:
        return [TextExample(r.text, index[r.label], r.text_pair) for r in split]

    meta.update(per_class=per_class, max_examples=max_examples, seed=seed, val_fraction=val_fraction,
                test_fraction=None if test_rows is not None else test_fraction,
                sizes={"train": len(train), "val": len(val), "test": len(test)})
    return ClassificationData(name=name, labels=labels, train=examples(train), val=examples(val),
                              test=examples(test), meta=meta)


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad token nor an EOS token to pad batches with: set one "
                          "(tokenizer.pad_token = tokenizer.unk_token, or add a '[PAD]' token) before encoding")
    return int(pad)


def encode_classification(tokenizer: Any, examples: Sequence[TextExample], *, max_length: int = 128) -> EncodedSplit:
    """Tokenise a split: ``tokenizer(texts, text_pairs, truncation=True, max_length=max_length)``
    (pairs when the examples have a ``text_pair``; then every example must have one), the ids kept
    unpadded with the tokenizer's special tokens; ``pad_id`` is the tokenizer's pad token, else its
    EOS token (a ConfigError when it has neither)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"max_length={max_length!r} must be a positive integer (tokens per example)")
    pad_id = _pad_id(tokenizer)
    examples = list(examples)
    if not examples:
        return EncodedSplit(input_ids=[], labels=[], pad_id=pad_id)
    with_pair = sum(e.text_pair is not None for e in examples)
    if 0 < with_pair < len(examples):
        raise ConfigError(f"{with_pair} of {len(examples)} examples have a text_pair and the others none: "
                          "a split is either single texts or text pairs (check data.text_pair_column)")
    texts = [e.text for e in examples]
    if with_pair:
        enc = tokenizer(texts, [e.text_pair for e in examples], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
    return EncodedSplit(input_ids=[[int(t) for t in ids] for ids in enc["input_ids"]],
                        labels=[int(e.label) for e in examples], pad_id=pad_id)


# --------------------------------------------------------------------------------------------------
# causal LM

_WIKITEXT_TITLE = re.compile(r" = [^=].* = ")


def _wikitext2_articles() -> list[str]:
    """The packaged WikiText-2 test text cut into its 62 articles: a new article starts at each
    top-level heading row `` = Title = `` (sections are `` = = Section = = ``); each article is its
    rows (heading included) joined with ``"\\n\\n"`` as :func:`~inhernet.hf.wikitext.wikitext2_text`
    joins them."""
    from .wikitext import wikitext2_text

    articles: list[list[str]] = []
    for row in wikitext2_text().split("\n\n"):
        if _WIKITEXT_TITLE.fullmatch(row) or not articles:
            articles.append([])
        articles[-1].append(row)
    return ["\n\n".join(rows) for rows in articles]


def _file_documents(path: Path, text_field: str) -> list[str]:
    table = _read_table(path, delimiter=None, what="document file", formats=_LM_FORMATS)
    if table.fmt == "text":
        return list(table.data["text"])
    if text_field not in table.columns:
        raise ConfigError(f"text_field={text_field!r} is not a field of {path.name} (document file {str(path)!r}; "
                          f"fields: {', '.join(map(repr, table.columns))}): set data.text_field to the field "
                          "that holds the text")
    return _text_values(table, text_field, path, "text_field", "document file")


def read_lm_documents(sources: Sequence[str] | str = LM_DEFAULT, *, text_field: str = "text") -> list[str]:
    """The documents of ``sources``, in order (source by source, each in its own order), stripped,
    the empty ones dropped.

    A source is one of :data:`LM_SOURCES` or a file:

    * ``"glosses"`` — every WordNet definition (:func:`~inhernet.data.text.read_wordnet_glosses`),
      one short document each (117,659);
    * ``"fortunes"`` — every quote of the Debian ``fortunes`` files
      (:func:`~inhernet.data.text.read_fortunes`), one document each;
    * ``"wikitext2"`` — the packaged WikiText-2 *test* text cut into its 62 articles at the
      top-level `` = Title = `` headings (do not train on it and then report WikiText-2 perplexity);
    * a ``.txt`` file — documents separated by an empty line, read by ``datasets``' ``text`` builder
      with ``sample_by="paragraph"`` (it splits at ``"\\n\\n"``; a line holding only spaces does not
      separate);
    * a ``.jsonl`` / ``.json`` file (one object per line) or ``.csv`` / ``.tsv`` file — the
      ``text_field`` of each row (a missing field is a ConfigError listing the fields).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [os.fspath(s) for s in sources]
    if not sources:
        raise ConfigError(f"no document source given: name one or more of {', '.join(LM_SOURCES)} or files")
    documents: list[str] = []
    for source in sources:
        if source == "glosses":
            texts = [t.text for t in read_wordnet_glosses()]
        elif source == "fortunes":
            texts = [t.text for t in read_fortunes()]
        elif source == "wikitext2":
            texts = _wikitext2_articles()
        else:
            path = Path(source).expanduser()
            if not path.exists() and not path.suffix:
                raise ConfigError(f"document source {source!r} is neither a packaged source ({', '.join(LM_SOURCES)}) "
                                  "nor an existing file: give one of those names or the path of a .txt / .jsonl / "
                                  ".json / .csv / .tsv file")
            texts = _file_documents(path, text_field)
        documents += [t.strip() for t in texts if t is not None and t.strip()]
    return documents


def split_documents(documents: Sequence[str], held_out_fraction: float = 0.1, *,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` documents: a seeded shuffle of the document indices, the first
    ``round(held_out_fraction * n)`` held out (at least one when ``n >= 2`` and the fraction is
    above 0, and at most ``n - 1`` so training keeps one). Each side keeps the original order; a
    document is on one side only (identical texts at two indices can land on both sides)."""
    held_out_fraction = _check_fraction(held_out_fraction, "held_out_fraction")
    n = len(documents)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = round(held_out_fraction * n)
    if held_out_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    held = set(order[:k])
    train = [d for i, d in enumerate(documents) if i not in held]
    held_out = [d for i, d in enumerate(documents) if i in held]
    return train, held_out


def _separator_id(tokenizer: Any, separator: str | None) -> int:
    if separator is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ConfigError("the tokenizer has no EOS token to put between documents: set data.separator to a "
                              "string that encodes to one token (e.g. '\\n\\n')")
        return int(eos)
    ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"separator={separator!r} encodes to {len(ids)} tokens {list(ids)}, not one: set "
                          "data.separator to None (the tokenizer's EOS token) or to a string that is one token "
                          "(e.g. '\\n\\n' for GPT-2-style tokenizers)")
    return int(ids[0])


def pack_blocks(tokenizer: Any, documents: Sequence[str], seq_len: int, *, separator: str | None = None,
                max_blocks: int | None = None) -> torch.Tensor:
    """Token blocks ``(n, seq_len)`` (int64) of ``documents`` by :func:`inhernet.hf.lm.pack_documents`:
    each document tokenised without special tokens and followed by the separator — the tokenizer's
    EOS token for ``separator=None``, else the one token ``separator`` encodes to (a ConfigError when
    it is not exactly one) — the stream cut into rows, the incomplete tail dropped, at most
    ``max_blocks`` rows."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"seq_len={seq_len!r} must be an integer of at least 2 (one input and one target token)")
    _check_count(max_blocks, "max_blocks")
    return pack_documents(tokenizer, list(documents), seq_len, separator_id=_separator_id(tokenizer, separator),
                          max_blocks=max_blocks)


def _token_count(tokenizer: Any, documents: Sequence[str]) -> int:
    """Tokens of ``documents`` as :func:`pack_blocks` streams them (one separator each)."""
    if not documents:
        return 0
    return sum(len(ids) + 1 for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"])


def load_lm_data(tokenizer: Any, sources: Sequence[str] | str = LM_DEFAULT, *, seq_len: int = 128,
                 held_out_fraction: float = 0.1, seed: int = 0, max_train_blocks: int | None = None,
                 max_held_out_blocks: int | None = None, separator: str | None = None,
                 text_field: str = "text") -> LMData:
    """Causal-LM blocks from ``sources``: :func:`read_lm_documents` → :func:`split_documents`
    (``held_out_fraction``, ``seed``) → :func:`pack_blocks` on each side (``max_train_blocks`` /
    ``max_held_out_blocks``), so no document feeds both sides.

    A ConfigError when the training documents give no full block (it names ``seq_len`` and their
    token count), and likewise for the held-out documents when ``held_out_fraction > 0``.
    ``meta``: ``sources``, ``documents`` / ``blocks`` / ``tokens`` (tokens in the blocks) per side,
    ``separator``, ``seed``, ``held_out_fraction``."""
    _check_count(max_train_blocks, "max_train_blocks")
    _check_count(max_held_out_blocks, "max_held_out_blocks")
    names = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(s) for s in sources]
    documents = read_lm_documents(names, text_field=text_field)
    if not documents:
        raise ConfigError(f"the sources {names} hold no non-empty document: check the files (and data.text_field)")
    train_docs, held_docs = split_documents(documents, held_out_fraction, seed=seed)
    train = pack_blocks(tokenizer, train_docs, seq_len, separator=separator, max_blocks=max_train_blocks)
    held_out = pack_blocks(tokenizer, held_docs, seq_len, separator=separator, max_blocks=max_held_out_blocks)
    for side, blocks, docs in (("training", train, train_docs), ("held-out", held_out, held_docs)):
        if len(blocks) == 0 and (side == "training" or held_out_fraction > 0):
            raise ConfigError(f"the {side} documents ({len(docs)} of {len(documents)}) give "
                              f"{_token_count(tokenizer, docs)} tokens, fewer than one block of seq_len={seq_len}: "
                              "lower data.seq_len or give more text"
                              + (" (or raise data.held_out_fraction)" if side == "held-out" else "")
                              + ("; the sources hold a single document (a .txt file's documents are separated "
                                 "by empty lines)" if len(documents) == 1 else ""))
    meta = {"sources": names, "documents": {"train": len(train_docs), "held_out": len(held_docs)},
            "blocks": {"train": len(train), "held_out": len(held_out)},
            "tokens": {"train": train.numel(), "held_out": held_out.numel()},
            "separator": separator, "seed": seed, "held_out_fraction": held_out_fraction}
    return LMData(name="+".join(Path(n).name if os.sep in n else n for n in names), train=train,
                  held_out=held_out, seq_len=seq_len, meta=meta)
