"""umT5 encoder: parity with transformers' UMT5EncoderModel, both checkpoint layouts, zeroing, bad input."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import turbovid
from turbovid.loading import CheckpointError
from turbovid.loading.t5 import load_text_encoder
from turbovid.models import t5
from turbovid.models.t5 import UMT5Encoder, build_text_encoder, relative_position_buckets
from turbovid.models.tokenizer import ByteTokenizer

from spm_fixture import make_tokenizer_dir

transformers = pytest.importorskip("transformers")
from transformers import UMT5Config, UMT5EncoderModel  # noqa: E402

VOCAB, DIM, HEADS, D_KV, FFN, LAYERS = 300, 32, 4, 8, 48, 2


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_hf(max_distance: int = 128, num_buckets: int = 32, seed: int = 0) -> UMT5EncoderModel:
    cfg = UMT5Config(
        vocab_size=VOCAB, d_model=DIM, d_kv=D_KV, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS,
        relative_attention_num_buckets=num_buckets, relative_attention_max_distance=max_distance,
        dropout_rate=0.0, feed_forward_proj="gated-gelu",
    )
    model = UMT5EncoderModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every tensor random (norm scales too), so a swapped or dropped weight shows
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2 and "relative_attention_bias" not in name and "shared" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def hf_to_wan_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names of Wan's models_t5_umt5-xxl-enc-bf16.pth, written out independently of the loader."""
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for i in range(LAYERS):
        p = f"encoder.block.{i}.layer."
        out[f"blocks.{i}.norm1.weight"] = sd[p + "0.layer_norm.weight"]
        for n in "qkvo":
            out[f"blocks.{i}.attn.{n}.weight"] = sd[p + f"0.SelfAttention.{n}.weight"]
        out[f"blocks.{i}.norm2.weight"] = sd[p + "1.layer_norm.weight"]
        out[f"blocks.{i}.ffn.gate.0.weight"] = sd[p + "1.DenseReluDense.wi_0.weight"]
        out[f"blocks.{i}.ffn.fc1.weight"] = sd[p + "1.DenseReluDense.wi_1.weight"]
        out[f"blocks.{i}.ffn.fc2.weight"] = sd[p + "1.DenseReluDense.wo.weight"]
        out[f"blocks.{i}.pos_embedding.embedding.weight"] = sd[p + "0.SelfAttention.relative_attention_bias.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def save_wan_pth(hf: UMT5EncoderModel, path) -> None:
    """Official layout and dtype: bf16 tensors in a torch zip. `hf` is rounded to bf16 too, to stay comparable."""
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.bfloat16().float())
    torch.save({k: v.bfloat16() for k, v in hf_to_wan_keys(hf.state_dict()).items()}, path)


@pytest.fixture(scope="module")
def hf_model() -> UMT5EncoderModel:
    return make_hf()


@pytest.fixture(scope="module")
def diffusers_root(tmp_path_factory, hf_model):
    """A diffusers pipeline root with text_encoder/ (sharded safetensors + index + config) and tokenizer/."""
    root = tmp_path_factory.mktemp("wan-diffusers")
    hf_model.save_pretrained(str(root / "text_encoder"), max_shard_size="20KB")
    make_tokenizer_dir(root)
    return root


@pytest.fixture(scope="module")
def wan_pth(tmp_path_factory):
    """(hf model with bf16-rounded weights, path of the official-layout .pth holding the same weights)."""
    hf = make_hf(seed=1)
    path = tmp_path_factory.mktemp("wan") / "models_t5_umt5-xxl-enc-bf16.pth"
    save_wan_pth(hf, path)
    return hf, path


def random_batch(lengths: list[int], length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), length), generator=g)
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def check_parity(te, hf, ids, mask):
    out = te.encode_ids(ids, mask)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert rel_l2(out[keep], ref[keep]) < 1e-5
    assert torch.all(out[~keep] == 0)
    assert out.shape == (*ids.shape, DIM)


def test_relative_position_buckets_match_transformers():
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    for buckets, dist, n in ((32, 128, 300), (16, 20, 50)):
        cfg = UMT5Config(relative_attention_num_buckets=buckets, relative_attention_max_distance=dist)
        attn = UMT5Attention(cfg, has_relative_attention_bias=True)
        rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        assert torch.equal(relative_position_buckets(n, buckets, dist), attn._relative_position_bucket(rel))


def test_diffusers_folder_matches_transformers(diffusers_root, hf_model):
    te = load_text_encoder(diffusers_root / "text_encoder", tokenizer="byte")
    assert te.dtype == torch.float32 and te.model.cfg.num_layers == LAYERS and te.model.cfg.num_heads == HEADS
    # 140 tokens: offsets past max_distance (128) hit the last log bucket.
    check_parity(te, hf_model, *random_batch([140, 61, 1], 140))


