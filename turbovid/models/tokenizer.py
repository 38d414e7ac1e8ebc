"""Prompt tokenizers for the umT5 text encoder.

`UMT5Tokenizer` wraps the `google/umt5-xxl` tokenizer (transformers) with Wan's prompt cleaning and
fixed-length padding. `ByteTokenizer` needs no files and exists ONLY for the `tiny-random` smoke-test
preset: its ids mean nothing to a real umT5 checkpoint.

Both return `(input_ids, attention_mask)`, int64 `[B, text_len]`, right-padded with id 0.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Protocol

import regex
import torch

log = logging.getLogger("turbovid.tokenizer")

TEXT_LEN = 512
UMT5_HUB_ID = "google/umt5-xxl"
# What a tokenizer folder holds (the hub repo google/umt5-xxl, Wan's `google/umt5-xxl/`, diffusers' `tokenizer/`).
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_WHITESPACE = regex.compile(r"\s+")
_warned_no_ftfy = False


def clean_text(text: str) -> str:
    """Wan's 'whitespace' cleaning: ftfy mojibake repair, HTML entities unescaped twice, whitespace runs -> one space."""
    global _warned_no_ftfy
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        if not _warned_no_ftfy:
            log.warning("ftfy is not installed: prompts are not repaired for mojibake (pip install ftfy)")
            _warned_no_ftfy = True
    # Twice, as the reference does, so doubly escaped entities such as '&amp;lt;' become '<'.
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def _as_list(prompts: str | list[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    return prompts


class PromptTokenizer(Protocol):
    text_len: int
    vocab_size: int  # every id it emits is below this

    def __call__(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class UMT5Tokenizer:
    """The umT5 tokenizer plus Wan's cleaning, padded and truncated to `text_len` tokens (EOS included).

    Reads the folder's tokenizer.json with the `tokenizers` library, the same Rust tokenizer transformers'
    fast T5 tokenizer runs, without importing transformers (2-10 s of a CLI run's imports, most of its
    text-encoder load time). A folder with only spiece.model goes through transformers' AutoTokenizer.
    """

    def __init__(self, backend, text_len: int = TEXT_LEN, source: str = ""):
        self.backend = backend  # a tokenizers.Tokenizer, or a transformers tokenizer
        self.text_len = text_len
        self.source = source
        self.rust = type(backend).__module__.startswith("tokenizers")  # else a transformers tokenizer
        if self.rust:
            self.pad_id = backend.token_to_id("<pad>")
            if self.pad_id is None:
                raise ValueError(f"{source}: tokenizer.json has no <pad> token; it is not an umT5 tokenizer")
            self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        else:
            self.pad_id = backend.pad_token_id
            self.vocab_size = len(backend)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, text_len: int = TEXT_LEN, cache_dir: str | None = None):
        folder = _resolve_folder(str(name_or_path), cache_dir)
        try:
            if (folder / "tokenizer.json").is_file():
                from tokenizers import Tokenizer

                return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), text_len=text_len, source=str(name_or_path))
            from transformers import AutoTokenizer

            return cls(AutoTokenizer.from_pretrained(str(folder)), text_len=text_len, source=str(name_or_path))
        except Exception as e:  # noqa: BLE001 - any failure here means the folder is not a usable tokenizer
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(
                f"{folder}: not a loadable tokenizer folder ({msg}); it should hold {', '.join(TOKENIZER_FILES)}"
                f" from https://huggingface.co/{UMT5_HUB_ID}"
            ) from None

    def __call__(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [clean_text(p) for p in _as_list(prompts)]
        if self.rust:
            tok = self.backend
            # set per call: the Tokenizer object holds them and may be shared with another text_len
            if (tok.truncation or {}).get("max_length") != self.text_len:
                tok.enable_truncation(max_length=self.text_len)  # the post-processor's EOS is counted in
            if (tok.padding or {}).get("length") != self.text_len:
                tok.enable_padding(length=self.text_len, pad_id=self.pad_id, pad_token="<pad>")
            enc = tok.encode_batch(texts, add_special_tokens=True)
            return (torch.tensor([e.ids for e in enc], dtype=torch.long),
                    torch.tensor([e.attention_mask for e in enc], dtype=torch.long))
        enc = self.backend(
            texts, padding="max_length", truncation=True, max_length=self.text_len,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def __repr__(self) -> str:
        return f"UMT5Tokenizer({self.source!r}, text_len={self.text_len})"


def _resolve_folder(spec: str, cache_dir: str | None) -> Path:
    """A local folder as given, or the hub repo `spec` downloaded (or found in the cache) via huggingface_hub."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"tokenizer {spec!r} is a file; pass the folder that holds {', '.join(TOKENIZER_FILES)}")
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and "\\" not in spec
    if not looks_like_hub_id:
        raise ValueError(
            f"tokenizer folder {spec!r} not found; create it with {', '.join(TOKENIZER_FILES)}"
            f" from https://huggingface.co/{UMT5_HUB_ID}, or pass a hub id such as {UMT5_HUB_ID!r}"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.model"], cache_dir=cache_dir))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated repo, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"cannot fetch tokenizer {spec!r} from the Hugging Face hub ({type(e).__name__}: {msg}); offline, download"
            f" {', '.join(TOKENIZER_FILES)} from https://huggingface.co/{spec} into a folder and pass tokenizer=<folder>"
        ) from None


class ByteTokenizer:
    """UTF-8 bytes shifted by 3 (0 = pad, 1 = EOS, 2 unused), EOS appended. No files needed.

    ONLY for the `tiny-random` smoke-test preset (vocab 512): it lets the whole pipeline run without the
    umT5 tokenizer. Prompts get the same cleaning as the real tokenizer.
    """

    PAD, EOS, OFFSET = 0, 1, 3
    vocab_size = 256 + OFFSET

    def __init__(self, text_len: int = TEXT_LEN):
        self.text_len = text_len

    def __call__(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [clean_text(p) for p in _as_list(prompts)]
        ids = torch.full((len(texts), self.text_len), self.PAD, dtype=torch.long)
        mask = torch.zeros((len(texts), self.text_len), dtype=torch.long)
        for i, t in enumerate(texts):
            row = [b + self.OFFSET for b in t.encode("utf-8")[: self.text_len - 1]] + [self.EOS]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    def __repr__(self) -> str:
        return f"ByteTokenizer(text_len={self.text_len})"


def load_tokenizer(spec=UMT5_HUB_ID, text_len: int = TEXT_LEN, cache_dir: str | None = None) -> PromptTokenizer:
    """`spec`: a tokenizer object (returned as is), "byte" (ByteTokenizer), a local folder, or a hub id."""
    if not isinstance(spec, (str, Path)):
        if not callable(spec):
            raise ValueError(f"tokenizer must be a folder, a hub id, 'byte' or a tokenizer object, got {type(spec).__name__}")
        return spec
    if str(spec) == "byte":
        return ByteTokenizer(text_len)
    return UMT5Tokenizer.from_pretrained(spec, text_len=text_len, cache_dir=cache_dir)
