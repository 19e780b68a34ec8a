"""Codec decoder: parity with the reference, exact streaming, and audible random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from q3tts.model import load_speech_tokenizer

FRAME = 1920


@pytest.fixture(scope="module")
def decoder(tiny_checkpoint):
    return load_speech_tokenizer(tiny_checkpoint / "speech_tokenizer", with_encoder=False).decoder


def random_codes(frames: int, seed: int, batch: int = 1) -> torch.Tensor:  # [B, 16, T]
    return torch.randint(0, 2048, (batch, 16, frames), generator=torch.Generator().manual_seed(seed))


def test_shape_range_and_audible(decoder):
    codes = random_codes(40, 0, batch=2)
    wav = decoder(codes)
    assert wav.shape == (2, 1, 40 * FRAME) and wav.dtype == torch.float32
    assert wav.abs().max() <= 1.0
    rms = wav.pow(2).mean(-1).sqrt().flatten()
    assert (rms > 0.01).all(), f"random decoder is nearly silent: rms {rms.tolist()}"
    assert (wav.abs() >= 0.999).float().mean() < 0.05, "random decoder output is mostly clipped"
    assert not torch.equal(wav[0], wav[1])


def test_rows_are_independent(decoder):
    codes = random_codes(30, 1, batch=3)
    together = decoder(codes)
    for row in range(3):
        alone = decoder(codes[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-6, rtol=0)


def test_causal_prefix(decoder):
    codes = random_codes(60, 2)
    full = decoder(codes)
    prefix = decoder(codes[..., :23])
    assert torch.equal(prefix, full[..., : 23 * FRAME])


@pytest.mark.parametrize("chunk", [1, 2, 4, 25])
def test_stream_equals_offline_exactly_beyond_30s(decoder, chunk):
    frames = 400  # 32 s at 12.5 Hz: past the reference's 300-frame window where it pops
    codes = random_codes(frames, 3)
    offline = decoder(codes)
    stream = decoder.new_stream(1)
    pieces = [decoder.decode_chunk(codes[..., i : i + chunk], stream) for i in range(0, frames, chunk)]
    assert all(p.shape[-1] == min(chunk, frames - i * chunk) * FRAME for i, p in enumerate(pieces))
    streamed = torch.cat(pieces, dim=-1)
    assert streamed.shape == offline.shape
    assert torch.equal(streamed, offline), f"max diff {(streamed - offline).abs().max().item()}"


def test_uneven_chunks_and_empty_chunk(decoder):
    codes = random_codes(50, 4)
    stream = decoder.new_stream(1)
    sizes = [3, 0, 1, 7, 13, 26]
    out, i = [], 0
    for n in sizes:
        out.append(decoder.decode_chunk(codes[..., i : i + n], stream))
        i += n
    assert torch.equal(torch.cat(out, -1), decoder(codes))


def test_parity_with_reference(decoder, tiny_checkpoint, oracle):
    lengths = [1, 17, 120, 300]
    codes = [random_codes(n, 10 + n)[0] for n in lengths]  # [16, T] each
    jobs = [dict(id=f"dec{n}", op="codec_decode", checkpoint=str(tiny_checkpoint), codes=c.T.numpy())
            for n, c in zip(lengths, codes)]  # fmt: skip
    ref = oracle(jobs)
    for n, c in zip(lengths, codes):
        theirs = np.asarray(ref[f"dec{n}"]["audio"], dtype=np.float64)
        ours = decoder(c[None])[0, 0].double().numpy()
        assert ours.shape == theirs.shape, (n, ours.shape, theirs.shape)
        diff = np.abs(ours - theirs).max()
        assert diff <= 1e-4, f"{n} frames: max abs diff {diff}"
        assert np.abs(theirs).max() > 0.05


def test_stacked_streams_at_different_frames_decode_like_their_own(decoder):
    """Streams at different positions (one fresh) decoded together in one call, then unstacked,
    give what each gives alone (to float rounding) and carry on correctly afterwards."""
    from q3tts.nn.codec.decoder import DecoderStream

    codes = [random_codes(n, 20 + n) for n in (80, 3, 0)]  # histories: beyond the window, short, fresh
    alone, together = [decoder.new_stream(1) for _ in codes], [decoder.new_stream(1) for _ in codes]
    for c, a, b in zip(codes, alone, together):
        decoder.decode_chunk(c, a)
        decoder.decode_chunk(c, b)
    for step in range(3):
        nxt = [random_codes(4, 100 * step + i) for i in range(3)]
        want = [decoder.decode_chunk(c, a) for c, a in zip(nxt, alone)]
        stacked = DecoderStream.stack(together)
        got = decoder.decode_chunk(torch.cat(nxt), stacked)
        stacked.unstack(together)
        for i in range(3):
            torch.testing.assert_close(got[i : i + 1], want[i], atol=1e-5, rtol=0)
    assert [s.frames for s in together] == [a.frames for a in alone] == [92, 15, 12]


@pytest.mark.parametrize("kernel, dilation", [(7, 3), (1, 1)])
def test_time_major_conv_is_the_causal_conv(kernel, dilation):
    """The residual units' convs as shifted matmuls over tap-major weights (the CPU form, row by row,
    and the batched form other devices run) against torch's conv1d on the zero-padded signal, in the
    official weight layout, which the relaid parameter still shows to state_dict."""
    from q3tts.nn.codec.decoder import CausalConv, DecoderStream, shifted_matmuls

    torch.manual_seed(kernel)
    conv = CausalConv(16, 24, kernel, dilation=dilation)
    official = conv.conv.weight.detach().clone()
    conv.relayout_()
    assert torch.equal(conv.state_dict()["conv.weight"], official) and conv.taps().is_contiguous()
    x = torch.randn(3, 40, 16)
    context = (kernel - 1) * dilation
    padded = torch.nn.functional.pad(x.transpose(1, 2), (context, 0))
    want = torch.nn.functional.conv1d(padded, official, conv.conv.bias, dilation=dilation).transpose(1, 2)
    with torch.no_grad():
        got = conv.forward_time_major(x, DecoderStream(3))
        batched = shifted_matmuls(padded.transpose(1, 2), conv.taps(), conv.conv.bias, dilation)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, want, rtol=1e-5, atol=1e-5)
