"""Bring your own training, end to end: a user's own model and plain PyTorch loop on
Fashion-MNIST, recorded with ``record_training``, imported into a running ``lethe serve``,
one data subject erased through the Python client, and the new weights pulled and loaded
into the user's own model.

    pip install ./examples/byo-training            # the user's package (lethe.models entry point)
    lethe serve                                    # in another shell (make run)
    python examples/byo-training/train_and_erase.py --api-key $KEY --store var/blobs/tenants/default

``--store`` is the service's store for your tenant (``<LETHE_BLOB_STORE>/tenants/<tenant>``,
a folder or ``s3://...``): the run is recorded straight into it. Everything the service
needs comes from the run itself and the dataset registered here.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import httpx
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lethe_client import Client, Conflict
from lethe_example_nets import build
from unlearning_core import record_training
from unlearning_core.data import load_dataset


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", required=True, help="an admin key of your tenant")
    p.add_argument("--store", required=True, help="your tenant's store of the service")
    p.add_argument("--arch", default="fashion-net", choices=["fashion-net", "mobilenet"])
    p.add_argument("--train-samples", type=int, default=60000)
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--subject", default="subject-0003", help="the data subject to erase")
    p.add_argument("--name", default="fashion-byo", help="the model's name in the service")
    p.add_argument("--run-id", default=None)
    p.add_argument("--cache-dir", default=None)
    return p.parse_args(argv)


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(images[i : i + 512]).argmax(1) == labels[i : i + 512]).sum()) for i in range(0, len(images), 512))
    return hits / len(images)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse(argv)
    run_id = args.run_id or f"{args.name}-{int(time.time())}"
    data = load_dataset("fashion-mnist")  # the user's data; sample ids "0".."59999"
    n = min(args.train_samples, len(data.train))
    images, labels, ids = data.train.images[:n], data.train.labels[:n], list(data.train.sample_ids[:n])
    test_x, test_y = data.test.images[: args.test_samples], data.test.labels[: args.test_samples]

    # 1. The user's own model and plain loop; four lines make it recorded.
    torch.manual_seed(0)
    kwargs = {"arch": args.arch}
    model = build(**kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    with record_training(model, opt, store=args.store, run_id=run_id, model_factory="fashion-net",
                         model_kwargs=kwargs, mode="full", seed=0) as rec:
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(n, generator=g)
            for start in range(0, n, args.batch_size):
                batch = order[start : start + args.batch_size]
                with rec.step([ids[i] for i in batch.tolist()], epoch=epoch):
                    F.cross_entropy(model(images[batch]), labels[batch]).backward()
                    opt.step()
                    opt.zero_grad()
    trained_seconds = time.perf_counter() - started
    original_acc = accuracy(model, test_x, test_y)

    # 2. The data in the service: Fashion-MNIST with subjects of ten samples.
    registered = httpx.post(
        f"{args.url}/datasets", headers={"Authorization": f"Bearer {args.api_key}"},
        json={"name": "fashion", "source": "fashion-mnist", "subject_size": 10}, timeout=600,
    )
    if registered.status_code not in (201, 409):
        raise SystemExit(f"registering the dataset failed: {registered.status_code} {registered.text}")

    with Client(args.url, args.api_key, cache_dir=args.cache_dir) as lethe:
        # 3. Import the run: verified, then version 0.
        try:
            lethe.import_run(args.name, run_id, "fashion")
        except Conflict:
            pass  # imported by an earlier run of this script
        # 4. Erase one subject; wait for the approximate tier (a new version).
        filed = lethe.request_erasure(args.subject, models=[args.name])
        status = lethe.wait(filed.id, "approximate", timeout=1800)
        # 5. Pull the new weights (sha256-verified) into the user's own model.
        pulled = lethe.pull(args.name)
        mine = build(**kwargs)
        mine.load_state_dict(load_file(str(pulled.path)))
        versions = lethe.list_versions(args.name)
    result = {
        "run_id": run_id,
        "train_samples": n,
        "epochs": args.epochs,
        "trained_seconds": round(trained_seconds, 2),
        "original_test_acc": round(original_acc, 4),
        "request": filed.id,
        "request_status": status.status,
        "pulled_version": pulled.version,
        "versions": [v.number for v in versions],
        "unlearned_test_acc": round(accuracy(mine, test_x, test_y), 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
