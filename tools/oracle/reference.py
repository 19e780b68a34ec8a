"""Run the official `qwen-tts` package (our test oracle) on a batch of jobs.

    .oracle-venv/bin/python tools/oracle/reference.py JOBS.json OUT_DIR
    .oracle-venv/bin/python tools/oracle/reference.py --selftest

Runs ONLY in the oracle venv (tools/oracle/setup.sh); our package never imports this file.
JOBS.json is a list of {"id": str, "op": str, "checkpoint": dir, ...args}. Array arguments are
paths to .npy files. For every job it writes OUT_DIR/<id>.json:

    {"id", "op", "ok": true,  "result": {scalars and lists}, "arrays": [names], "seconds"}
    {"id", "op", "ok": false, "error": "Type: message", "traceback": "..."}

and, on success, OUT_DIR/<id>.npz with the arrays. A list of arrays named X is stored as
X__0, X__1, ... (tools/oracle/client.py turns them back into a list). A failing job does not
stop the others.

All ops run in float32 on CPU, 1 thread (env Q3TTS_ORACLE_THREADS), eager attention (a job may
set "attn": "sdpa"), with torch.manual_seed(SEED) before each job.
`checkpoint` is a model folder (config.json + speech_tokenizer/) or, for the codec ops only, a
bare speech-tokenizer folder. Ops and their arguments ("?" = optional):

  info                    -> model_type, tts_model_size, tokenizer_type, speakers, languages,
                             config (resolved), generate_defaults, sample_rate,
                             state_dict / speech_tokenizer_state_dict: sorted [[key, shape], ...]
  tokenize                texts: str | [str]
                          -> raw, assistant, ref, instruct: one id list per text, tokenized exactly
                             as the generate paths do (each text alone, templates of notes §1.7)
  text_embed              ids: npy int64 [B,T]
                          -> text_embedding [B,T,text_hidden], embeds [B,T,H] (after text_projection)
  codec_embed             ids: npy int64 [B,T], k?: int 0..14
                          -> talker [B,T,H] (talker codec_embedding);
                             code_predictor [B,T,H] = code_predictor codec_embedding[k] (codebook k+1)
  talker_forward          inputs_embeds: npy [B,T,H], attention_mask?: npy [B,T] (default ones)
                          -> logits [B,T,V], hidden [B,T,H] (final normed), position_ids [3,B,T],
                             rope_deltas [B,1]
  code_predictor_forward  inputs_embeds: npy [B,T,H_talker]
                          -> logits [B,T,15,V_cp] (lm_head[i] at every position),
                             hidden [B,T,H_cp] (final normed), projected [B,T,H_cp]
  mel                     audio: npy float32 [N] or [B,N] (24 kHz)
                          -> mel [T,128] or [B,T,128]: the speaker encoder's log-mel
  speaker_embedding       audio: npy float32 [N], sr?: int (default 24000)   (Base models)
                          -> embedding [enc_dim], mel [T,128] (the mel the encoder actually saw)
  codec_decode            codes: npy int64 [T,16] | [B,T,16] (-1 = right padding) | [npy, ...]
                          -> audio [N] for one [T,16], else audio list; sample_rate
  codec_encode            audio: npy float32 [N] | [npy, ...], sr?: int (default 24000)
                          -> codes [T,16] int64 for one, else list
  prefill_capture         call: custom_voice | voice_design | voice_clone, plus the call's kwargs
                          (text, language, speaker, instruct, ref_audio, ref_sr, ref_text,
                          x_vector_only_mode, non_streaming_mode, ...)
                          -> inputs_embeds [B,T,H], attention_mask [B,T], logits [B,T,V],
                             hidden [B,T,H], position_ids [3,B,T], trailing_text_hidden [B,L,H],
                             tts_pad_embed [1,1,H]; voice_clone also ref_code / ref_spk_embedding
                             lists (null entries dropped, see *_index)
  generate                same arguments as prefill_capture, max_new_tokens? (default 20)
                          -> audio list, codes list ([T,16] per item, generated codes only),
                             talker_hidden list ([T,H]), decode_codes list (what was vocoded:
                             ref codes + generated for ICL clone), sample_rate, ref_* as above

prefill_capture / generate default to greedy (do_sample=False, subtalker_dosample=False); every
other generation kwarg (repetition_penalty, ...) is passed through and otherwise falls back to
generation_config.json, then to the reference's hard defaults. ref_audio is an .npy path (with
ref_sr, default 24000), a list of them, or an audio-file path that the reference loads itself.
"""

