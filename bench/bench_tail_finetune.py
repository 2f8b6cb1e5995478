"""Would training the image backbone's last blocks lift photo classification? (issue 11)

Text->image retrieval misses where photos of look-alike classes (tops and T-shirts, flats and
heels) sit together in the frozen EfficientNet-Lite0 features (docs/ablation.md). This bench
measures the lever before anyone builds it into the pipeline: on a bundle's own split of its
catalog, a linear leaf head is trained over

- the frozen backbone (the baseline), and
- the backbone whose blocks from `--train-from` on (and its head conv) train with it,

with the same loop, epochs, optimiser and augmentation (a mirrored copy, half the time). The
blocks before `--trunk-blocks` never train, so their output maps are computed once and cached
in `--work`. Validation leaf top-1 picks each arm's epoch; test top-1 only reports.

    python -m bench.bench_tail_finetune --bundle runs/x/bundle --catalog catalog.csv
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, write_results

SPEC = "efficientnet-lite0"
BATCH = 64


def trunk_maps(model: Any, preprocess: Any, paths: list[Path], blocks: int,
               flip: bool) -> np.ndarray:
    """fp16 output maps of the stem and the first `blocks` blocks for every photo."""
    import torch
    from PIL import Image

    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            x = torch.stack([preprocess(Image.open(p).convert("RGB"))
                             for p in paths[start:start + 32]])
            x = torch.flip(x, dims=[3]) if flip else x
            x = model._swish(model._bn0(model._conv_stem(x)))
            for block in model._blocks[:blocks]:
                x = block(x, drop_connect_rate=None)
            out.append(x.numpy().astype(np.float16))
    return np.concatenate(out)


def make_tail(model: Any, trunk_blocks: int, train_from: int, n_classes: int) -> Any:
    """The blocks after the trunk, the head conv and a linear head; blocks before
    `train_from` (and all of them when train_from is past the last block) stay frozen."""
    import torch

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(copy.deepcopy(model._blocks[trunk_blocks:]))
            self.head = copy.deepcopy(model._conv_head)
            self.swish = model._swish
            self.drop = torch.nn.Dropout(0.2)
            self.fc = torch.nn.Linear(self.head.out_channels, n_classes)

        def features(self, x: Any) -> Any:
            for block in self.blocks:
                x = block(x, drop_connect_rate=None)
            return self.swish(self.head(x)).mean(dim=(2, 3))

        def forward(self, x: Any) -> Any:
            return self.fc(self.drop(self.features(x)))

    tail = Tail()
    trained = list(tail.blocks)[max(0, train_from - trunk_blocks):]
    frozen_tail = train_from >= trunk_blocks + len(tail.blocks) + 1
    for module in list(tail.blocks) + [tail.head]:
        module.requires_grad_(not frozen_tail and (module is tail.head or module in trained))
    return tail


def train_arm(tail: Any, maps: Any, flips: Any, y: np.ndarray, splits: Any, epochs: int,
              lr: float, seed: int) -> dict[str, Any]:
    """Train `tail` on the train split; -> per-epoch curve and the epoch validation picks."""
    import torch

    torch.manual_seed(seed)
    head = {id(q) for q in tail.fc.parameters()}
    backbone = [q for q in tail.parameters() if q.requires_grad and id(q) not in head]
    groups = [{"params": list(tail.fc.parameters()), "lr": 10 * lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    labels = torch.from_numpy(y)
    train = torch.from_numpy(splits.train[y[splits.train] >= 0])

    def top1(rows: np.ndarray) -> float:
        rows = rows[y[rows] >= 0]
        tail.eval()
        with torch.inference_mode():
            pred = torch.cat([tail(maps[rows[s:s + 256]]).argmax(1)
                              for s in range(0, len(rows), 256)])
        tail.train()
        return round(float((pred.numpy() == y[rows]).mean()) * 100, 2)

    curve = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = train[torch.randperm(len(train))]
        for start in range(0, len(order), BATCH):
            rows = order[start:start + BATCH]
            mirrored = (torch.rand(len(rows)) < 0.5)[:, None, None, None]
            x = torch.where(mirrored, flips[rows], maps[rows])
            loss = torch.nn.functional.cross_entropy(tail(x), labels[rows], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        curve.append({"epoch": epoch, "val_top1": top1(splits.val), "test_top1": top1(splits.test),
                      "seconds": round(time.perf_counter() - t0, 1)})
        print(curve[-1], flush=True)
    best = max(curve, key=lambda p: p["val_top1"])
    return {"best_epoch": best["epoch"], "val_top1": best["val_top1"],
            "test_top1": best["test_top1"], "curve": curve}


def tower_retrieval(tail: Any, maps: Any, cfg: Any, feats: Any) -> dict[str, float]:
    """Validation and test class recall@1 (image->text, text->image) and fused leaf top-1 of
    HUSE towers trained (train.stages, the bundle's config, one 512 image tower) on the
    catalog's features with the backbone columns replaced by `tail`'s pooled features (the
    tail as trained for all epochs)."""
    import dataclasses

    import torch

    from train.loop import TrainData, train_model
    from train.stages import build_towers, prepare
    from train.tower_search import validation_scores

    tail.eval()
    with torch.inference_mode():
        pooled = torch.cat([tail.features(maps[s:s + 256]) for s in range(0, len(maps), 256)])
    image = feats.image.copy()
    image[:, : pooled.shape[1]] = pooled.numpy()
    cfg = dataclasses.replace(cfg, image_towers=((512,),), w_nce_alternatives=())
    prep = prepare(cfg, feats=dataclasses.replace(feats, image=image))
    model = build_towers(prep, (512,))
    splits, leaf = prep.data.splits, prep.data.leaf
    data = TrainData(image=image, text=prep.text_input, y=prep.spaces.y,
                     train_idx=prep.train_rows, val_idx=splits.val, leaf_head=leaf, A=prep.graph)
    result = train_model(model, data, cfg, None)
    out = {}
    for split, rows in (("val", splits.val), ("test", splits.test)):
        x = dataclasses.replace(data, val_idx=rows).validation()
        score = validation_scores(model, x[0], x[1], x[2][leaf], leaf, result.best_epoch,
                                  (512,), cfg.w_nce)
        out |= {f"{split}_fused_top1": round(100 * score.fused_top1, 2),
                f"{split}_image_to_text_r1": round(100 * score.image_to_text_r1, 2),
                f"{split}_text_to_image_r1": round(100 * score.text_to_image_r1, 2)}
    return {**out,
            "best_epoch": result.best_epoch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="a trained bundle: its split and labels")
    parser.add_argument("--catalog", required=True, help="the catalog the bundle was trained on")
    parser.add_argument("--trunk-blocks", type=int, default=11,
                        help="blocks computed once and cached (never trained)")
    parser.add_argument("--train-from", type=int, nargs="+", default=[15, 13],
                        help="first trained block of each fine-tuned arm")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-4, help="backbone blocks (head: 10x)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="",
                        help="where the trunk maps are cached (default: beside the bundle)")
    parser.add_argument("--towers", action="store_true",
                        help="also train HUSE towers on each arm's features: cross-modal R@1")
    parser.add_argument("--out", default="bench_tail_finetune")
    args = parser.parse_args(argv)

    import torch

    from embedder.backbones import load_backbone
    from embedder.bundle import Bundle
    from train.data import bundle_data

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    bundle = Bundle.load(args.bundle)
    cfg, data = bundle_data(bundle, args.catalog)
    y = data.y[data.leaf]
    backbone = load_backbone(SPEC, "cpu", engine="torch")
    model = backbone.model.to(memory_format=torch.contiguous_format)
    paths = [p.image_path for p in data.feats.products]
    work = Path(args.work or Path(args.bundle).parent / "tail_maps")
    work.mkdir(parents=True, exist_ok=True)
    cached = {}
    for flip in (False, True):
        # keyed by catalog and size as well: the cache must not serve another catalog's maps
        path = work / (f"{Path(args.catalog).stem}_{len(paths)}_{SPEC}_{args.trunk_blocks}"
                       f"{'_mirrored' if flip else ''}.npy")
        if not path.exists():
            t0 = time.perf_counter()
            np.save(path, trunk_maps(model, backbone.preprocess, paths, args.trunk_blocks, flip))
            print(f"trunk maps ({'mirrored' if flip else 'as is'}) in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        cached[flip] = torch.from_numpy(np.load(path).astype(np.float32))
    n_classes = int(y.max()) + 1
    arms = {"frozen backbone (linear head)": len(model._blocks) + 1, **{
        f"blocks {k}+ and head conv trained": k for k in args.train_from}}
    results = {}
    for name, train_from in arms.items():
        print(name, flush=True)
        tail = make_tail(model, args.trunk_blocks, train_from, n_classes)
        results[name] = train_arm(tail, cached[False], cached[True], y, data.splits,
                                  args.epochs, args.lr, args.seed)
        if args.towers:
            results[name]["towers"] = tower_retrieval(tail, cached[False], cfg, data.feats)
            print(results[name]["towers"], flush=True)
    for name, r in results.items():
        print(f"{name}: val {r['val_top1']} (epoch {r['best_epoch']}), test {r['test_top1']}")
    path = write_results(args.out, {
        "machine": machine_info(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "parameters": vars(args),
        "split": data.splits.summary(),
        "baseline": "frozen backbone, same loop, epochs, optimiser and mirroring",
        "arms": results,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
