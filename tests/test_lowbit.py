"""The int4 / q8 modes: our CPU kernel against its integer arithmetic written in torch, the SIMD
build against the narrower ones (AVX2, portable), the one-call decode steps against the module path, and the
per-network quantize specs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from q3tts.api import Qwen3TTS
from q3tts.generate.prompt import Utterance
from q3tts.nn import lowbit
from q3tts.nn.layers import KVCache, causal_mask
from q3tts.nn.lowbit import LowBitLinear, quantize_groups
from q3tts.nn.quant import Int8Linear, QuantizationError, QuantizeSpec, linear_weight_bytes, parse_quantize, quantize_

pytestmark = pytest.mark.skipif(not lowbit.kernel_available(), reason="no C++ compiler to build the low-bit kernel")


def reference_linear(layer: LowBitLinear, x: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in torch: activations rounded to int8 per row and group of the
    layer, times the dequantised weights, summed per group in float."""
    G = layer.group
    xg = x.reshape(x.shape[0], -1, G)
    scale = xg.abs().amax(-1, keepdim=True) / 127
    xq = torch.where(scale > 0, torch.round(xg / scale.clamp(min=1e-30)), torch.zeros_like(xg)) * scale
    y = xq.reshape(x.shape) @ layer.dequantized().T
    return y if layer.bias is None else y + layer.bias


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows, out_features", [(1, 112), (3, 144), (5, 176), (13, 304), (80, 96)])
def test_kernel_computes_its_integer_arithmetic(bits, rows, out_features):
    """Odd block counts exercise the tiles' tails; 80 rows of 6 blocks are split over threads by rows."""
    g = torch.Generator().manual_seed(rows)
    linear = torch.nn.Linear(256, out_features, bias=rows % 2 == 1)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g))
    layer = LowBitLinear.from_linear(linear, bits)
    x = torch.randn(rows, 256, generator=g)
    x[0, :32] = 0  # an all-zero group: scale 0, no division by it
    got, want = layer(x), reference_linear(layer, x)
    assert got.shape == (rows, out_features)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert lowbit.kernels().isa() in (0, 256, 257, 512)


NARROWER = {"avx2vnni": 257, "avx2": 256, "portable": 0}