def test_wan_pth_bf16_matches_transformers(wan_pth):
    hf, path = wan_pth
    te = load_text_encoder(path, tokenizer="byte", dtype=torch.float32)
    check_parity(te, hf, *random_batch([50, 23], 50, seed=3))


def test_wan_pth_keeps_bf16_and_bf16_error_is_bounded(wan_pth):
    hf, path = wan_pth
    te = load_text_encoder(path, tokenizer="byte")  # dtype None: as stored
    assert te.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in te.model.parameters())
    ids, mask = random_batch([40, 17], 40, seed=4)
    out = te.encode_ids(ids, mask)
    assert out.dtype == torch.bfloat16
    keep = mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state  # float32 reference
        hf_bf16 = make_hf(seed=1).eval()
        hf_bf16.load_state_dict(hf.state_dict())
        ref_bf16 = hf_bf16.to(torch.bfloat16)(input_ids=ids, attention_mask=mask).last_hidden_state
    # Our bf16 path is at most twice as far from float32 as transformers' own bf16 path.
    assert rel_l2(out[keep], ref[keep]) <= 2 * rel_l2(ref_bf16[keep], ref[keep])
    assert torch.all(out[~keep] == 0)


def test_config_json_max_distance_is_used(tmp_path):
    hf = make_hf(max_distance=12, num_buckets=16, seed=2)
    hf.save_pretrained(str(tmp_path / "te"))
    te = load_text_encoder(tmp_path / "te", tokenizer="byte")
    assert te.model.cfg.max_distance == 12 and te.model.cfg.num_buckets == 16
    check_parity(te, hf, *random_batch([30, 30], 30))


def test_padding_does_not_change_valid_positions(diffusers_root):
    te = load_text_encoder(diffusers_root, tokenizer="byte")
    ids, mask = random_batch([9], 9)
    short = te.encode_ids(ids, mask)
    padded = te.encode_ids(torch.nn.functional.pad(ids, (0, 20)), torch.nn.functional.pad(mask, (0, 20)))
    assert rel_l2(padded[:, :9], short) < 1e-6
    assert torch.all(padded[:, 9:] == 0)
    raw = te.model(torch.nn.functional.pad(ids, (0, 20)), torch.nn.functional.pad(mask, (0, 20)))
    assert raw[:, 9:].abs().sum() > 0  # the network's own output there is not zero: the zeroing is ours


def test_only_the_prompts_tokens_are_encoded(diffusers_root):
    te = load_text_encoder(diffusers_root, tokenizer="byte")
    ids, mask = random_batch([9, 4], 9)
    ids, mask = torch.nn.functional.pad(ids, (0, 23)), torch.nn.functional.pad(mask, (0, 23))  # 32 positions
    seen = []
    te.model.token_embedding.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    out = te.encode_ids(ids, mask)
    assert seen == [(2, 9)] and out.shape == (2, 32, DIM)  # the longest prompt's 9 tokens, not 32
    full = te.model(ids, mask)  # all positions, as the reference encodes them
    keep = mask.bool()
    assert rel_l2(out[keep], full[keep]) < 1e-6 and torch.all(out[~keep] == 0)
    none = te.encode_ids(ids, torch.zeros_like(mask))  # no token at all: one position runs, all zero
    assert seen[-1] == (2, 1) and none.shape == (2, 32, DIM) and torch.all(none == 0)
    trimmed = te.encode_ids(ids, mask, pad=False)  # what the pipeline hands the DiT: the 9 rows only
    assert trimmed.shape == (2, 9, DIM) and torch.equal(trimmed, out[:, :9])


def test_encode_prompts_matches_encode_ids_and_transformers(diffusers_root, hf_model):
    te = turbovid.load_text_encoder(diffusers_root)  # public API; tokenizer/ beside text_encoder/ by default
    assert te.tokenizer.source == str(diffusers_root / "tokenizer")
    prompts = ["a cat runs over the field", "  a dog\n\n&amp;amp; a fox  "]
    out = te.encode(prompts)
    assert out.shape == (2, 512, DIM)
    ids, mask = te.tokenizer(prompts)
    assert torch.equal(out, te.encode_ids(ids, mask))
    check_parity(te, hf_model, ids, mask)
    # cleaning happened before tokenizing: the same tokens, so the same embedding (to rounding: alone,
    # the prompt's own length is encoded rather than the batch's longest)
    one_ids, one_mask = te.tokenizer(["a dog & a fox"])
    assert torch.equal(one_ids, ids[1:]) and torch.equal(one_mask, mask[1:])
    assert rel_l2(te.encode(["a dog & a fox"]), out[1:]) < 1e-6


