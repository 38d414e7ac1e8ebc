"""Eager code calls the kernel wrappers' implementations directly; torch.compile sees the custom ops
(turbovid/ops/dispatch.py). Each check runs in a fresh interpreter: what matters is what a new
process imports."""
from interpreter_helpers import run_fresh


def _run(code: str) -> str:
    return run_fresh(code, timeout=600)


def test_an_eager_video_never_imports_torch_dynamo():
    # a custom op's first call imports torch._dynamo (~0.8 s here); an init drawn on the meta device
    # (every checkpoint load builds there) imports it and sympy
    out = _run("""
        import sys
        from turbovid.pipeline import Pipeline
        from turbovid.options import GenerationRequest, PipelineOptions
        for attention, quant in (("sla", "int8"), ("dense", "none")):
            pipe = Pipeline.from_options(PipelineOptions(model="tiny-random", device="cpu", attention=attention,
                                                         quant=quant))
            pipe.generate(GenerationRequest(prompt="a fox", num_frames=1, num_steps=1))
        import torch
        from turbovid.configs import T5_PRESETS
        from turbovid.models.t5 import UMT5Encoder
        with torch.device("meta"):  # as a checkpoint load builds it: no init drawn on meta
            UMT5Encoder(T5_PRESETS["umt5-xxl"])
        print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
    """)
    assert out.strip().splitlines()[-1] == "[]"


def test_compiled_code_goes_through_the_custom_ops():
    out = _run("""
        import torch
        from turbovid.ops.attention import sla
        from turbovid.ops.quant import int8

        seen = []
        def backend(gm, example_inputs):
            seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
            return gm
        q, k, v = (torch.randn(1, 64, 2, 16) for _ in range(3))
        layer = int8.Int8Linear.from_linear(torch.nn.Linear(128, 64))
        f = lambda q, k, v, x: (sla.sla_attention(q, k, v, topk=0.5, proj_weight=None, proj_bias=None, blkq=16, blkk=16),
                                layer(x))
        eager = f(q, k, v, torch.randn(4, 128))
        compiled = torch.compile(f, backend=backend, fullgraph=True)(q, k, v, torch.randn(4, 128))
        print(sorted({t for t in seen if "turbovid" in t}))
    """)
    assert out.strip().splitlines()[-1] == "['turbovid.int8_linear.default', 'turbovid.sla.default']"
