import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lvmae.config import ConfigError, PretrainConfig, load_config
from lvmae.mae.checkpoints import (
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_dir,
)
from lvmae.mae.optim import build_optimizer, build_scheduler, lr_schedule, param_groups
from lvmae.mae.sequences import sample_window


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3, bias=False)
        self.scale = nn.Parameter(torch.ones(8))
        self.register_buffer("pos", torch.zeros(4, 8))
        self.frozen = nn.Parameter(torch.ones(8, 8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.proj(x + self.cls_token[0]) * self.scale))


def names_in(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def trained(steps: int = 1) -> tuple[Toy, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    model = Toy()
    opt = build_optimizer(model, lr=1e-3)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2)
    for _ in range(steps):
        loss = model(torch.randn(5, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def save(directory, model, opt=None, sched=None, step=1, **kw):
    return save_checkpoint(
        directory,
        model_state=model.state_dict(),
        model_config={"width": 8, "depth": 1, "betas": (0.9, 0.95)},
        train_config={"epochs": 3},
        optimizer_state=None if opt is None else opt.state_dict(),
        scheduler_state=None if sched is None else sched.state_dict(),
        step=step,
        epoch=0,
        **kw,
    )


# --- optim -------------------------------------------------------------------------------


def test_param_groups_decay_weights_and_tokens_not_biases_or_norms():
    """MAE and the authors' reference code exempt only 1-D parameters (biases, norms): the
    [CLS] and mask tokens ([1, 1, W]) are decayed."""
    model = Toy()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert names_in(model, decay) == {"proj.weight", "head.weight", "cls_token"}
    assert names_in(model, no_decay) == {
        "proj.bias",
        "norm.weight",
        "norm.bias",
        "scale",
    }
    opt = build_optimizer(model, lr=1e-3)
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(model, lr=0.0)


def test_lr_schedule_warmup_then_cosine():
    kw = {"total_steps": 100, "warmup_steps": 20, "base_lr": 1e-3}
    assert lr_schedule(0, **kw) == 0.0
    assert lr_schedule(10, **kw) == pytest.approx(5e-4)
    assert lr_schedule(20, **kw) == pytest.approx(1e-3)
    assert lr_schedule(60, **kw) == pytest.approx(5e-4)  # half-way down the cosine
    assert lr_schedule(100, **kw) == pytest.approx(0.0)
    assert lr_schedule(150, **kw) == 0.0
    assert lr_schedule(100, **kw, min_lr=1e-5) == pytest.approx(1e-5)
    expect = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 30 / 80))
    assert lr_schedule(50, **kw, min_lr=1e-5) == pytest.approx(expect)
    assert lr_schedule(0, total_steps=5, warmup_steps=0, base_lr=1.0) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_schedule(0, total_steps=5, warmup_steps=6, base_lr=1.0)
    with pytest.raises(ValueError, match="step"):
        lr_schedule(-1, **kw)


def test_scheduler_follows_lr_schedule_and_round_trips(tmp_path):
    model = Toy()
    opt = build_optimizer(model, lr=2e-3)
    sched = build_scheduler(opt, total_steps=12, warmup_steps=4, min_lr=1e-5)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for step, lrs in enumerate(seen):
        want = lr_schedule(step, total_steps=12, warmup_steps=4, base_lr=2e-3, min_lr=1e-5)
        assert lrs == pytest.approx([want, want])

    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    model2 = Toy()
    opt2 = build_optimizer(model2, lr=2e-3)
    opt2.load_state_dict(opt.state_dict())
    sched2 = build_scheduler(opt2, total_steps=99, warmup_steps=50)  # restored from state
    sched2.load_state_dict(state)
    for _ in range(8):
        assert [g["lr"] for g in opt2.param_groups] == pytest.approx(
            [g["lr"] for g in opt.param_groups]
        )
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model, opt, sched = trained(steps=2)
    path = save(step_dir(tmp_path, 2), model, opt, sched, step=2, extra={"rng": [1, 2]})
    assert path.name == "step_000002"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.pt", "train_state.pt"]
    for name in ("model.pt", "train_state.pt"):
        torch.load(path / name, weights_only=True)  # no pickled objects
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left

    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 2 and ckpt["epoch"] == 0 and ckpt["extra"] == {"rng": [1, 2]}
    assert ckpt["model_config"] == {"width": 8, "depth": 1, "betas": [0.9, 0.95]}
    assert ckpt["train_config"] == {"epochs": 3}

    torch.manual_seed(1)
    model2 = Toy()
    model2.load_state_dict(ckpt["model_state"])
    opt2 = build_optimizer(model2, lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer_state"])
    sched2 = build_scheduler(opt2, total_steps=10, warmup_steps=2)
    sched2.load_state_dict(ckpt["scheduler_state"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert sched2.last_epoch == 2
    # the next step is identical
    x = torch.randn(5, 8)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    torch.testing.assert_close(model.proj.weight, model2.proj.weight)


def test_ddp_prefix_is_stripped_and_overwrite_replaces(tmp_path):
    model = Toy()
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path / "ck", model_state=wrapped, model_config={"w": 1})
    assert set(load_checkpoint(path)["model_state"]) == set(model.state_dict())
    save_checkpoint(path, model_state=model.state_dict(), model_config={"w": 2}, step=7)
    assert load_checkpoint(path)["model_config"] == {"w": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_unplain_state_is_refused_before_writing(tmp_path):
    model = Toy()
    with pytest.raises(CheckpointError, match=r"\['extra'\]\['obj'\] is a builtins.object"):
        save(tmp_path / "ck", model, extra={"obj": object()})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "ck", model_state={}, model_config={"f": object()})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoints_name_the_file(tmp_path):
    model, opt, sched = trained()
    path = save(tmp_path / "ck", model, opt, sched)

    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_checkpoint(path)
    (path / "model.pt").write_bytes(data)
    load_checkpoint(path)

    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json.*JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({"format_version": 99, "model_config": {}}))
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")

    good = save(tmp_path / "ck2", model)
    (good / "train_state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"train_state\.pt.*missing"):
        load_checkpoint(good)
    # a pickled object (not weights-only) is refused, not executed
    torch.save({"x": nn.Linear(2, 2)}, good / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"train_state\.pt"):
        load_checkpoint(good)


def test_check_compatible_lists_mismatches(tmp_path):
    ckpt = load_checkpoint(save(tmp_path / "ck", Toy()))
    check_compatible(ckpt, {"width": 8, "depth": 1, "betas": (0.9, 0.95)})  # tuple == list
    with pytest.raises(CheckpointError) as err:
        check_compatible(ckpt, {"width": 16, "depth": 1, "heads": 2, "betas": [0.9, 0.95]})
    msg = str(err.value)
    assert "width: checkpoint=8, now=16" in msg and "heads" in msg and "depth" not in msg


def test_latest_checkpoint_skips_partial_dirs_and_prune_keeps_newest(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    model = Toy()
    for step in (5, 10, 100, 20):
        save(step_dir(tmp_path, step), model, step=step)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000100"

    partial = step_dir(tmp_path, 200)
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"half")
    (tmp_path / ".step_000300.tmp-abcd").mkdir()  # an interrupted save
    broken = step_dir(tmp_path, 150)
    save(broken, model, step=150)
    (broken / "config.json").write_text("garbage")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000100"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 100

    deleted = prune_checkpoints(tmp_path, keep=3)
    assert [p.name for p in deleted] == ["step_000020", "step_000010", "step_000005"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".step_000300.tmp-abcd", "step_000100", "step_000150", "step_000200"]
    assert prune_checkpoints(tmp_path, keep=3) == []
    with pytest.raises(ValueError, match="keep"):
        prune_checkpoints(tmp_path, keep=0)


# --- PretrainConfig ------------------------------------------------------------------------


def test_pretrain_config_defaults_follow_the_paper():
    cfg = PretrainConfig()
    assert cfg.effective_lr() == pytest.approx(9.375e-6)  # 1.5e-4 * 16 / 256, one worker
    # batch_size is per worker (as the reference and MAE): 16 x 8 workers = 128 -> 7.5e-5.
    paper = PretrainConfig(batch_size=16, num_workers=8)
    assert paper.global_batch_size() == 128 and paper.worker_batch_size() == 16
    assert paper.effective_lr() == pytest.approx(1.5e-4 * 128 / 256)
    assert paper.effective_lr(global_batch=64) == pytest.approx(1.5e-4 * 64 / 256)
    assert PretrainConfig(lr=1e-3).effective_lr() == 1e-3
    assert PretrainConfig(batch_size=256, blr=1e-4).effective_lr() == pytest.approx(1e-4)
    assert (cfg.mask_ratio, cfg.masking, cfg.epochs, cfg.warmup_epochs) == (
        0.5,
        "semantic",
        150,
        40,
    )
    assert cfg.betas == (0.9, 0.95) and cfg.weight_decay == 0.05 and cfg.max_tokens == 256
    assert cfg.min_window_tokens() == 2 and cfg.worker_batch_size() == 16
    assert PretrainConfig(batch_size=10, num_workers=4).worker_batch_size() == 10


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"warmup_epochs": 10, "epochs": 5}, "warmup_epochs"),
        ({"min_tokens": 8, "max_tokens": 4}, "min_tokens"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"decoder_fraction": 0.0}, "decoder_fraction"),
        ({"masking": "tube"}, "masking"),
        ({"window": "random", "min_window_s": 60.0, "max_tokens": 8}, "min_window_s"),
        # sample_window draws whole seconds: 10 s do not fit in 2 segments of 4.8 s
        (
            {"window": "random", "min_window_s": 9.5, "segment_s": 4.8, "max_tokens": 2},
            "min_window_s",
        ),
        ({"seed": -1}, "seed"),
        ({"use_gpu": True, "cuda_graphs": "on", "attention": "split"}, "attention: split"),
        ({"batch_size": 0}, "batch_size"),
        ({"width": 100, "heads": 3}, "divisible by its heads"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"preset": "huge"}, "preset"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"epochs": 0}, "epochs"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_pretrain_config_rejects_bad_values(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PretrainConfig, sets={f"pretrain.{k}": v for k, v in overrides.items()})