@pytest.mark.parametrize("layout", ["google/umt5-xxl", "umt5-xxl"])  # Wan's repo, turbovid's checkpoint folder
def test_default_tokenizer_beside_wan_pth(tmp_path, wan_pth, layout):
    _, src = wan_pth
    shutil.copy(src, tmp_path / src.name)
    folder = tmp_path / layout
    make_tokenizer_dir(folder.parent).rename(folder)
    te = load_text_encoder(tmp_path / src.name)
    assert te.tokenizer.source == str(folder)


def test_default_tokenizer_offline_names_the_fix(tmp_path, wan_pth, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"google/umt5-xxl.*spiece\.model.*tokenizer=<folder>"):
        load_text_encoder(wan_pth[1])


def test_build_text_encoder_tiny_random():
    te = build_text_encoder("tiny-random", None, seed=0)
    assert isinstance(te.tokenizer, ByteTokenizer)
    out = te.encode(["a cat", "héllo"])
    assert out.shape == (2, 512, 64) and out.dtype == torch.float32 and te.device.type == "cpu"
    assert torch.all(out[0, 6:] == 0) and torch.all(out[0, :6].abs().sum(-1) > 0)  # 5 bytes + EOS
    assert torch.equal(out, build_text_encoder("tiny-random", seed=0).encode(["a cat", "héllo"]))
    assert not torch.equal(out, build_text_encoder("tiny-random", seed=1).encode(["a cat", "héllo"]))
    assert te.to("cpu", torch.float64).dtype == torch.float64
    assert te.encode(["a cat"]).dtype == torch.float64


def test_embedding_table_stays_in_cpu_memory():
    """to(<GPU>) moves the layers and leaves the token-embedding table on the CPU (meta stands in for a GPU)."""
    te = build_text_encoder("tiny-random", None, seed=0)
    moved = []
    te.to("meta", move=lambda m, d: moved.append((m, d)) or m.to(d))
    assert te.model.token_embedding.weight.device.type == "cpu" and te.model.blocks[0].attn.q.weight.is_meta
    assert te.device.type == "meta" and te.dtype == torch.float32
    assert [d.type for _, d in moved] == ["cpu", "meta", "meta"]  # token_embedding, blocks, norm
    other = build_text_encoder("tiny-random", None, seed=0).to(dtype=torch.float64)  # dtype alone: every part
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in other.model.parameters())


def test_encode_looks_rows_up_where_the_table_is(wan_pth):
    """The table's input ids arrive on the table's device; the layers run on their own (here: both CPU)."""
    _, path = wan_pth
    te = load_text_encoder(path, tokenizer="byte", device="cpu")
    seen = []
    te.model.token_embedding.register_forward_hook(lambda m, args, out: seen.append((args[0].device, out.shape)))
    out = te.encode(["a cat"])
    assert seen == [(torch.device("cpu"), (1, 6, te.dim))] and out.shape == (1, 512, te.dim)


@pytest.mark.gpu
def test_embedding_on_cpu_gives_the_same_encoding_on_gpu(wan_pth):
    _, path = wan_pth
    te = load_text_encoder(path, tokenizer="byte", device="cuda")
    assert te.model.token_embedding.weight.device.type == "cpu" and te.device.type == "cuda"
    prompts = ["a cat", "a red fox in the snow at dawn"]
    split = te.encode(prompts)
    te.model.token_embedding.to("cuda")  # the whole encoder on the GPU: the same rows, the same ops
    assert split.device.type == "cuda" and torch.equal(split, te.encode(prompts))


@pytest.mark.gpu
def test_graphed_encoding_equals_eager(wan_pth):
    """With graphs on, prompts of one 32-token bucket share a captured graph, and each gives the
    eager encoding of its own tokens (the bucket's extra positions are masked padding)."""
    _, path = wan_pth
    te = load_text_encoder(path, tokenizer="byte", device="cuda")
    prompts = [["a cat"], ["a red fox in the snow at dawn"], ["x" * 40]]
    eager = [te.encode(p) for p in prompts]
    te.graphs = True
    for p, want in zip(prompts, eager):
        got = te.encode(p)
        assert got.shape == want.shape and rel_l2(got.float(), want.float()) < 1e-3, p
        assert not got[:, len(p[0]) + 1:].any()  # past the prompt (and its end token): zero
    assert [k[0] for k in te._graphs] == [(1, 32, te.dim), (1, 64, te.dim)]  # two buckets, three prompts
    te.to("cuda")
    assert not te._graphs  # moved weights: the graphs are dropped


