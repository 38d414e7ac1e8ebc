"""A small SentencePiece tokenizer trained at test time and saved as a transformers T5Tokenizer folder.

It stands in for google/umt5-xxl in tests: same special ids (pad 0, EOS 1, unk 2), same folder shape
(tokenizer.json + tokenizer_config.json + spiece.model), loadable with AutoTokenizer. Its ids stay below
256, so any test text encoder with vocab_size >= 256 (e.g. the 'tiny-random' preset) can embed them.

Usage: `folder = make_tokenizer_dir(tmp_path)`; the model is trained once per process and copied.
"""
from __future__ import annotations

import atexit
import io
import random
import shutil
import tempfile
from pathlib import Path

MAX_VOCAB = 256
_WORDS = (
    "a an the cat dog fox bird horse robot astronaut surfer car train boat runs jumps flies walks swims rides"
    " dances over under through across in on at with of and slowly quickly green blue red golden dark bright"
    " field forest city street beach ocean sky mountain river night sunset rain snow camera video shot close"
    " wide aerial view cinematic lighting 4k realistic style"
).split()
_EXTRA = "0123456789 .,;:!?'\"()-&<>/ é è ü ö ñ ç 日本 猫 犬"
_cache: Path | None = None


def _train(folder: Path) -> None:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(10)) for _ in range(300)] + [_EXTRA] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=MAX_VOCAB, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        num_threads=1, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    # Built from the pieces and scores rather than converted from spiece.model: that conversion needs protobuf.
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    assert len(tok) <= MAX_VOCAB, len(tok)
    tok.save_pretrained(str(folder))
    (folder / "spiece.model").write_bytes(buf.getvalue())


def make_tokenizer_dir(tmp_path: str | Path) -> Path:
    """Copy the (once-trained) tokenizer into `tmp_path / 'tokenizer'` and return that folder."""
    global _cache
    if _cache is None:
        root = Path(tempfile.mkdtemp(prefix="turbovid-spm-"))
        atexit.register(shutil.rmtree, root, True)
        _train(root)
        _cache = root
    out = Path(tmp_path) / "tokenizer"
    shutil.copytree(_cache, out, dirs_exist_ok=True)
    return out
