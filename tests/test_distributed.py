"""Data-parallel training: 2 processes over gloo compute what 1 process computes with the same global batch.

The reference for a W-process run with ``grad_accum=k`` is the 1-process run with ``grad_accum=W*k``: the same
global batch cut into the same micro-batches, each with the same random stream. Two processes are started once
for the whole module (process start-up dominates) and train every scenario; the references train here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import Batch, DataKind
from genzoo.errors import ConfigError
from genzoo.io import load_tensors
from genzoo.registry import model_class
from genzoo.runs import RunDir
from genzoo.training import TrainConfig, Trainer
from genzoo.training.distributed import (
    DataParallelOptimizers,
    World,
    broadcast_model,
    launch,
    mean_over_processes,
    micro_batches,
    micro_seed,
    process_group,
)

STEPS = 4
SETTINGS = {**FAST, "batch_size": 8, "checkpoint_every": 2}
#: name -> (model, data kind, settings): one optimizer, two (a GAN, with EMA), diffusion timesteps and noise,
#: tokens in bf16 autocast. The GAN's discriminator barely moves (lr_d): with accumulation the first micro-batch's
#: generator step sees the discriminator before its update, while data-parallel processes all see it after (as one
#: big batch would), so only then is accumulation the reference. (An image GAN has biases right before BatchNorm:
#: their true gradient is 0, and Adam turns its rounding noise into full-size steps that no tolerance can follow.)
SCENARIOS: dict[str, tuple[str, DataKind, dict[str, Any]]] = {
    "vae": ("vae", DataKind.IMAGE, {}),
    "dcgan": ("dcgan", DataKind.VECTOR, {"ema_decay": 0.9, "lr_d": 1e-9}),
    "ddpm": ("ddpm", DataKind.VECTOR, {"ema_decay": 0.9}),
    "gpt": ("gpt", DataKind.TOKENS, {"precision": "bf16"}),
}


def _train(root: Path, name: str, out: str, steps: int = STEPS, grad_accum: int = 1, resume: bool = False) -> Path:
    """One run on one thread, as each of the 2 processes has: kernels on more threads sum in another order, and
    Adam turns that rounding into full-size steps where a gradient is near zero."""
    model, kind, extra = SCENARIOS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if resume:
            return genzoo.train(None, tiny_dataset(kind), steps=steps, out=root / out, resume=True)
        return genzoo.train(model, tiny_dataset(kind), steps=steps, out=root / out,
                            overrides={**model_class(model).smoke_config, **extra},
                            **{**SETTINGS, "grad_accum": grad_accum})
    finally:
        torch.set_num_threads(threads)


def _two_process_runs(root: Path) -> None:
    """What each of the 2 processes runs (in one process group, which train() joins): every scenario, and a ddpm
    run stopped at step 2 and resumed."""
    with process_group(torch.device("cpu")) as world:
        _collective_checks(root, world)
        _batchnorm_statistics(root, world)
        for name in SCENARIOS:
            _train(root, name, f"{name}-2p")
        _train(root, "ddpm", "ddpm-resumed", steps=2)
        _train(root, "ddpm", "ddpm-resumed", resume=True)


def _collective_checks(root: Path, world: World) -> None:
    """The primitives on known numbers, each process writing what it ends with."""
    torch.manual_seed(world.rank)  # a different initialisation in each process
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))
    net[1].running_mean.fill_(world.rank + 1.0)
    broadcast_model(net)
    weights = {k: v.tolist() for k, v in net.state_dict().items()}
    first, second, unused = net[0].weight, net[0].bias, net[2].weight
    first.grad = torch.full_like(first, world.rank + 1.0)  # 1 and 2: the mean is 1.5
    second.grad = torch.ones_like(second) * 4.0 if world.rank == 1 else None  # only process 1 has one: 4 / 2
    optim = DataParallelOptimizers({}, None, None, world)
    optim.reduce_gradients([first, second, unused])
    result = {"weights": weights, "first": first.grad.tolist(), "second": second.grad.tolist(),
              "unused": unused.grad is None,
              "mean": mean_over_processes({"a": float(world.rank), "b": 2.0 * world.rank}, world)}
    (root / f"collectives-{world.rank}.json").write_text(json.dumps(result))


def _batchnorm_statistics(root: Path, world: World) -> None:
    """Two steps of an image GAN (BatchNorm): each process writes the running statistics it ends with."""
    data = tiny_dataset(DataKind.IMAGE)
    model = genzoo.create("dcgan", data, **model_class("dcgan").smoke_config)
    cfg = TrainConfig(**{**SETTINGS, "steps": 2})
    Trainer(model, data, RunDir(root / "batchnorm"), cfg, {"model": "dcgan"}, world=world).fit()
    stats = {k: v.tolist() for k, v in model.state_dict().items() if "running" in k}
    (root / f"batchnorm-{world.rank}.json").write_text(json.dumps(stats))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    launch(2, _two_process_runs, root)
    return root


def _weights(run: Path, file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_tensors(run / "last" / file)


def _losses(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("time", "steps_per_s")}
            for r in RunDir(run).metrics() if r["split"] == "train"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_match_one_process_with_the_same_global_batch(runs: Path, name: str, tmp_path: Path) -> None:
    reference = _train(tmp_path, name, "1p", grad_accum=2)
    parallel = runs / f"{name}-2p"
    # parameters (and their EMA) only: buffers a model updates itself follow process 0, as in DDP
    params = {k for k, _ in RunDir(reference).build_model().named_parameters()}
    files = ["model.safetensors"] + (["ema.safetensors"] if (reference / "last" / "ema.safetensors").exists() else [])
    for file in files:
        one, two = _weights(reference, file), _weights(parallel, file)
        assert one.keys() == two.keys()
        for key in params:  # gradients summed in another order: float rounding only
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=f"{name} {file}: {key}")
    losses_one, losses_two = _losses(reference), _losses(parallel)
    assert [r["step"] for r in losses_two] == list(range(1, STEPS + 1))  # one row per step: process 0 logs alone
    for a, b in zip(losses_one, losses_two, strict=True):  # each logged loss is the mean over both processes
        assert b.keys() == a.keys()
        assert all(b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6) for k in a if k != "split")


def test_gradients_are_averaged_and_process_zero_gives_the_weights(runs: Path) -> None:
    results = [json.loads((runs / f"collectives-{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["weights"] == results[1]["weights"]  # parameters and BatchNorm statistics of process 0
    assert results[0]["weights"]["1.running_mean"] == [1.0, 1.0]
    for result in results:
        assert result["first"] == [[1.5, 1.5], [1.5, 1.5]]
        assert result["second"] == [2.0, 2.0]  # a missing gradient counts as zero, as in accumulation
        assert result["unused"]  # no gradient anywhere: none after the reduction either
        assert result["mean"] == {"a": 0.5, "b": 1.0}


def test_buffers_a_model_updates_follow_process_zero(runs: Path) -> None:
    stats = [json.loads((runs / f"batchnorm-{rank}.json").read_text()) for rank in range(2)]
    assert stats[0] and stats[0] == stats[1]


def test_a_resumed_two_process_run_is_the_uninterrupted_one(runs: Path) -> None:
    whole, resumed = runs / "ddpm-2p", runs / "ddpm-resumed"
    for file in ("model.safetensors", "ema.safetensors"):
        a, b = _weights(whole, file), _weights(resumed, file)
        assert all(torch.equal(a[k], b[k]) for k in a), file
    assert _losses(resumed) == _losses(whole)


def test_only_process_zero_writes(runs: Path, tmp_path: Path) -> None:
    parallel = runs / "vae-2p"
    reference = _train(tmp_path, "vae", "1p", grad_accum=2)
    listing = lambda run: sorted(str(p.relative_to(run)) for p in run.rglob("*"))  # noqa: E731
    assert listing(parallel) == listing(reference)
    rows = [(r["step"], r["split"]) for r in RunDir(parallel).metrics()]
    assert len(rows) == len(set(rows))
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        [f"{n}-2p" for n in SCENARIOS]
        + ["ddpm-resumed", "batchnorm", *(f"{f}-{r}.json" for f in ("collectives", "batchnorm") for r in range(2))])


def test_each_process_takes_its_own_contiguous_slice_of_the_global_batch() -> None:
    batch = Batch(torch.arange(16.0)[:, None])
    parts = [micro_batches(batch, World(rank, 2), 2) for rank in range(2)]
    assert [j for part in parts for j, _ in part] == [0, 1, 2, 3]
    assert torch.equal(torch.cat([b.x for part in parts for _, b in part]), batch.x)
    assert [j for j, _ in micro_batches(batch, World(0, 1), 4)] == [0, 1, 2, 3]  # 1 process, k=4: same split


def test_micro_batch_streams_differ_by_seed_step_and_index() -> None:
    seeds = {micro_seed(s, t, j) for s in range(2) for t in range(3) for j in range(4)}
    assert len(seeds) == 24 and all(0 <= s < 2**63 for s in seeds)
    assert micro_seed(0, 1, 2) == micro_seed(0, 1, 2)


def test_the_global_batch_must_split_over_the_processes(tmp_path: Path) -> None:
    data = tiny_dataset(DataKind.VECTOR)
    model = genzoo.create("vae", data, **model_class("vae").smoke_config)
    cfg = TrainConfig(**{**SETTINGS, "batch_size": 6, "grad_accum": 2})
    with pytest.raises(ConfigError, match="grad_accum=2 equal micro-batches on each of 2 process"):
        Trainer(model, data, RunDir(tmp_path / "run"), cfg, {}, world=World(0, 2))


def test_nproc_is_checked() -> None:
    with pytest.raises(ConfigError, match="nproc must be at least 1"):
        genzoo.train("vae", "digits", nproc=0)
