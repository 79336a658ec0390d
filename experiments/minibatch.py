"""Mini-batch size: batch gradient descent, stochastic (batch 1) and mini-batches in between.

Claim (seed chapter; Ng, *Improving Deep Neural Networks*, week 2, "Mini-batch gradient
descent" and "Understanding mini-batch gradient descent"): batch gradient descent takes one
step per pass over the data — each step is vectorised but expensive, so progress per epoch
is slow; stochastic gradient descent (batch 1) takes a step per example but "loses the
speed-up from vectorisation", so an epoch takes long; a mini-batch (typically 64 … 512)
combines both — the fastest progress in wall-clock time.

Fashion-MNIST subset, one hidden relu layer, softmax, mini-batch SGD at one learning rate
for every batch size (``jbp.fit`` with ``batch_size`` 1, 16, 64, 256, 1024 and ``None`` =
the whole set). Every run trains for the same wall-clock budget (at least ``min_epochs``);
the compiled epoch is warmed up first so compilation is not counted. Reported per batch
size: seconds per epoch, examples per second, steps per epoch, and the test loss against
epochs and against wall time.

Timings depend on the machine and on its load (the results were produced on a shared
2-core CPU); the tests assert only the timing-free part of the claim (per epoch, smaller
batches make more progress).

Run: ``python -m experiments.minibatch [--quick] [--out DIR]``.
"""

import dataclasses
import sys

import jax
import numpy as np

import jbp
from experiments import common
from jbp import train

NAME = "minibatch"


@dataclasses.dataclass(frozen=True)
class Config:
    batch_sizes: tuple = (1, 16, 64, 256, 1024, None)  # None = the whole set (batch GD)
    n_train: int = 10_000  # Fashion-MNIST training subset (fixed random 10 000 of 60 000)
    n_test: int = 2_000  # test subset, evaluated after every epoch
    hidden: int = 64  # one hidden relu layer: 784-64-10
    lr: float = 0.05  # one learning rate for all batch sizes (stable even for batch 1)
    budget_s: float = 3.0  # wall-clock seconds of training per batch size
    min_epochs: int = 2  # ... but at least this many epochs
    max_epochs: int = 1000  # ... and at most this many
    seed: int = 0  # parameters and shuffles


# CI: 2 000 examples, exactly 2 epochs each, no time budget
QUICK = Config(
    batch_sizes=(1, 16, 256, None),
    n_train=2_000,
    n_test=500,
    hidden=32,
    budget_s=0.0,
    min_epochs=2,
    max_epochs=2,
)


def run_one(cfg, net, ds, batch_size):
    opt, source = common.optimizer("sgd", cfg.lr)
    key = jax.random.key(cfg.seed)
    epoch_fn = jax.jit(train.make_epoch(net, opt, batch_size))
    state0 = train.init_state(net, opt, key)
    dev = train.device_data(ds, jax.numpy.float32)
    jax.block_until_ready(epoch_fn(state0, *dev))  # compile outside the timed epochs

    full_loss = jax.jit(net.loss)

    def stop(state, record):
        # the cost on the whole training set after the epoch (not timed: fit times the epoch)
        record["full_train_loss"] = float(full_loss(state.params, dev[0], dev[1]))
        spent = sum(r["seconds"] for r in history_box) + record["seconds"]
        history_box.append(record)
        return record["epoch"] >= cfg.min_epochs and spent >= cfg.budget_s

    history_box = []
    _, history = jbp.fit(
        net,
        opt,
        ds,
        batch_size=batch_size,
        epochs=cfg.max_epochs,
        state=state0,
        epoch_fn=epoch_fn,
        callback=stop,
    )
    secs = np.array([r["seconds"] for r in history])
    nb, _ = train.batch_layout(len(ds.y_train), batch_size)
    return {
        "batch_size": "full" if batch_size is None else batch_size,
        "implementation": source,
        "steps_per_epoch": nb,
        "steps_counted": [r["step"] for r in history],
        "epochs": len(history),
        "seconds_per_epoch": float(np.median(secs)),
        "examples_per_second": float(len(ds.y_train) / np.median(secs)),
        "cum_seconds": np.cumsum(secs).tolist(),
        "test_loss": [r["test_loss"] for r in history],
        "test_accuracy": [r["test_accuracy"] for r in history],
        "train_loss": [r["full_train_loss"] for r in history],
    }


