"""Run :class:`FinetuneSession` in plain processes (no Ray): a gloo process group started by the test."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from facetrack.types import Clip


def write_clip_cache(root: Path, n: int, frames: int = 8) -> list[dict[str, Any]]:
    """``n`` cached clips of smooth random images (no tracking needed); returns their train items."""
    from facetrack.data import encode_clip

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        base = rng.integers(0, 256, (frames, 12, 16, 3), dtype=np.uint8)
        images = np.kron(base, np.ones((1, 8, 8, 1), dtype=np.uint8))  # 96 x 128, JPEG-friendly
        crops = images[:, :64, :64].copy() if i % 3 else None
        path = root / f"clip{i}.npz"
        path.write_bytes(encode_clip(Clip(f"clip{i}", images, crops)))
        items.append(
            {
                "id": f"clip{i}",
                "caption": f"The person number {i} smiles and then looks surprised.",
                "clip": str(path),
                "n_frames": frames,
                "has_crops": crops is not None,
            }
        )
    return items


def session_worker(rank: int, world: int, args: dict[str, Any]) -> None:
    """Train steps [0, 2), checkpoint, train [2, 4); then a fresh session loads the checkpoint and trains
    [2, 4) again. Rank 0 writes the losses and adapter facts to ``args["out"]``."""
    import torch
    import torch.distributed as dist

    from facetrack.data import load_templates
    from facetrack.model.examples import TrainItem
    from facetrack.model.lora import LoraSettings
    from facetrack.model.session import FinetuneSession
    from facetrack.model.train_settings import TrainSettings

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world)
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    items = [TrainItem.from_dict(d) for d in args["items"]]
    train = TrainSettings(**args["train"])

    def new_session() -> FinetuneSession:
        session = FinetuneSession(
            model_source=args["model"],
            items=items,
            templates=load_templates(),
            lora=LoraSettings(r=4, alpha=8, dropout=0.1),
            train=train,
            deepspeed_config=args["deepspeed"],
            rank=rank,
            world_size=world,
            device=torch.device("cpu"),
        )
        session.setup()
        return session

    session = new_session()
    first = [s.loss for s in session.steps(0, 2)]
    ckpt = Path(args["ckpt"])
    own = ckpt / f"rank{rank}"
    session.save(own, {"step": 2})
    dist.barrier()
    if rank == 0:  # what Ray Train does: every rank's files land in one checkpoint folder
        merged = ckpt / "merged"
        for r in range(world):
            shutil.copytree(ckpt / f"rank{r}", merged, dirs_exist_ok=True)
    dist.barrier()
    straight = [s.loss for s in session.steps(2, 4)]
    resumed_session = new_session()
    state = resumed_session.load(ckpt / "merged")
    resumed = [s.loss for s in resumed_session.steps(2, 4)]
    if rank == 0:
        from safetensors.torch import load_file

        adapter = load_file(str(own / "adapter" / "adapter_model.safetensors"))
        non_lora = torch.load(own / "non_lora_trainables.bin", weights_only=True)
        shapes = {k: list(v.shape) for k, v in {**adapter, **non_lora}.items()}
        out = {
            "first": first,
            "straight": straight,
            "resumed": resumed,
            "state": state,
            "shapes": shapes,
            "lora_b_nonzero": any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k),
            "files": sorted(str(p.relative_to(ckpt / "merged")) for p in (ckpt / "merged").rglob("*.pt")),
            "rank1_files": sorted(str(p.relative_to(ckpt / "rank1")) for p in (ckpt / "rank1").rglob("*")),
            "data": session.data_stats,
        }
        Path(args["out"]).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()