@pytest.mark.parametrize("variant", list(NARROWER))
@pytest.mark.parametrize("bits", [4, 8])
def test_narrower_builds_compute_the_same(variant, bits):
    """The AVX2 (with and without AVX-VNNI) and portable paths, built here beside the native one."""
    if variant != "portable" and lowbit.kernels().isa() < 256:
        pytest.skip("this CPU has no AVX2")
    try:
        ops = lowbit.kernels(variant)
    except lowbit.KernelUnavailable as e:
        pytest.skip(str(e))
    assert ops.isa() == NARROWER[variant]
    g = torch.Generator().manual_seed(bits)
    linear = torch.nn.Linear(256, 80, bias=True)  # 5 blocks: the odd tails of every tiling
    layer = LowBitLinear.from_linear(linear, bits)
    for rows in (1, 2, 3):
        x = 3 * torch.randn(rows, 256, generator=g)
        got = ops.linear(x, layer.weight_packed, layer.weight_scales, layer.out_features, layer.group, bits, layer.bias)
        torch.testing.assert_close(got, reference_linear(layer, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits, bound", [(4, 0.12), (8, 0.006)])
def test_group_quantisation_error_and_packing(bits, bound):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    q, scale = quantize_groups(w, bits)
    lo, hi = (-8, 7) if bits == 4 else (-127, 127)
    assert q.min() >= lo and q.max() <= hi and scale.shape == (64, 4)
    approx = (q.float().reshape(64, 4, 32) * scale[..., None]).reshape(64, 128)
    # Gaussian weights, 32 per group: measured 0.094 (int4) and 0.0045 (int8) relative error.
    assert (approx - w).norm() / w.norm() < bound
    layer = LowBitLinear.from_linear(torch.nn.Linear(128, 64, bias=False), bits)
    layer.weight_packed, layer.weight_scales = lowbit.pack(q, scale, bits)
    torch.testing.assert_close(layer.dequantized(), approx)  # the packed layout reads back exactly


def codes_of(tts, texts, **kw):
    spk = tts.get_supported_speakers()[0]
    utts = [Utterance(t, "english", speaker=spk) for t in texts]
    opts = dict(do_sample=False, subtalker_dosample=False, max_new_tokens=12, min_new_tokens=2)
    return tts.generate_codes(utts, **{**opts, **kw})


@pytest.fixture(scope="module", params=["int4", "q8"])
def lowbit_tts(make_tiny, request):
    return Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", quantize=request.param)


def with_and_without_kernel(net, run):
    """run() with the net's one-call step, then through its modules (same low-bit linears)."""
    kernel = net.stack_kernel
    assert kernel is not None
    try:
        fused = run()
        net.stack_kernel = None
        return fused, run()
    finally:
        net.stack_kernel = kernel


def test_talker_step_equals_the_module_path(lowbit_tts):
    """One decode step of two rows over a cache with holes: each row sees only its mask's slots."""
    talker = lowbit_tts.checkpoint.networks.talker
    g = torch.Generator().manual_seed(0)
    B, S, hidden = 2, 24, talker.cfg.hidden_size
    k0 = [torch.randn(B, talker.cfg.num_key_value_heads, S, talker.cfg.head_dim, generator=g)
          for _ in talker.model.layers]  # fmt: skip
    v0 = [torch.randn(t.shape, generator=g) for t in k0]
    valid = torch.rand(B, S, generator=g) > 0.3
    write = torch.tensor([[9], [17]])
    valid[0, 9] = valid[1, 17] = True
    valid[0, 12:] = False  # row 0 has written less
    x = torch.randn(B, 1, hidden, generator=g)

    def run():
        caches = [KVCache(k.clone(), v.clone()) for k, v in zip(k0, v0)]
        with torch.inference_mode():
            out = talker(x, torch.tensor([[30], [41]]), valid[:, None, None, :20], caches, write)
        return out, caches

    (fused, fused_caches), (plain, plain_caches) = with_and_without_kernel(talker, run)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    for a, b in zip(fused_caches, plain_caches):  # the new k/v landed in the same slots
        torch.testing.assert_close(a.k, b.k, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.v, b.v, rtol=1e-4, atol=1e-4)


def test_talker_prefill_equals_the_module_path(lowbit_tts):
    """A left-padded prefill of two prompts (the masks DecodeBatch builds), whole and in two chunks."""
    talker = lowbit_tts.checkpoint.networks.talker
    g = torch.Generator().manual_seed(2)
    T = 11
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, :4] = False  # the second prompt is 4 tokens shorter
    x = torch.randn(2, T, talker.cfg.hidden_size, generator=g)
    positions = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
    ar = torch.arange(T)

    def run(chunks):
        caches, outs, done = talker.new_caches(2, T), [], 0
        with torch.inference_mode():
            for end in chunks:
                mask = causal_mask(ar[done:end], ar[:end], valid[:, :end])
                outs.append(talker(x[:, done:end], positions[:, done:end], mask, caches, ar[done:end]))
                done = end
        return torch.cat(outs, 1), caches

    for chunks in ([T], [6, T]):
        (fused, fc), (plain, pc) = with_and_without_kernel(talker, lambda c=chunks: run(c))
        torch.testing.assert_close(fused[valid], plain[valid], rtol=1e-4, atol=1e-4)  # pads' outputs are unused
        torch.testing.assert_close(fc[-1].k, pc[-1].k, rtol=1e-4, atol=1e-4)


def test_code_predictor_steps_equal_the_module_path(lowbit_tts):
    """The frame's first call (2 tokens per row) and a later one (1 token), as predict_rest runs them."""
    cp = lowbit_tts.checkpoint.networks.talker.code_predictor
    g = torch.Generator().manual_seed(1)
    hidden = lowbit_tts.checkpoint.config.talker.hidden_size
    first, later = torch.randn(3, 2, hidden, generator=g), torch.randn(3, 1, hidden, generator=g)
    pos = torch.arange(cp.cfg.num_code_groups + 1)

    def run():
        caches = cp.new_caches(3)
        with torch.inference_mode():
            return cp(first, pos[:2], caches, pos[:2]), cp(later, pos[2:3], caches, pos[2:3])

    for a, b in zip(*with_and_without_kernel(cp, run)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class CountingKernel:
    """A StackKernel that counts its calls."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def takes_head(self, head):
        return self.kernel.takes_head(head)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.kernel(*args, **kwargs)


def test_generation_runs_on_the_one_call_steps(lowbit_tts):
    cp = lowbit_tts.checkpoint.networks.talker.code_predictor
    kernel = cp.stack_kernel
    cp.stack_kernel = counting = CountingKernel(kernel)
    try:
        codes = codes_of(lowbit_tts, ["Hello there.", "A longer sentence, for a second row."])
    finally:
        cp.stack_kernel = kernel
    frames = max(c.shape[0] for c in codes)
    # every code-predictor pass of every step went through the kernel (the step that hits
    # max_new_tokens runs but yields no frame)
    assert counting.calls in (15 * frames, 15 * (frames + 1))
    assert all(c.shape[1] == 16 and c.min() >= 0 for c in codes)


def test_int4_logits_are_close_to_float(custom_voice_tts):
    talker = custom_voice_tts.checkpoint.networks.talker
    quantised = quantize_(copy.deepcopy(talker), "int4")
    embeds = torch.randn(2, 12, talker.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(12)[None].expand(2, -1)
    with torch.inference_mode():
        ref = talker.code_predictor.lm_head[0](talker.code_predictor(talker(embeds, positions), torch.arange(12)))
        got = quantised.code_predictor.lm_head[0](
            quantised.code_predictor(quantised(embeds, positions), torch.arange(12))
        )
    cosine = F.cosine_similarity(ref.flatten(1), got.flatten(1), dim=-1)
    # Measured on this checkpoint: cosine 0.947 and 0.962 through the talker and the code
    # predictor (int8: above 0.998); random weights have no structure for 4 bits to keep.
    assert cosine.min().item() > 0.9, cosine
    low, fp32 = linear_weight_bytes(quantised)
    assert 6.5 < fp32 / low < 7.2  # 4 bits + an fp16 scale per 32 weights = 4.5 bits


def test_quantize_specs():
    assert parse_quantize(None) is None and parse_quantize("none") is None
    assert parse_quantize("int4") == QuantizeSpec("int4", "int4")
    spec = parse_quantize("talker=int4,predictor=q8")
    assert (spec.talker, spec.predictor, str(spec)) == ("int4", "q8", "talker=int4,predictor=q8")
    assert str(parse_quantize("talker=int8,predictor=int8")) == "int8"
    assert parse_quantize("predictor=int4") == QuantizeSpec("float", "int4")
    for bad in ("int3", "talker=int5", "codec=int4", "talker=int4,talker=q8", "talker"):
        with pytest.raises(QuantizationError, match="unknown quantize"):
            parse_quantize(bad)


def test_mixed_spec_loads_each_network_at_its_precision(make_tiny):
    tts = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", quantize="talker=int4,predictor=int8")
    talker = tts.checkpoint.networks.talker
    assert isinstance(talker.model.layers[0].mlp.down_proj, LowBitLinear)
    assert isinstance(talker.code_predictor.model.layers[0].mlp.down_proj, Int8Linear)
    assert talker.stack_kernel is not None and talker.code_predictor.stack_kernel is None
    assert isinstance(talker.codec_head, torch.nn.Linear)  # codebook 0 and EOS stay float
    assert codes_of(tts, ["Hi."])[0].shape[1] == 16


def test_cli_takes_the_modes_and_refuses_a_bad_one_in_one_line(make_tiny, tmp_path, capsys):
    from q3tts.cli import main

    model, out = str(make_tiny("custom_voice")), tmp_path / "a.wav"
    args = ["speak", "Hello.", "-m", model, "--speaker", "vivian", "-o", str(out), "--max-new-tokens", "4", "-q"]
    assert main([*args, "--quantize", "int3"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown quantize 'int3'" in err
    assert main([*args, "--quantize", "talker=int4,predictor=q8"]) == 0 and out.stat().st_size > 44


@pytest.mark.parametrize("variant", ["native", *NARROWER])
def test_snake_op_matches_torch_in_every_build(variant):
    """The codec's one-pass SnakeBeta: channel counts with and without a SIMD tail, large |x * alpha|
    (the scalar path), and NaN kept."""
    if variant not in ("native", "portable") and lowbit.kernels().isa() < 256:
        pytest.skip("this CPU has no AVX2")
    try:
        ops = lowbit.kernels(variant)
    except lowbit.KernelUnavailable as e:
        pytest.skip(str(e))
    g = torch.Generator().manual_seed(7)
    for channels in (96, 21):
        x = 4 * torch.randn(2, 300, channels, generator=g)
        x[0, 0, :3] = torch.tensor([1e4, -3e4, float("nan")])
        alpha = (0.3 * torch.randn(channels, generator=g)).exp()
        inv_beta = 1 / ((0.3 * torch.randn(channels, generator=g)).exp() + 1e-9)
        want = x + torch.sin(x * alpha) ** 2 * inv_beta
        got = ops.snake(x, alpha, inv_beta)
        assert got.shape == x.shape and bool(got[0, 0, 2].isnan())
        torch.testing.assert_close(got.nan_to_num(0), want.nan_to_num(0), rtol=2e-6, atol=2e-6)
        assert not torch.equal(got, x)  # it did compute something


def test_lowbit_modes_run_the_codec_activations_through_the_kernel(lowbit_tts, custom_voice_tts):
    """A kernel mode's codec: every SnakeBeta on the fused op, the decode within float rounding of the
    float mode's torch ops, and still exactly streamable."""
    from q3tts.nn.codec.decoder import SnakeBeta

    fused_dec = lowbit_tts.checkpoint.speech_tokenizer.decoder
    torch_dec = custom_voice_tts.checkpoint.speech_tokenizer.decoder
    snakes = [m for m in fused_dec.modules() if isinstance(m, SnakeBeta)]
    assert snakes and all(m.fused is not None for m in snakes)
    assert all(m.fused is None for m in torch_dec.modules() if isinstance(m, SnakeBeta))
    codes = torch.randint(0, 2048, (1, 16, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        offline = fused_dec(codes)
        stream = fused_dec.new_stream(1)
        pieces = [fused_dec.decode_chunk(codes[..., i : i + 5], stream) for i in range(0, 12, 5)]
        assert torch.equal(torch.cat(pieces, -1), offline)
        torch.testing.assert_close(offline, torch_dec(codes), rtol=0, atol=1e-4)