def plot(cfg, data_name, rows):
    fig, axes = common.figure(1, 3, size=(5.0, 4.0))
    cmap = __import__("matplotlib").colormaps["viridis"]
    colors = [cmap(i / max(1, len(rows) - 1)) for i in range(len(rows))]
    for r, c in zip(rows, colors, strict=True):
        lbl = f"batch {r['batch_size']}"
        ep = np.arange(1, r["epochs"] + 1)
        axes[0, 0].plot(ep, r["train_loss"], "o-", ms=2, color=c, label=lbl)
        axes[0, 1].plot(r["cum_seconds"], r["train_loss"], "o-", ms=2, color=c, label=lbl)
    axes[0, 0].set_xscale("log")
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].set_title(
        "Cost per epoch: more steps per epoch,\nmore progress per epoch", fontsize=10
    )
    axes[0, 1].set_xlabel("training seconds (compile excluded)")
    axes[0, 1].set_title(f"Cost against wall time (budget {cfg.budget_s:g} s each)", fontsize=10)
    for ax in axes[0, :2]:
        ax.set_ylabel(f"training cost, whole set ({data_name})")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax = axes[0, 2]
    labels = [str(r["batch_size"]) for r in rows]
    ax.bar(labels, [r["seconds_per_epoch"] for r in rows], color=colors)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("seconds per epoch (median)")
    ax.set_title(f"Time per epoch, {cfg.n_train} examples\n(batch 1 cannot vectorise)", fontsize=10)
    for i, r in enumerate(rows):
        ax.text(
            i,
            r["seconds_per_epoch"],
            f"{r['examples_per_second']:.0f}/s",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    return fig


def main(argv=None):
    args = common.parse_args(argv, __doc__)
    cfg = QUICK if args.quick else Config()
    data_name, ds = common.image_data(cfg.n_train, cfg.n_test, cfg.seed)
    n_in, n_out = ds.x_train.shape[1], int(ds.y_train.max()) + 1
    net = jbp.MLP((n_in, cfg.hidden, n_out), "relu", "softmax", "cross_entropy")
    rows = []
    for b in cfg.batch_sizes:
        rows.append(run_one(cfg, net, ds, b))
        r = rows[-1]
        print(
            f"batch {r['batch_size']}: {r['seconds_per_epoch']:.3f} s/epoch, "
            f"{r['epochs']} epochs, cost {r['train_loss'][-1]:.4f}",
            file=sys.stderr,
        )
    n = len(ds.y_train)
    by = {r["batch_size"]: r for r in rows}
    first = [r["train_loss"][0] for r in rows]  # after one epoch, batch sizes ascending
    claims = {
        "steps_per_epoch_is_ceil_n_over_b": all(
            r["steps_per_epoch"] == (1 if r["batch_size"] == "full" else -(-n // r["batch_size"]))
            and r["steps_counted"][0] == r["steps_per_epoch"]
            for r in rows
        ),
        # per epoch, more (smaller) steps make more progress at this learning rate
        "smaller_batches_lower_loss_after_one_epoch": all(
            a < b for a, b in zip(first[1:], first[2:], strict=False)
        )
        and first[-1] > first[0],
        # timing (reported, not asserted in CI): batch 1 is the slowest per epoch, and the
        # best loss within the budget comes from a mini-batch, not batch 1 or full
        "batch1_slowest_per_epoch": by[1]["seconds_per_epoch"]
        == max(r["seconds_per_epoch"] for r in rows)
        if 1 in by
        else None,
        "best_loss_at_budget_is_minibatch": min(rows, key=lambda r: r["train_loss"][-1])[
            "batch_size"
        ]
        not in (1, "full"),
    }
    fig = plot(cfg, data_name, rows)
    return common.save(
        args.out,
        NAME,
        {"config": cfg, "quick": args.quick, "data": data_name, "rows": rows, "claims": claims},
        fig,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