def test_graph_cache_keeps_the_latest_shapes(monkeypatch):
    """At most MAX_GRAPHS captured shapes: a new one drops the least recently replayed (and its memory)."""
    te = build_text_encoder("tiny-random", None, seed=0)
    captured = []

    class FakeGraph:
        def replay(self):
            pass

    def capture(x, mask):
        captured.append(x.shape[1])
        return FakeGraph(), x, mask, x * 2

    monkeypatch.setattr(te, "_capture", capture)
    mask = torch.ones(1, 1, dtype=torch.long)
    for n in (32, 64, 96, 128, 32, 160, 64):
        x = torch.full((1, n, te.dim), float(n))
        assert torch.equal(te._graphed(x, mask.expand(1, n)), 2 * x)  # the graph's output for this input
    assert captured == [32, 64, 96, 128, 160, 64]  # 32 replayed before 160 came; 64 dropped by 160
    assert [k[0][1] for k in te._graphs] == [128, 32, 160, 64] and len(te._graphs) == t5.MAX_GRAPHS


def test_graphs_off_on_the_cpu_and_for_one_request():
    te = build_text_encoder("tiny-random", None, seed=0)
    want = te.encode(["a cat"])
    te.graphs = True  # asked for, but the encoder is on the CPU: the eager path
    assert torch.equal(te.encode(["a cat"]), want) and not te._graphs


def test_tokenizer_vocab_larger_than_model_rejected(tmp_path):
    small = UMT5Encoder(turbovid.configs.T5Config(vocab_size=100, dim=16, dim_attn=16, dim_ffn=16, num_heads=2, num_layers=1))
    from turbovid.models.t5 import TextEncoder

    with pytest.raises(ValueError, match="token embeddings"):
        TextEncoder(small, ByteTokenizer())


def test_encode_ids_bad_input():
    te = build_text_encoder("tiny-random")
    ids, mask = te.tokenizer(["x"])
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        te.encode_ids(ids, mask[:, :10])
    with pytest.raises(ValueError, match="token ids must lie"):
        te.encode_ids(ids + 600, mask)
    with pytest.raises(ValueError, match="integer"):
        te.encode_ids(ids.float(), mask)


# ---- bad checkpoints: one line, names the file ----

def expect_error(path, match: str, **kw):
    with pytest.raises(CheckpointError, match=match) as e:
        load_text_encoder(path, tokenizer="byte", **kw)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", "not found")


def test_truncated_pth(tmp_path, wan_pth):
    data = wan_pth[1].read_bytes()
    bad = tmp_path / "t5.pth"
    bad.write_bytes(data[: len(data) // 2])
    expect_error(bad, "truncated|corrupt")


def test_truncated_safetensors_shard(tmp_path, diffusers_root):
    folder = tmp_path / "text_encoder"
    shutil.copytree(diffusers_root / "text_encoder", folder)
    shard = folder / "model-00002-of-00005.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated|corrupt") as e:
        load_text_encoder(folder, tokenizer="byte")
    assert str(shard) in str(e.value)


def test_missing_shard(tmp_path, diffusers_root):
    folder = tmp_path / "text_encoder"
    shutil.copytree(diffusers_root / "text_encoder", folder)
    (folder / "model-00003-of-00005.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00003-of-00005.safetensors: file not found"):
        load_text_encoder(folder, tokenizer="byte")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    expect_error(tmp_path, "no \\*.safetensors")


def test_keys_matching_no_format(tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(4, 4), "blocks.0.self_attn.q.weight": torch.zeros(4, 4)}, path)
    expect_error(path, "no umT5 encoder weights recognised")


def test_inconsistent_shapes(tmp_path, wan_pth):
    sd = torch.load(wan_pth[1], weights_only=True)
    sd["blocks.1.attn.k.weight"] = torch.zeros(DIM, DIM + 1, dtype=torch.bfloat16)
    path = tmp_path / "t5.pth"
    torch.save(sd, path)
    expect_error(path, r"blocks\.1\.attn\.k\.weight has shape \(32, 33\)")


def test_heads_not_dividing_width(tmp_path, wan_pth):
    sd = torch.load(wan_pth[1], weights_only=True)
    for i in range(LAYERS):
        sd[f"blocks.{i}.pos_embedding.embedding.weight"] = torch.zeros(32, 5, dtype=torch.bfloat16)
    path = tmp_path / "t5.pth"
    torch.save(sd, path)
    expect_error(path, "not a multiple of the 5 heads")


def test_missing_tensor(tmp_path, wan_pth):
    sd = torch.load(wan_pth[1], weights_only=True)
    del sd["blocks.1.ffn.fc2.weight"]
    path = tmp_path / "t5.pth"
    torch.save(sd, path)
    expect_error(path, r"missing keys \(e\.g\. blocks\.1\.ffn\.fc2\.weight\)")


def test_config_json_contradicting_shapes(tmp_path, diffusers_root):
    folder = tmp_path / "text_encoder"
    shutil.copytree(diffusers_root / "text_encoder", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["d_model"] = 4096
    (folder / "config.json").write_text(json.dumps(cfg))
    expect_error(folder, "config.json says d_model=4096 but the tensors give 32")