import importlib.machinery
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

SEED = 0
# Tiny models on a busy 2-core box: with 2 threads every small op pays thread hand-off under
# contention (measured 12x slower than 1 thread); results differ between 1 and 2 threads only by
# rounding (~2e-6). Q3TTS_ORACLE_THREADS=1 is the fast choice on a shared machine.
NUM_THREADS = int(os.environ.get("Q3TTS_ORACLE_THREADS", "1"))
# Both backends are deterministic on CPU and agree to ~2e-6 on the tiny models. "eager" is the
# plain fp32 matmul + softmax, independent of which SDPA kernel torch picks. A job may override it
# with "attn": "sdpa".
ATTN_IMPLEMENTATION = "eager"
STUBBED = ("sox", "onnxruntime", "torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi")


class _Stub(types.ModuleType):
    """Placeholder for a module that only the (unused) 25 Hz tokenizer path needs."""

    def __getattr__(self, attr):
        raise AttributeError(
            f"{self.__name__}.{attr}: '{self.__name__}' is a q3tts oracle stub (only the 25 Hz tokenizer uses it)"
        )


def install_stubs() -> None:
    """Make `import qwen_tts` work without sox/onnxruntime/torchaudio.

    qwen_tts imports its 25 Hz tokenizer eagerly, and that imports these three packages. The 12 Hz
    path never touches them. Each stub needs a __spec__: transformers probes optional packages
    with importlib.util.find_spec, which raises on a module whose __spec__ is None.
    """
    for name in STUBBED:
        if name in sys.modules:
            continue
        mod = _Stub(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        sys.modules[name] = mod
    sys.modules["torchaudio"].compliance = sys.modules["torchaudio.compliance"]
    sys.modules["torchaudio.compliance"].kaldi = sys.modules["torchaudio.compliance.kaldi"]


install_stubs()  # must run before anything imports qwen_tts

import numpy as np  # noqa: E402
import torch  # noqa: E402
from qwen_tts import Qwen3TTSModel, Qwen3TTSTokenizer  # noqa: E402
from qwen_tts.core.models import modeling_qwen3_tts as ref_modeling  # noqa: E402

# ----------------------------------------------------------------------------- loading

_MODELS: dict = {}


def load(checkpoint: str, attn: str):
    """Load a checkpoint once per (path, attention backend): a Qwen3TTSModel or a bare codec."""
    key = (str(Path(checkpoint).resolve()), attn)
    if key not in _MODELS:
        kwargs = dict(dtype=torch.float32, device_map="cpu", attn_implementation=attn)
        cfg = json.loads((Path(checkpoint) / "config.json").read_text())
        if cfg.get("model_type", "").startswith("qwen3_tts_tokenizer"):
            _MODELS[key] = Qwen3TTSTokenizer.from_pretrained(checkpoint, **kwargs)
        else:
            _MODELS[key] = Qwen3TTSModel.from_pretrained(checkpoint, **kwargs)
    return _MODELS[key]


def codec_of(m):
    return m if isinstance(m, Qwen3TTSTokenizer) else m.model.speech_tokenizer


def tts_of(m) -> Qwen3TTSModel:
    if isinstance(m, Qwen3TTSTokenizer):
        raise ValueError("this op needs a full model checkpoint, not a bare speech tokenizer")
    return m


# ----------------------------------------------------------------------------- helpers


def npy(path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def tensor(path, dtype=None) -> torch.Tensor:
    t = torch.from_numpy(npy(path))
    return t if dtype is None else t.to(dtype)


def as_np(t) -> np.ndarray:
    return t.detach().to("cpu").numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def shapes(state_dict) -> list:
    return [[k, list(v.shape)] for k, v in sorted(state_dict.items())]


# ----------------------------------------------------------------------------- simple ops


def op_info(m, job):
    codec = codec_of(m)
    res = dict(
        speech_tokenizer_state_dict=shapes(codec.model.state_dict()), sample_rate=int(codec.get_output_sample_rate())
    )
    if isinstance(m, Qwen3TTSTokenizer):
        return {}, dict(res, model_type="speech_tokenizer", config=codec.model.config.to_dict())
    model = m.model
    res.update(
        model_type=model.tts_model_type,
        tts_model_size=model.tts_model_size,
        tokenizer_type=model.tokenizer_type,
        speakers=m.get_supported_speakers(),
        languages=m.get_supported_languages(),
        config=model.config.to_dict(),
        generate_defaults=m.generate_defaults,
        state_dict=shapes(model.state_dict()),
    )
    return {}, res


def op_tokenize(m, job):
    tts = tts_of(m)
    texts = job["texts"] if isinstance(job["texts"], list) else [job["texts"]]

    def ids(strings):  # the wrapper's own tokenization: each string alone, no padding
        return [t[0].tolist() for t in tts._tokenize_texts(strings)]

    return {}, dict(
        raw=ids(texts),
        assistant=ids([tts._build_assistant_text(t) for t in texts]),
        ref=ids([tts._build_ref_text(t) for t in texts]),
        instruct=ids([tts._build_instruct_text(t) for t in texts]),
    )


def op_text_embed(m, job):
    talker = tts_of(m).model.talker
    ids = tensor(job["ids"], torch.long)
    raw = talker.get_text_embeddings()(ids)
    return dict(text_embedding=as_np(raw), embeds=as_np(talker.text_projection(raw))), {}


def op_codec_embed(m, job):
    talker = tts_of(m).model.talker
    ids = tensor(job["ids"], torch.long)
    arrays = dict(talker=as_np(talker.get_input_embeddings()(ids)))
    if job.get("k") is not None:
        arrays["code_predictor"] = as_np(talker.code_predictor.get_input_embeddings()[int(job["k"])](ids))
    return arrays, {}


def op_talker_forward(m, job):
    """One prefill-style talker forward, exactly as the first call inside generate().

    The talker's forward derives positions from the attention mask (get_rope_index): three
    identical rows of cumsum(mask) - 1, with masked slots set to 1, and it stores rope_deltas on
    the module. A single-position input would be taken for a decode step (which runs the code
    predictor), so T == 1 goes through the same position code and the inner model directly.
    """
    talker = tts_of(m).model.talker
    x = tensor(job["inputs_embeds"], torch.float32)
    mask = (
        tensor(job["attention_mask"], torch.long)
        if job.get("attention_mask")
        else torch.ones(x.shape[:2], dtype=torch.long)
    )
    seen = {}
    hook = talker.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(position_ids=kwargs["position_ids"]), with_kwargs=True
    )
    try:
        if x.shape[1] > 1:
            out = talker(inputs_embeds=x, attention_mask=mask, output_hidden_states=True)
            logits, hidden = out.logits, out.hidden_states[0][-1]
        else:
            pos, deltas = talker.get_rope_index(mask)
            talker.rope_deltas = deltas - (1 - mask).sum(dim=-1, keepdim=True)
            inner = talker.model(inputs_embeds=x, attention_mask=mask, position_ids=pos)
            hidden = inner.last_hidden_state
            logits = talker.codec_head(hidden)
    finally:
        hook.remove()
    return dict(
        logits=as_np(logits),
        hidden=as_np(hidden),
        position_ids=as_np(seen["position_ids"]),
        rope_deltas=as_np(talker.rope_deltas),
    ), {}


def op_code_predictor_forward(m, job):
    """All 15 heads at every position of one causal forward.

    generate() runs the same network incrementally (2-token prefill, then one token per step with
    a KV cache, head g at step g); a full causal forward gives the same values up to rounding.
    """
    cp = tts_of(m).model.talker.code_predictor
    x = cp.small_to_mtp_projection(tensor(job["inputs_embeds"], torch.float32))
    hidden = cp.model(inputs_embeds=x, use_cache=False).last_hidden_state
    logits = torch.stack([head(hidden) for head in cp.lm_head], dim=2)
    return dict(logits=as_np(logits), hidden=as_np(hidden), projected=as_np(x)), {}


def reference_mel(audio: torch.Tensor) -> torch.Tensor:
    """[B,N] -> [B,T,128]: the arguments extract_speaker_embedding passes to mel_spectrogram."""
    return ref_modeling.mel_spectrogram(
        audio, n_fft=1024, num_mels=128, sampling_rate=24000, hop_size=256, win_size=1024, fmin=0, fmax=12000
    ).transpose(1, 2)


def op_mel(m, job):
    audio = tensor(job["audio"], torch.float32)
    mel = reference_mel(audio.unsqueeze(0) if audio.dim() == 1 else audio)
    return dict(mel=as_np(mel[0] if audio.dim() == 1 else mel)), {}


def op_speaker_embedding(m, job):
    """The x-vector of the voice-clone path: create_voice_clone_prompt resamples to 24 kHz if
    needed, computes the mel and runs the speaker encoder. A pre-hook records the mel it saw."""
    tts = tts_of(m)
    seen = {}
    hook = tts.model.speaker_encoder.register_forward_pre_hook(lambda mod, args: seen.update(mel=args[0]))
    try:
        item = tts.create_voice_clone_prompt(
            ref_audio=(npy(job["audio"]), int(job.get("sr", 24000))), x_vector_only_mode=True
        )[0]
    finally:
        hook.remove()
    return dict(embedding=as_np(item.ref_spk_embedding), mel=as_np(seen["mel"][0])), {}


def op_codec_decode(m, job):
    codec = codec_of(m)
    value = job["codes"]
    if isinstance(value, list):
        codes, encoded = None, [{"audio_codes": tensor(p, torch.long)} for p in value]
    else:
        codes = tensor(value, torch.long)
        encoded = [{"audio_codes": codes}] if codes.dim() == 2 else {"audio_codes": codes}
    wavs, sr = codec.decode(encoded)
    single = codes is not None and codes.dim() == 2  # one [T,16] in -> one waveform out
    return dict(audio=as_np(wavs[0]) if single else [as_np(w) for w in wavs]), dict(sample_rate=sr)


def op_codec_encode(m, job):
    codec = codec_of(m)
    value = job["audio"]
    audios = [npy(p) for p in value] if isinstance(value, list) else [npy(value)]
    codes = [as_np(c) for c in codec.encode(audios, sr=int(job.get("sr", 24000))).audio_codes]
    return dict(codes=codes if isinstance(value, list) else codes[0]), {}


# ----------------------------------------------------------------------------- high-level calls

CALLS = {
    "custom_voice": "generate_custom_voice",
    "voice_design": "generate_voice_design",
    "voice_clone": "generate_voice_clone",
}
NOT_KWARGS = {"id", "op", "checkpoint", "call", "attn", "ref_sr"}


class _StopAfterPrefill(Exception):
    pass


def call_kwargs(job) -> dict:
    """The job's arguments as kwargs of the high-level call, greedy unless stated otherwise."""
    kwargs = {k: v for k, v in job.items() if k not in NOT_KWARGS}
    sr = int(job.get("ref_sr", 24000))

    def audio(a):  # .npy -> (waveform, sr); anything else (a file path) goes to the reference as is
        return (npy(a), sr) if isinstance(a, str) and a.endswith(".npy") else a

    if "ref_audio" in kwargs:
        ra = kwargs["ref_audio"]
        kwargs["ref_audio"] = [audio(a) for a in ra] if isinstance(ra, list) else audio(ra)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("subtalker_dosample", False)
    return kwargs


def run_call(tts: Qwen3TTSModel, job, record: dict):
    """Run one high-level call, recording the voice-clone prompt it builds (wrapped on the
    instance only, nothing in the package is modified)."""
    if job.get("call") not in CALLS:
        raise ValueError(f"call must be one of {sorted(CALLS)}, got {job.get('call')!r}")
    make_prompt = tts.create_voice_clone_prompt

    def recording_prompt(*args, **kwargs):
        items = make_prompt(*args, **kwargs)
        record["prompt_items"] = items
        return items

    tts.create_voice_clone_prompt = recording_prompt
    try:
        return getattr(tts, CALLS[job["call"]])(**call_kwargs(job))
    finally:
        del tts.create_voice_clone_prompt  # drop the instance attribute, the method is back


def prompt_arrays(record: dict, out: dict) -> dict:
    items = record.get("prompt_items")
    if not items:
        return {}
    out["ref_spk_embedding"] = [as_np(it.ref_spk_embedding) for it in items]
    codes = [(i, it.ref_code) for i, it in enumerate(items) if it.ref_code is not None]
    out["ref_code"] = [as_np(c) for _, c in codes]
    return dict(ref_code_index=[i for i, _ in codes], x_vector_only_mode=[it.x_vector_only_mode for it in items])


def op_prefill_capture(m, job):
    """Capture the talker's FIRST forward call (the prefill) inside generate(), then stop.

    A forward hook on the talker sees the kwargs HF generate passes (inputs_embeds, attention
    mask, the trailing text queue, tts_pad_embed) and the output; a pre-hook on the inner model
    sees the position ids. Raising from the hook aborts generation before any decode step."""
    tts = tts_of(m)
    talker = tts.model.talker
    seen, record = {}, {}

    def on_inner(mod, args, kwargs):
        seen.setdefault("position_ids", kwargs["position_ids"])

    def on_talker(mod, args, kwargs, output):
        seen.update(
            inputs_embeds=kwargs["inputs_embeds"],
            attention_mask=kwargs["attention_mask"],
            trailing_text_hidden=kwargs["trailing_text_hidden"],
            tts_pad_embed=kwargs["tts_pad_embed"],
            logits=output.logits,
            hidden=output.hidden_states[0][-1],
        )
        raise _StopAfterPrefill

    hooks = [
        talker.model.register_forward_pre_hook(on_inner, with_kwargs=True),
        talker.register_forward_hook(on_talker, with_kwargs=True),
    ]
    try:
        run_call(tts, job, record)
        raise RuntimeError("generation finished without a talker forward call")
    except _StopAfterPrefill:
        pass
    finally:
        for h in hooks:
            h.remove()
    arrays = {k: as_np(v) for k, v in seen.items()}
    return arrays, prompt_arrays(record, arrays)


def op_generate(m, job):
    """Greedy high-level generation; codes are captured by wrapping model.generate (returns the
    generated [T,16] codes per item) and speech_tokenizer.decode (sees what gets vocoded)."""
    tts = tts_of(m)
    job = dict(job)
    job.setdefault("max_new_tokens", 20)
    record = {}
    model_generate, decode = tts.model.generate, tts.model.speech_tokenizer.decode

    def recording_generate(*args, **kwargs):
        record["codes"], record["talker_hidden"] = model_generate(*args, **kwargs)
        return record["codes"], record["talker_hidden"]

    def recording_decode(encoded):
        record["decode_codes"] = [e["audio_codes"] for e in encoded]
        return decode(encoded)

    tts.model.generate, tts.model.speech_tokenizer.decode = recording_generate, recording_decode
    try:
        wavs, sr = run_call(tts, job, record)
    finally:
        del tts.model.generate, tts.model.speech_tokenizer.decode
    arrays = dict(
        audio=[as_np(w) for w in wavs],
        codes=[as_np(c) for c in record["codes"]],
        talker_hidden=[as_np(h) for h in record["talker_hidden"]],
        decode_codes=[as_np(c) for c in record["decode_codes"]],
    )
    return arrays, dict(prompt_arrays(record, arrays), sample_rate=sr)


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


# ----------------------------------------------------------------------------- driver


def save_arrays(path: Path, arrays: dict) -> list:
    flat = {}
    for name, value in arrays.items():
        if isinstance(value, list):
            flat.update({f"{name}__{i}": np.asarray(v) for i, v in enumerate(value)})
            flat[f"{name}__len"] = np.asarray(len(value))  # keeps empty lists visible
        else:
            flat[name] = np.asarray(value)
    np.savez(path, **flat)
    return sorted(arrays)


def run_job(job: dict, out_dir: Path) -> bool:
    jid = str(job.get("id"))
    record = dict(id=jid, op=job.get("op"))
    start = time.perf_counter()
    try:
        if job.get("op") not in OPS:
            raise ValueError(f"unknown op {job.get('op')!r}; known: {sorted(OPS)}")
        model = load(job["checkpoint"], job.get("attn", ATTN_IMPLEMENTATION))
        torch.manual_seed(SEED)
        with torch.inference_mode():
            arrays, scalars = OPS[job["op"]](model, job)
        record.update(ok=True, result=scalars, arrays=save_arrays(out_dir / f"{jid}.npz", arrays))
    except Exception as exc:  # one bad job must not take the batch down
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        print(f"[reference] job {jid} ({job.get('op')}) failed: {record['error']}", file=sys.stderr)
    record["seconds"] = round(time.perf_counter() - start, 3)
    (out_dir / f"{jid}.json").write_text(json.dumps(record, indent=1, default=str))
    return record["ok"]


def main(argv: list) -> int:
    if argv == ["--selftest"]:
        import transformers

        print(
            f"[reference] qwen_tts imports; torch {torch.__version__}, transformers "
            f"{transformers.__version__}; ops: {', '.join(sorted(OPS))}"
        )
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    jobs = json.loads(Path(argv[0]).read_text())
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(NUM_THREADS)
    ids = [str(j.get("id")) for j in jobs]
    if len(set(ids)) != len(ids):
        print("[reference] job ids must be unique", file=sys.stderr)
        return 2
    failed = sum(not run_job(job, out_dir) for job in jobs)
    print(f"[reference] {len(jobs) - failed}/{len(jobs)} jobs ok", file=sys.stderr)
    return 0  # per-job status lives in the .json files


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
