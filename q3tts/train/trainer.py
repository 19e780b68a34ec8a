"""The training loop, on Hugging Face accelerate (one CPU, one GPU, or `accelerate launch`).

Per optimizer step: `grad_accum` micro-batches (no gradient sync but on the last), clip, AdamW,
cosine schedule with warmup. Logs go to output_dir/training_log.jsonl and validation_log.jsonl
(and TensorBoard / Weights & Biases when installed and asked for). Checkpoints every
`save_steps` (state.py), the best model by validation loss exported to output_dir/best, the
last one to output_dir/final (export.py: a CustomVoice checkpoint in the official layout).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch

from ..console import Status, note
from . import require, speech_eval
from . import state as ckpt
from .config import TrainConfig
from .data import BatchPlan, Example, eval_batches, load_prepared, split_examples
from .export import export_dtype, export_model
from .loss import LossParts
from .module import TrainModule, load_base, setup_mode, trainable_state
from .sources import manifest_items
from .speakers import Speakers, plan_speakers

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
    if "none" in wanted:
        return []
    out = []
    if ("tensorboard" in wanted or "auto" in wanted) and importlib.util.find_spec("tensorboard"):
        out.append("tensorboard")
    wandb_ready = os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")
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


class Trainer:
    def __init__(self, tc: TrainConfig, quiet: bool = False):
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
        self.state = dict(step=0, best_val=None, best_step=None, window=[0.0] * 4, window_steps=0)
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
            speakers = plan_speakers(self.train_set + self.val_set, base.config.talker, tc.speaker_name, tc.speaker,
                                     export_dtype(tc.export_dtype, base.folder))  # fmt: skip
        setup_mode(base.networks, base.config, tc)
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

    def prepared(self, path: str, name: str, val_fraction: float) -> Path:
        """A prepared folder for `path`: itself, or a manifest prepared into output_dir/<name>."""
        p = Path(path)
        if p.is_dir():
            return p
        if not p.is_file():
            raise SystemExit(f"q3tts: data not found: {p}")
        out = self.out / name
        if self.acc.is_main_process:
            from .dataset import Encoders, Prepare, summary_lines

            job = Prepare(out, Encoders(self.tc.model, str(self.acc.device)), val_fraction)
            report = job.run(manifest_items(p), quiet=self.quiet)
            for line in summary_lines(report):
                self.say(line)
        self.acc.wait_for_everyone()
        return out

    def load_data(self) -> tuple[list[Example], list[Example]]:
        folder = self.prepared(self.tc.data, "data", self.tc.val_fraction)
        train, val = split_examples(load_prepared(folder), folder)
        if self.tc.val_data:
            val = load_prepared(self.prepared(self.tc.val_data, "val_data", 0.0))
        if not train:
            raise SystemExit(f"q3tts: {folder} has no training items")
        self.say(f"data: {len(train)} training items, {len(val)} validation items")
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
            self.acc.init_trackers(self.tc.project, config=flat)
        if self.acc.is_main_process:
            for name in (TRAIN_LOG, VAL_LOG):
                truncate_jsonl(self.out / name, self.state["step"])

    # -- steps ----------------------------------------------------------------------------------
    def train_step(self, step: int) -> tuple[torch.Tensor, float]:
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
        norm = float("nan")
        if self.tc.max_grad_norm > 0:
            norm = float(self.acc.clip_grad_norm_(self.params, self.tc.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.acc.reduce(sums, "sum"), norm

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
    def log_train(self, sums: torch.Tensor, norm: float) -> None:
        st = self.state
        st["window"] = [a + float(b) for a, b in zip(st["window"], sums)]
        st["window_steps"] += 1
        if st["step"] % max(1, self.tc.logging_steps) and st["step"] != self.total:
            return
        record = {"step": st["step"], "epoch": round(st["step"] / self.plan.steps_per_epoch, 4),
                  **self.losses(st["window"]), "lr": self.scheduler.get_last_lr()[0], "grad_norm": norm}  # fmt: skip
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
        best = speech_eval.better(metric, result.get(metric), st["best_val"])
        if best:
            st["best_val"], st["best_step"] = result[metric], st["step"]
        record["best"] = best
        if self.acc.is_main_process:
            append_jsonl(self.out / VAL_LOG, record)
            if best:
                export_model(self.module, self.source, self.out / "best", self.tc.export_dtype)
        self.acc.log({f"validation/{k}": v for k, v in result.items()}, step=st["step"])
        self.acc.wait_for_everyone()

    def speech_metrics(self) -> dict:
        """Speaker similarity and WER of a few held-out items spoken now (speech_eval.py); {} when off."""
        if not self.tc.eval_generate or not self.acc.is_main_process:
            return {}
        if self._speech_eval is None:
            self._speech_eval = speech_eval.SpeechEval(self.tc.eval_asr)
        return self._speech_eval(self.module, self.source, self.out, self.val_set[: self.tc.eval_generate],
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
                             "speakers": self.module.speakers.meta(), "config": self.tc.to_dict()}  # fmt: skip
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
                self.log_train(sums, norm)
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
            export_model(self.module, self.source, final, tc.export_dtype)
        self.acc.wait_for_everyone()
        self.acc.end_training()
        self.say(f"done in {time.monotonic() - start:.1f} s: {final}" + (f", best (step {st['best_step']}): "
                 f"{self.out / 'best'}" if st["best_step"] else ""))  # fmt: skip
        return {"step": st["step"], "checkpoint": str(saved), "final": str(final), "best_val": st["best_val"],
                "best_step": st["best_step"], "validated": validated}  # fmt: skip


def train(tc: TrainConfig, quiet: bool = False) -> dict:
    return Trainer(tc, quiet).fit()


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
    return export_model(module, base.folder, out, dtype or tc.export_dtype)
