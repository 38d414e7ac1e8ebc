"""Prompt tokenizers: umT5 (via the SentencePiece test fixture) and the smoke-test ByteTokenizer."""
from __future__ import annotations

import pytest
import torch

from turbovid.models.tokenizer import ByteTokenizer, UMT5Tokenizer, clean_text, load_tokenizer

from spm_fixture import make_tokenizer_dir


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_dir(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir) -> UMT5Tokenizer:
    return load_tokenizer(str(tok_dir))


@pytest.fixture(scope="module")
def spm(tok_dir):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(tok_dir / "spiece.model"))


def test_fixture_folder_shape(tok_dir, tok):
    assert {"spiece.model", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tok_dir.iterdir()}
    assert isinstance(tok, UMT5Tokenizer) and tok.rust and tok.vocab_size <= 256
    ids = [tok.backend.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")]
    assert ids == [0, 1, 2] and tok.pad_id == 0  # umT5's layout


def test_tokenizers_backend_equals_transformers(tok, tok_dir):
    """tokenizer.json read by `tokenizers` gives transformers' AutoTokenizer ids and masks, byte for byte."""
    import random

    from transformers import AutoTokenizer

    from spm_fixture import _EXTRA, _WORDS

    hf = UMT5Tokenizer(AutoTokenizer.from_pretrained(str(tok_dir)))
    assert not hf.rust and hf.vocab_size == tok.vocab_size and hf.pad_id == tok.pad_id
    rng = random.Random(1)
    words = [*_WORDS, *_EXTRA, "unseenword", "ZZZ", "  ", "\t", "😀", "ß", "İ"]
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    prompts += ["cat " * 600, "<pad> </s> <unk>", "a</s>b", "▁x ▁ y", ""]
    for text_len in (512, 16):
        a, b = UMT5Tokenizer(tok.backend, text_len), UMT5Tokenizer(hf.backend, text_len)
        (ia, ma), (ib, mb) = a(prompts), b(prompts)
        assert torch.equal(ia, ib) and torch.equal(ma, mb)


def test_loading_the_tokenizer_does_not_import_transformers(tok_dir):
    import subprocess
    import sys

    code = ("import sys; from turbovid.models.tokenizer import load_tokenizer; t = load_tokenizer(sys.argv[1]); t('a cat');"
            " print('transformers' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(tok_dir)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr[-2000:]


def test_clean_text():
    assert clean_text("  a\t\tcat \n\n runs  ") == "a cat runs"
    assert clean_text("fish &amp; chips &lt;3") == "fish & chips <3"
    assert clean_text("double &amp;lt;b&amp;gt;") == "double <b>"  # unescaped twice, like the reference
    assert clean_text("cafÃ© dÃ©jÃ  vu") == "café déjà vu"  # ftfy repairs mojibake
    assert clean_text("a\u00a0b\u3000c") == "a b c"  # unicode whitespace collapses too


def test_padding_eos_and_mask(tok, spm):
    prompts = ["a cat runs over the field", "日本 猫", "x"]
    ids, mask = tok(prompts)
    assert ids.shape == mask.shape == (3, 512) and ids.dtype == mask.dtype == torch.long
    for i, p in enumerate(prompts):
        pieces = spm.encode(p)
        n = len(pieces) + 1
        assert mask[i].tolist() == [1] * n + [0] * (512 - n)  # right padding
        assert ids[i, : n - 1].tolist() == pieces and ids[i, n - 1] == 1  # SentencePiece ids, then EOS
        assert torch.all(ids[i, n:] == 0)  # pad id


def test_cleaning_applied_before_tokenizing(tok):
    a = tok(["  a  dog\n&amp;amp;\ta fox "])
    b = tok(["a dog & a fox"])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_truncation_keeps_eos(tok):
    ids, mask = tok(["cat " * 2000])
    assert mask.sum() == 512 and ids[0, -1] == 1


def test_text_len_and_single_string(tok_dir):
    t = load_tokenizer(str(tok_dir), text_len=16)
    ids, mask = t("a cat")
    assert ids.shape == (1, 16)


def test_byte_tokenizer():
    t = ByteTokenizer(text_len=8)
    ids, mask = t(["hé", "  a   b "])
    assert ids[0].tolist() == [ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 1, 0, 0, 0, 0]
    assert ids[1, :4].tolist() == [ord("a") + 3, ord(" ") + 3, ord("b") + 3, 1]  # cleaned
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]] * 2
    ids, mask = t(["abcdefghijk"])
    assert mask.sum() == 8 and ids[0, -1] == 1 and ids[0, -2] == ord("g") + 3
    assert int(t(["\xff" * 20])[0].max()) < ByteTokenizer.vocab_size
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert load_tokenizer(t) is t


def test_bad_prompts(tok):
    with pytest.raises(ValueError, match="non-empty list of strings"):
        tok([])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        tok(["ok", 3])


def test_missing_folder_names_the_files(tmp_path):
    with pytest.raises(ValueError, match=r"not found.*spiece\.model.*huggingface\.co/google/umt5-xxl"):
        load_tokenizer(str(tmp_path / "nope"))


def test_empty_folder_and_file(tmp_path):
    with pytest.raises(ValueError, match="not a loadable tokenizer folder"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "spiece.model").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; pass the folder"):
        load_tokenizer(str(tmp_path / "spiece.model"))
    with pytest.raises(ValueError, match="tokenizer must be"):
        load_tokenizer(42)


def test_hub_offline_names_the_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"cannot fetch tokenizer 'google/umt5-xxl'.*tokenizer=<folder>") as e:
        load_tokenizer("google/umt5-xxl", cache_dir=str(tmp_path))
    assert "\n" not in str(e.value)
