"""Finding 7, training state: `torch.load(..., weights_only=False)` on the files of a checkpoint
folder ran whatever a pickle in it said. Now every `.pt` file loads with weights_only=True."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from q3tts.train import state
from q3tts.train.config import ConfigError


class _Payload:
    def __reduce__(self):  # what a hostile optimizer.pt would carry
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.marker),))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    _Payload.marker = str(tmp_path / "code-ran")
    torch.save({"state": {}, "param_groups": [], "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="not loaded"):
        state.load_pt(tmp_path / "evil.pt")
    assert not (tmp_path / "code-ran").exists()


def test_generator_states_round_trip_through_weights_only_files(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    state.write_rng(tmp_path, 0)
    want = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state.set_rng_state(torch.load(tmp_path / "rng_state_0.pt", weights_only=True))
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert want[0] == got[0] and np.array_equal(want[1], got[1]) and torch.equal(want[2], got[2])


def test_optimizer_and_scheduler_states_load_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    torch.save(sched.state_dict(), tmp_path / "scheduler.pt")
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(state.load_pt(tmp_path / "optimizer.pt"))
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: min(1.0, (step + 1) / 10))
    sched2.load_state_dict(state.load_pt(tmp_path / "scheduler.pt"))
    assert sched2.last_epoch == 1 and torch.equal(opt2.state_dict()["state"][0]["exp_avg"],
                                                  opt.state_dict()["state"][0]["exp_avg"])  # fmt: skip
