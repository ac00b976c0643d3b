"""Started by ``tests/test_distributed.py`` under torchrun (2 gloo processes on the CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \\
        MODE DATA OUT CONFIG_JSON

MODE ``gradients`` (CONFIG_JSON: a list of configs): for each config every process accumulates
its share of optimiser step 0 of a registration run (``train.registration_gradients`` through
DistributedDataParallel) and saves the averaged gradients as ``grads_<k>_<rank>.pt``;
``train``: ``train_registration`` into OUT; ``train-interrupted``: the same, stopped
(KeyboardInterrupt) right after the first epoch's checkpoint, as a killed run would be.
"""

import json
import sys
from pathlib import Path

import torch

from deepsim_edu import distributed, train
from deepsim_edu.config import registration_config
from deepsim_edu.data.pairs import CaseStore, training_pairs
from deepsim_edu.losses import get_loss
from deepsim_edu.unet import registration_unet


def config_from(text: str):
    fields = json.loads(text)
    return registration_config("phc-u373", fields.pop("metric", "mse"), "quick", **fields)


def gradients(data: Path, out: Path, config, k: int) -> None:
    processes = distributed.current()
    processes.start("cpu")
    torch.manual_seed(0)
    net = registration_unet(2, config.encoder_channels, dropout=0.0)
    # whole micro-batches per process: BatchNorm sees the same items as in one process (exact
    # in train mode); a split batch: its statistics differ, so eval mode (running statistics)
    net.train(config.accumulation % processes.world_size == 0)
    store = CaseStore(data)
    pairs = training_pairs(store.info, "train", 0, config.seed)
    share = distributed.share_step(config.batch_size, config.accumulation, processes)
    forward = processes.wrap(net)
    list(train.registration_gradients(forward, store, pairs, config, 0, share, get_loss("mse"),
                                      "cpu"))  # fmt: skip
    grads = {name: p.grad for name, p in net.named_parameters()}
    torch.save(grads, out / f"grads_{k}_{processes.rank}.pt")


def run(data: Path, out: Path, config, interrupted: bool) -> None:
    if interrupted:
        real = train._end_epoch

        def end_then_stop(*args, **kwargs):
            real(*args, **kwargs)
            raise KeyboardInterrupt  # killed right after the checkpoint of epoch 1

        train._end_epoch = end_then_stop
    train.train_registration(data, out, config, progress=False)


if __name__ == "__main__":
    mode, data, out, text = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    if mode == "gradients":
        for k, fields in enumerate(json.loads(text)):
            gradients(data, out, config_from(json.dumps(fields)), k)
    else:
        run(data, out, config_from(text), interrupted=mode == "train-interrupted")