@pytest.mark.parametrize(
    ("min_window_s", "segment_s", "max_tokens"),
    [(10, 5, 256), (10, 10, 16), (11, 6, 4), (7.5, 2.5, 8)],
)
def test_min_window_tokens_is_the_shortest_window_the_sampler_draws(
    min_window_s, segment_s, max_tokens
):
    """The config's shortest ``random`` window is what :func:`sample_window` draws (whole
    seconds, rounded down to whole segments), e.g. 1 token for 10 s of 10-s segments."""
    cfg = PretrainConfig(
        window="random", min_window_s=min_window_s, segment_s=segment_s, max_tokens=max_tokens
    )
    rng = np.random.default_rng(0)
    drawn = [sample_window(1000, max_tokens, rng, mode="random", min_window_s=min_window_s,
                           segment_s=segment_s) for _ in range(2000)]  # fmt: skip
    assert cfg.min_window_tokens() == min(end - start for start, end in drawn)


def test_split_attention_runs_without_cuda_graphs():
    """``split`` attention needs the host lengths, which a captured graph cannot take:
    ``cuda_graphs: auto`` resolves off with it on CUDA (and ``on`` is refused above)."""
    assert PretrainConfig(use_gpu=True).step_settings("cuda")["graphs"]
    settings = PretrainConfig(use_gpu=True, attention="split").step_settings("cuda")
    assert not settings["graphs"] and settings["backend"] == "split"


def test_pretrain_config_from_yaml_section(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("extract:\n  segment_s: 2.0\npretrain:\n  preset: tiny\n  betas: [0.8, 0.9]\n")
    cfg = load_config(
        PretrainConfig, path, sets={"pretrain.epochs": 3, "pretrain.warmup_epochs": 1}
    )
    assert cfg.preset == "tiny" and cfg.betas == (0.8, 0.9) and cfg.epochs == 3
    with pytest.raises(Exception, match="frozen"):
        cfg.epochs = 4
    with pytest.raises(ConfigError, match=r"--set extract.segment_s: this command reads"):
        load_config(PretrainConfig, path, sets={"extract.segment_s": 3.0})
    with pytest.raises(ConfigError, match=r"^--set pretrain.epochs: pretrain.epochs: "):
        load_config(PretrainConfig, path, sets={"pretrain.epochs": 0})
