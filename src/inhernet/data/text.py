"""Offline English text: WordNet glosses (labelled with their lexicographer class) and fortunes.

Both come from Debian packages that ``make system-deps`` installs, so nothing is downloaded
(on a machine without them, copies of the folders can stand in: the environment variables
``INHERNET_WORDNET_DIR`` / ``INHERNET_FORTUNES_DIR`` replace the default folders below, for every
reader that passes no ``root``, the configs' ``glosses`` / ``fortunes`` sources included):

* :func:`read_wordnet_glosses` — the definitions of ``wordnet-base``'s ``data.{noun,verb,adj,adv}``
  with the synset's lexicographer file (``noun.animal``, ``verb.motion``, … 45 classes) as label;
* :func:`read_fortunes` — the quotes of ``fortunes`` (``/usr/share/games/fortunes``), with their
  file (topic) as label;
* :func:`balanced_split` — a seeded, class-balanced train / test subsample of labelled texts.

    >>> texts = read_wordnet_glosses()
    >>> train, test = balanced_split(texts, per_class_train=40, per_class_test=20, seed=0)
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple, Sequence

from .errors import DataFormatError, DatasetNotFoundError

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: environment variables that replace :data:`WORDNET_DIR` / :data:`FORTUNES_DIR` when set (non-empty)
WORDNET_ENV = "INHERNET_WORDNET_DIR"
FORTUNES_ENV = "INHERNET_FORTUNES_DIR"


def _default_dir(env: str, default: Path) -> Path:
    """The folder read when no ``root`` is given: ``$env`` when set and non-empty, else ``default``."""
    value = os.environ.get(env, "").strip()
    return Path(value).expanduser() if value else default

# WordNet's lexicographer files, by the two-digit number stored in field 2 of every data.* line
# (the ``lexnames`` file of the WordNet distribution, which the Debian package does not ship).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)


class LabelledText(NamedTuple):
    text: str
    label: str


def _require_dir(path: Path, package: str, env: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{path} not found: install the Debian package `{package}` "
            f"(`sudo apt-get install {package}`, or `make system-deps`), pass root=<folder>, "
            f"or set {env} to a copy of its folder."
        )
    return path


def _gloss_definition(gloss: str) -> str:
    """The definition part of a gloss: the examples after the first ``; "`` are dropped (they quote
    the word being defined, which would make the class easy to guess from the lemma)."""
    return gloss.split('; "')[0].strip().rstrip(";").strip()


def read_wordnet_glosses(root: str | os.PathLike | None = None) -> list[LabelledText]:
    """Every synset's definition with its lexicographer class, in file order (117,659 synsets).

    Lines starting with two spaces are the licence header; a data line is
    ``offset lex_filenum ss_type ... | gloss``.
    """
    folder = _require_dir(Path(root) if root is not None else _default_dir(WORDNET_ENV, WORDNET_DIR),
                          "wordnet-base", WORDNET_ENV)
    out: list[LabelledText] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{pos}"
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} missing: reinstall the Debian package `wordnet-base`.")
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.startswith("  ") or not line.strip():
                    continue
                head, sep, gloss = line.partition(" | ")
                fields = head.split()
                if not sep or len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) >= len(LEXNAMES):
                    raise DataFormatError(f"{path}:{lineno}: not a WordNet data line: {line[:80]!r}")
                text = _gloss_definition(gloss)
                if text:
                    out.append(LabelledText(text, LEXNAMES[int(fields[1])]))
    return out


def read_fortunes(root: str | os.PathLike | None = None, *, max_chars: int | None = None) -> list[LabelledText]:
    """Every quote of the fortune files in ``root`` (records separated by lines holding ``%``), with
    the file name as topic. The ``.dat`` indexes and ``.u8`` links are skipped, and so are quotes
    longer than ``max_chars`` when given (ASCII art, long stories)."""
    folder = _require_dir(Path(root) if root is not None else _default_dir(FORTUNES_ENV, FORTUNES_DIR),
                          "fortunes", FORTUNES_ENV)
    out: list[LabelledText] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for record in text.split("\n%\n"):
            record = record.strip().strip("%").strip()
            if record and (max_chars is None or len(record) <= max_chars):
                out.append(LabelledText(record, path.name))
    if not out:
        raise DatasetNotFoundError(f"no fortune files in {folder}: install the Debian package `fortunes`.")
    return out


def balanced_split(items: Sequence[LabelledText], per_class_train: int, per_class_test: int, *,
                   seed: int = 0, min_count: int | None = None) -> tuple[list[LabelledText], list[LabelledText]]:
    """A seeded class-balanced subsample: ``per_class_train`` / ``per_class_test`` disjoint items of
    every class that has at least ``min_count`` (default: their sum) items; rarer classes are left
    out. Both lists are shuffled; the split depends on ``seed`` only."""
    need = per_class_train + per_class_test
    min_count = need if min_count is None else min_count
    if min_count < need:
        raise ValueError(f"min_count={min_count} is below per_class_train + per_class_test = {need}")
    by_label: dict[str, list[LabelledText]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    rng = random.Random(seed)
    train: list[LabelledText] = []
    test: list[LabelledText] = []
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) < min_count:
            continue
        picked = rng.sample(group, need)
        train += picked[:per_class_train]
        test += picked[per_class_train:]
    if not train:
        raise ValueError(f"no class has {min_count} items; lower per_class_train / per_class_test")
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def label_index(items: Sequence[LabelledText]) -> dict[str, int]:
    """Class name → index, sorted by name (stable across runs and splits)."""
    return {label: i for i, label in enumerate(sorted({item.label for item in items}))}
