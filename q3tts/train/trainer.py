"""The training loop, on Hugging Face accelerate (one CPU, one GPU, or `accelerate launch`).

Per optimizer step: `grad_accum` micro-batches (no gradient sync but on the last), clip, AdamW,
cosine schedule with warmup. Logs go to output_dir/training_log.jsonl and validation_log.jsonl
(and TensorBoard / Weights & Biases when installed and asked for). Checkpoints every
`save_steps` (state.py), the best model by validation loss exported to output_dir/best, the
last one to output_dir/final (export.py: a CustomVoice checkpoint in the official layout).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch

from ..console import Status, note, one_line
from ..errors import Q3TTSError
from . import require, speech_eval
from . import state as ckpt
from .config import Resolved, TrainConfig
from .data import BatchPlan, PreparedSet, eval_batches
from .dataset import INDEX
from .export import export_dtype, export_model
from .loss import LossParts
from .module import TrainModule, load_base, setup_mode, trainable_state
from .sources import folder_items, manifest_items
from .speakers import Speakers, plan_speakers
from .summary import summary_lines

TRAIN_LOG = "training_log.jsonl"
VAL_LOG = "validation_log.jsonl"


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 down to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; not norms and biases (1-D)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip


def trackers(tc: TrainConfig) -> list[str]:
    import importlib.util

    wanted = [r.lower() for r in tc.report_to]
    if tc.use_wandb is True and "wandb" not in wanted:
        wanted = [r for r in wanted if r != "none"] + ["wandb"]
    if tc.use_wandb is False:
        wanted = [r for r in wanted if r != "wandb"]
    if tc.use_wandb is True and not importlib.util.find_spec("wandb"):
        raise SystemExit("q3tts: use_wandb (USE_WANDB) needs the 'wandb' package: pip install wandb")
    if "none" in wanted:
        return []
    out = []
    if ("tensorboard" in wanted or "auto" in wanted) and importlib.util.find_spec("tensorboard"):
        out.append("tensorboard")
    wandb_ready = tc.use_wandb is not False and (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))
    if ("wandb" in wanted or ("auto" in wanted and wandb_ready)) and importlib.util.find_spec("wandb"):
        out.append("wandb")
    return out


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop records after `step` (written after the checkpoint a run resumes from)."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


class NonFiniteLoss(Q3TTSError):
    """Too many NaN / Inf losses in a row: the run stops (checkpoints already written are kept)."""


class Trainer:
    def __init__(self, tc: TrainConfig, quiet: bool = False, resolved: Optional[Resolved] = None):
        accelerate = require("accelerate", "training")
        self.tc, self.quiet, self.out = tc, quiet, Path(tc.output_dir)
        # accelerate keeps its settings in process-wide singletons; a second run in the same process
        # (tests, notebooks) may ask for another precision, so start from a clean accelerator state
        # (the distributed set-up, PartialState, is kept).
        accelerate.state.AcceleratorState._reset_state(reset_partial_state=False)
        accelerate.state.GradientState._reset_state()
        self.acc = accelerate.Accelerator(mixed_precision=tc.mixed_precision, log_with=trackers(tc) or None,
                                          project_dir=str(self.out))  # fmt: skip
        accelerate.utils.set_seed(tc.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        for line in (resolved or Resolved(tc)).lines():
            self.say(line)
        self.say(f"precision: {self.acc.mixed_precision} (mixed_precision), device {self.acc.device}, "
                 f"{self.acc.num_processes} process(es)")  # fmt: skip
        self.train_set, self.val_set = self.load_data()
        resume = self.resume_dir()
        module = self.build_module(resume)
        self.plan = BatchPlan(len(self.train_set), tc.batch_size, tc.grad_accum, self.acc.num_processes, tc.seed)
        self.total = tc.max_steps or tc.epochs * self.plan.steps_per_epoch
        optimizer, self.scheduler = self.build_optimizer(module)
        self.model, self.optimizer = self.acc.prepare(module, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        speech_eval.check_settings(tc)
        self._speech_eval = None
        self.state = dict(step=0, best_val=None, best_step=None, window=[0.0] * 4, window_steps=0, nonfinite=0,
                          skipped=0)  # fmt: skip
        self.compute_dtype: Optional[str] = None  # what the first step ran in (TrainModule.compute)
        if resume is not None:
            saved = ckpt.load_into(resume, self.module, self.optimizer, self.scheduler, self.acc.scaler,
                                   self.acc.process_index)  # fmt: skip
            self.state.update(saved["trainer"])
            self.say(f"resumed from {resume} at step {self.state['step']}")
        self.start_trackers()

    def build_module(self, resume: Optional[Path]) -> TrainModule:
        tc = self.tc
        base = load_base(tc.model)
        self.source = base.folder
        if resume is not None:  # the speakers (ids, rounded embeddings) the run started with
            speakers = Speakers.restore(ckpt.load_speakers(resume), ckpt.read_trainer_state(resume)["speakers"])
        else:
            items = itertools.chain(self.train_set.light(), self.val_set.light())
            speakers = plan_speakers(items, base.config.talker, tc.speaker_name, tc.speaker,
                                     export_dtype(tc.export_dtype, base.folder))  # fmt: skip
        roles = setup_mode(base.networks, base.config, tc)
        for line in summary_lines(base.networks, roles):
            self.say(line)
        return TrainModule(base, speakers, tc)

    def build_optimizer(self, module: TrainModule):
        tc = self.tc
        fused = self.acc.device.type in ("cpu", "cuda")  # one kernel for all tensors: much faster on CPU
        optimizer = torch.optim.AdamW(param_groups(module, tc.weight_decay), lr=tc.lr, fused=fused)
        warmup = tc.warmup_steps or int(tc.warmup_ratio * self.total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, self.total, warmup, tc.min_lr_ratio)
        )
        return optimizer, schedule

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def module(self) -> TrainModule:
        return self.acc.unwrap_model(self.model)

    def say(self, text: str) -> None:
        if self.acc.is_main_process:
            note(text, self.quiet)

    def prepared(self, path: str, name: str, val_fraction: float, limit: int = 0) -> Path:
        """A prepared folder for `path`: itself, or a manifest / folder of clips prepared into
        output_dir/<name> (resumable: a re-run encodes only what is missing)."""
        p = Path(path)
        if p.is_dir() and (p / INDEX).is_file():
            return p
        if self.tc.data_mode == "none":
            raise SystemExit(f"q3tts: data_mode none needs a prepared folder; {p} has no {INDEX}")
        if not p.exists():
            raise SystemExit(f"q3tts: data not found: {p}")
        items = folder_items(p) if p.is_dir() else manifest_items(p)
        return self.prepare_into(name, items, val_fraction, limit)

    def prepare_into(self, name: str, items, val_fraction: float, limit: int) -> Path:
        out = self.out / name
        if self.acc.is_main_process:
            from .dataset import Encoders, Prepare
            from .dataset import summary_lines as prepare_lines

            ref = Path(self.tc.ref_audio) if self.tc.ref_audio else None
            if ref is not None and not ref.is_file():
                raise SystemExit(f"q3tts: ref_audio not found: {ref}")
            job = Prepare(out, Encoders(self.tc.model, str(self.acc.device)), val_fraction, default_ref=ref,
                          max_items=limit)  # fmt: skip
            report = job.run(items, quiet=self.quiet)
            for line in prepare_lines(report):
                self.say(line)
        self.acc.wait_for_everyone()
        return out

    def dataset(self, split: str, name: str, val_fraction: float, limit: int) -> Path:
        """A split of the Hugging Face dataset `dataset_name`, prepared into output_dir/<name>."""
        from .sources import dataset_items

        tc = self.tc
        items = dataset_items(tc.dataset_name, split, tc.dataset_config, tc.columns)
        try:
            return self.prepare_into(name, items, val_fraction, limit)
        except (ValueError, KeyError) as e:  # datasets: an unknown split or config
            raise SystemExit(f"q3tts: dataset {tc.dataset_name!r} split {split!r}: {one_line(str(e))}") from None

    def load_data(self) -> tuple[PreparedSet, PreparedSet]:
        tc = self.tc
        limit_train, limit_val = tc.max_train_samples, tc.max_eval_samples
        separate_val = bool(tc.val_data or (tc.dataset_name and tc.validation_split))
        fraction = 0.0 if separate_val else tc.val_fraction
        # preparing on the fly stops early when the run is limited (a debug run on a big corpus)
        cap = 0 if not limit_train else limit_train + (0 if separate_val else limit_val or limit_train)
        # DATASET_NAME is used in mode direct, and (as the pipeline's jsonl mode does) when no `data` exists yet
        if tc.dataset_name and (tc.data_mode == "direct" or not tc.data or not Path(tc.data).exists()):
            folder = self.dataset(tc.train_split, "data", fraction, cap)
        else:
            folder = self.prepared(tc.data, "data", fraction, cap)
        train = PreparedSet(folder, "train", limit_train)
        if tc.val_data:
            val = PreparedSet(self.prepared(tc.val_data, "val_data", 0.0, limit_val), None, limit_val)
        elif tc.dataset_name and tc.validation_split:
            val = PreparedSet(self.dataset(tc.validation_split, "val_data", 0.0, limit_val), None, limit_val)
        else:
            val = PreparedSet(folder, "validation", limit_val)
        if not len(train):
            raise SystemExit(f"q3tts: {folder} has no training items")
        limits = f" (max_train_samples {limit_train})" if limit_train else ""
        limits += f" (max_eval_samples {limit_val})" if limit_val else ""
        self.say(f"data: {len(train)} training items, {len(val)} validation items{limits}")
        self.data_info = {"train_items": len(train), "val_items": len(val), "folder": str(folder),
                          "train_hours": round(sum(train.meta(i)["duration"] for i in range(len(train))) / 3600, 4)}  # fmt: skip
        return train, val

    def resume_dir(self) -> Optional[Path]:
        if not self.tc.resume:
            return None
        if self.tc.resume == "latest":
            found = ckpt.latest(self.out)
            if found is None:
                self.say(f"no checkpoint in {self.out} to resume from; starting fresh")
            return found
        path = Path(self.tc.resume)
        if not (path / ckpt.STATE).is_file():
            raise SystemExit(f"q3tts: {path} is not a training checkpoint (no {ckpt.STATE})")
        return path

    def start_trackers(self) -> None:
        if self.acc.log_with:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                    for k, v in self.tc.to_dict().items() if v is not None}  # fmt: skip
            wandb_args = {k: v for k, v in (("name", self.tc.run_name), ("entity", self.tc.wandb_entity)) if v}
            self.acc.init_trackers(self.tc.project, config=flat, init_kwargs={"wandb": wandb_args})
            if "wandb" in trackers(self.tc) and self.acc.is_main_process:
                run = self.acc.get_tracker("wandb", unwrap=True)  # what wandb itself holds
                self.say(f"wandb run {run.name!r} (entity {run.entity or None!r}, project {run.project!r})")
        if self.acc.is_main_process:
            for name in (TRAIN_LOG, VAL_LOG):
                truncate_jsonl(self.out / name, self.state["step"])

    # -- steps ----------------------------------------------------------------------------------
    def train_step(self, step: int) -> tuple[torch.Tensor, Optional[float]]:
        """One optimizer step; returns the summed loss parts and the gradient norm (None: the loss
        or the gradient was not finite, and no update was made)."""
        epoch, in_epoch = divmod(step, self.plan.steps_per_epoch)
        micro = self.plan.step(epoch, in_epoch, self.acc.process_index)
        self.model.train()
        sums = torch.zeros(4, device=self.acc.device)
        for m, idx in enumerate(micro):
            last = m == len(micro) - 1
            with nullcontext() if last else self.acc.no_sync(self.model):
                parts = LossParts(**self.model([self.train_set[i] for i in idx]))
                self.acc.backward(parts.total(self.tc.cp_loss_weight) / len(micro))
            sums += parts.as_tensor()
            if self.compute_dtype is None:
                self.compute_dtype = self.module.compute
        sums = self.acc.reduce(sums, "sum")  # every rank sees the same sums, so all skip together
        finite = bool(torch.isfinite(sums).all())
        norm = float("nan")
        if finite:  # max_norm inf: the norm without clipping (a NaN gradient must be seen either way)
            norm = float(self.acc.clip_grad_norm_(self.params, self.tc.max_grad_norm or math.inf))
            finite = math.isfinite(norm)
        if finite:
            self.optimizer.step()
        # a skipped step still consumes its batches and its place in the schedule, so the data
        # order and the learning rate stay those of the step count (and resuming stays exact)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, norm if finite else None

    def losses(self, sums) -> dict:
        p = LossParts(*[torch.as_tensor(float(v)) for v in sums])
        return {
            "loss": float(p.total(self.tc.cp_loss_weight)),
            "talker_loss": float(p.talker()),
            "cp_loss": float(p.cp()),
        }

    @torch.no_grad()
    def evaluate(self) -> Optional[dict]:
        if not self.val_set:
            return None
        module = self.module  # unwrapped: ranks may run different numbers of batches
        module.eval()
        sums = torch.zeros(4, device=self.acc.device)
        for idx in eval_batches(len(self.val_set), self.tc.eval_batch_size, self.acc.process_index,
                                self.acc.num_processes):  # fmt: skip
            sums += LossParts(**module([self.val_set[i] for i in idx])).as_tensor()
        return self.losses(self.acc.reduce(sums, "sum"))

    # -- bookkeeping ----------------------------------------------------------------------------
    def skip(self, sums: torch.Tensor) -> None:
        """A NaN / Inf loss or gradient: no update was made; log it, stop after too many in a row."""
        st = self.state
        st["nonfinite"] += 1
        st["skipped"] += 1
        loss = self.losses(sums)["loss"]
        record = {"step": st["step"], "epoch": round(st["step"] / self.plan.steps_per_epoch, 4),
                  "skipped": f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} ({loss})"}  # fmt: skip
        if self.acc.is_main_process:
            append_jsonl(self.out / TRAIN_LOG, record)
        self.say(f"warning: step {st['step']}: {record['skipped']}; the update was skipped "
                 f"({st['nonfinite']} in a row, the run stops at {self.tc.max_nonfinite_steps})")  # fmt: skip
        if st["nonfinite"] >= self.tc.max_nonfinite_steps:
            kept = ckpt.latest(self.out)
            self.acc.end_training()
            raise NonFiniteLoss(f"stopped at step {st['step']}: the loss or gradient was NaN/Inf for "
                                f"{st['nonfinite']} steps in a row (max_nonfinite_steps); lower lr or check the data. "
                                f"Saved checkpoints are untouched (latest: {kept or 'none'})")  # fmt: skip

    def log_train(self, sums: torch.Tensor, norm: float) -> None:
        st = self.state
        st["nonfinite"] = 0
        st["window"] = [a + float(b) for a, b in zip(st["window"], sums)]
        st["window_steps"] += 1
        if st["step"] % max(1, self.tc.logging_steps) and st["step"] != self.total:
            return
        record = {"step": st["step"], "epoch": round(st["step"] / self.plan.steps_per_epoch, 4),
                  **self.losses(st["window"]), "lr": self.scheduler.get_last_lr()[0], "grad_norm": norm}  # fmt: skip
        if st["step"] == 1 and self.compute_dtype is not None:
            record["compute"] = self.compute_dtype
        st["window"], st["window_steps"] = [0.0] * 4, 0
        if self.acc.is_main_process:
            append_jsonl(self.out / TRAIN_LOG, record)
        self.acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=st["step"])

    def validate(self) -> None:
        result = self.evaluate()
        if result is None:
            return
        result.update(self.speech_metrics())
        st = self.state
        record = {"step": st["step"], "epoch": round(st["step"] / self.plan.steps_per_epoch, 4), **result}
        metric = self.tc.metric_for_best
        value = result.get(metric)
        finite = value is not None and math.isfinite(value)  # a NaN loss is never the best
        best = finite and speech_eval.better(metric, value, st["best_val"])
        if best:
            st["best_val"], st["best_step"] = result[metric], st["step"]
        record["best"] = best
        if self.acc.is_main_process:
            append_jsonl(self.out / VAL_LOG, record)
            if best:
                export_model(self.module, self.source, self.out / "best", self.tc.export_dtype, self.export_state())
        self.acc.log({f"validation/{k}": v for k, v in result.items()}, step=st["step"])
        self.acc.wait_for_everyone()

    def speech_metrics(self) -> dict:
        """Speaker similarity and WER of a few held-out items spoken now (speech_eval.py); {} when off."""
        if not self.tc.eval_generate or not self.acc.is_main_process:
            return {}
        if self._speech_eval is None:
            self._speech_eval = speech_eval.SpeechEval(self.tc.eval_asr)
        held_out = [self.val_set[i] for i in range(min(self.tc.eval_generate, len(self.val_set)))]  # streamed set
        return self._speech_eval(self.module, self.source, self.out, held_out,
                                 self.tc.speaker_name, self.tc.export_dtype)  # fmt: skip

    def save(self) -> Path:
        final = ckpt.checkpoint_dir(self.out, self.state["step"])
        tmp = final.with_name(f".{final.name}.tmp")
        if self.acc.is_main_process:
            tmp = ckpt.fresh_tmp(final)
        self.acc.wait_for_everyone()
        ckpt.write_rng(tmp, self.acc.process_index)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            trainer_state = {"trainer": self.state, "step": self.state["step"], "total_steps": self.total,
                             "steps_per_epoch": self.plan.steps_per_epoch, "speakers": self.module.speakers.meta(),
                             "config": self.tc.to_dict(), "data": self.data_info,
                             "speaker_items": self.speaker_items()}  # fmt: skip
            ckpt.write_main(tmp, trainable_state(self.module), self.module.speakers.tensors(), self.optimizer,
                            self.scheduler, self.acc.scaler, trainer_state)  # fmt: skip
            ckpt.replace_dir(tmp, final)
            ckpt.rotate(self.out, self.tc.save_total_limit)
        self.acc.wait_for_everyone()
        return final

    def due(self, every: int) -> bool:
        step = self.state["step"]
        return step % (every or self.plan.steps_per_epoch) == 0

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        tc, st = self.tc, self.state
        self.say(f"training {self.total} steps ({self.plan.steps_per_epoch} per epoch), mode {tc.mode}, "
                 f"{sum(p.numel() for p in self.params):,} trainable parameters")  # fmt: skip
        start, saved, validated = time.monotonic(), None, None
        with Status(enabled=self.acc.is_main_process and not self.quiet) as status:
            while st["step"] < self.total:
                sums, norm = self.train_step(st["step"])
                st["step"] += 1
                if norm is None:
                    self.skip(sums)
                    if st["step"] < self.total:
                        continue  # nothing changed: no validation, no checkpoint of this step
                else:
                    self.log_train(sums, norm)
                if st["step"] == 1 and self.compute_dtype is not None:
                    self.say(f"step 1: {self.compute_dtype}")
                status.update(f"step {st['step']}/{self.total}  loss {self.losses(sums)['loss']:.4f}")
                if self.due(tc.eval_steps) or st["step"] == self.total:
                    self.validate()
                    validated = st["step"]
                if self.due(tc.save_steps) or st["step"] in (self.total, tc.stop_at_step):
                    saved = self.save()
                if st["step"] == tc.stop_at_step and st["step"] < self.total:
                    self.say(f"stopped at step {st['step']} (stop_at_step); resume with --resume")
                    self.acc.end_training()
                    return {"step": st["step"], "checkpoint": str(saved), "stopped": True}
        final = self.out / "final"
        if self.acc.is_main_process:
            export_model(self.module, self.source, final, tc.export_dtype, self.export_state())
        self.acc.wait_for_everyone()
        self.acc.end_training()
        uploads = self.push_to_hub(final) if self.acc.is_main_process else {}
        self.say(f"done in {time.monotonic() - start:.1f} s: {final}" + (f", best (step {st['best_step']}): "
                 f"{self.out / 'best'}" if st["best_step"] else ""))  # fmt: skip
        return {"step": st["step"], "checkpoint": str(saved), "final": str(final), "best_val": st["best_val"],
                "best_step": st["best_step"], "validated": validated, "skipped": st["skipped"], "hub": uploads}  # fmt: skip

    def export_state(self) -> dict:
        """training_state.json of an export (the community pipeline's keys, and the data)."""
        st = self.state
        return export_state(self.tc, st["step"], st["step"] / self.plan.steps_per_epoch, st["best_val"],
                            st["best_step"], self.data_info, self.speaker_items())  # fmt: skip

    def speaker_items(self) -> dict:
        if not hasattr(self, "_speaker_items"):
            default = self.tc.speaker_name.lower()
            counts: dict = {}
            for i in range(len(self.train_set)):
                name = (self.train_set.meta(i).get("speaker") or default).lower()
                counts[name] = counts.get(name, 0) + 1
            self._speaker_items = counts
        return self._speaker_items

    def push_to_hub(self, final: Path) -> dict:
        repos = self.tc.hub_repos()
        folders = {label: (self.out / label, repo) for label, repo in repos.items() if (self.out / label).is_dir()}
        if not folders:
            return {}
        from .hub import push_all

        return push_all(folders, self.tc.hf_token, self.tc.hub_private, self.tc.hub_timeout, lambda t: note(t))


def export_state(
    tc: TrainConfig, step: int, epoch: float, best_val, best_step, data: dict, speaker_items: dict
) -> dict:
    return {"step": step, "epoch": round(epoch, 4), "best_val_loss": best_val,
            "best_val_metrics": {"loss": best_val} if best_val is not None else {}, "best_step": best_step,
            "config": tc.to_dict(), "data": data, "speaker_items": speaker_items,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": "q3tts train"}  # fmt: skip


def train(tc: TrainConfig, quiet: bool = False, resolved: Optional[Resolved] = None) -> dict:
    return Trainer(tc, quiet, resolved).fit()


def export_checkpoint(path: Path, out: Path, dtype: Optional[str] = None) -> Path:
    """Export a training checkpoint (any step) in the official layout."""
    from .config import config_from_dict

    saved = ckpt.read_trainer_state(path)
    tc = config_from_dict(saved["config"])
    base = load_base(tc.model)
    speakers = Speakers.restore(ckpt.load_speakers(path), saved["speakers"])
    setup_mode(base.networks, base.config, tc)
    module = TrainModule(base, speakers, tc)
    from safetensors.torch import load_file

    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(path / "trainable.safetensors")).items():
            params[name].copy_(value)
    epoch = saved["step"] / max(1, saved.get("steps_per_epoch") or 1) if saved.get("steps_per_epoch") else None
    state = export_state(tc, saved["step"], epoch if epoch is not None else 0.0, saved["trainer"].get("best_val"),
                         saved["trainer"].get("best_step"), saved.get("data") or {}, saved.get("speaker_items") or {})  # fmt: skip
    return export_model(module, base.folder, out, dtype or tc.export_dtype, state)
