"""Learning-rate decay: every epoch (stalls) against a fixed interval, then six schedules.

Claim (seed chapter; deeplearning.ai *Improving Deep Neural Networks*, week 2 assignment
"Optimization methods", §7): with α = α₀ / (1 + decayRate·epochNum) applied every epoch
(α₀ = 0.1, decayRate = 1) "the learning rate goes to zero too quickly": α is 1e-4 after 1000
epochs and the cost only creeps from 0.70 to 0.65 in 5000 epochs (§7.1 table). Decaying
once every 1000 epochs instead, α = α₀ / (1 + decayRate·⌊epochNum / 1000⌋) (§7.2), lets
gradient descent (α₀ = 0.1) reach > 94.6 %, momentum (α₀ = 0.1) > 95.6 % and Adam (α₀ = 0.01)
94 % training accuracy on the moons set (§7.4 table) — the plain methods catch up with Adam.

Same network and data as ``experiments/optimizers.py`` ([2, 5, 2, 1], relu/relu/sigmoid, He,
mini-batches of 64, 5000 epochs), ``n_seeds`` seeds per run, schedules from
``jbp.schedules`` with ``steps_per_epoch = 5`` so "epoch" means what the notebook means.
(The notebook updates α after each epoch, so its epoch e runs with the value for e − 1;
here epoch e runs with the value for e. The difference is one epoch in 5000.)

Second part: constant vs inverse-time vs exponential vs inverse-sqrt vs staircase vs
piecewise ("manual") decay, mini-batch SGD on a Fashion-MNIST subset; the final training
cost and test accuracy of each.

Run: ``python -m experiments.lr_decay [--quick] [--out DIR]``.
"""

import dataclasses
import sys

import numpy as np

import jbp
from experiments import common

NAME = "lr_decay"


@dataclasses.dataclass(frozen=True)
class Config:
    # --- moons (the notebook's §7 runs)
    epochs: int = 5000  # num_epochs=5000
    batch_size: int = 64  # mini_batch_size = 64: 5 steps per epoch on 300 examples
    decay_rate: float = 1.0  # model(..., decay_rate=1)
    time_interval: int = 1000  # schedule_lr_decay(..., time_interval=1000)
    # (name, optimizer, α₀, time_interval): §7.1 decays every epoch, §7.3 every 1000
    runs: tuple = (
        ("gd, every epoch", "sgd", 0.1, 1),
        ("gd, every 1000", "sgd", 0.1, 1000),
        ("momentum, every 1000", "momentum", 0.1, 1000),
        ("adam, every 1000", "adam", 0.01, 1000),
    )
    n_seeds: int = 10  # the notebook has one run; mean and spread over 10 here
    # --- Fashion-MNIST schedules (reduced for the shared 2-core budget; see README)
    fm_train: int = 8_000  # training examples (fixed random subset)
    fm_test: int = 2_000  # test examples
    fm_hidden: int = 64  # one hidden relu layer
    fm_epochs: int = 10  # epochs per schedule
    fm_seeds: int = 2  # seeds per schedule
    fm_lr0: float = 0.2  # large enough that constant-lr SGD stays noisy
    fm_batch: int = 64  # mini-batch size
    fm_only: tuple = ()  # run only the schedules whose label starts with one of these (() = all)


QUICK = Config(
    runs=(("gd, every epoch", "sgd", 0.1, 1), ("gd, every 1000", "sgd", 0.1, 1000)),
    n_seeds=3,
    fm_train=1_000,
    fm_test=500,
    fm_hidden=16,
    fm_epochs=3,
    fm_seeds=1,
    fm_only=("constant", "staircase"),
)


def moons(cfg):
    ds = jbp.data.load("moons")
    net = jbp.MLP(
        (2, 5, 2, 1), ("relu", "relu"), "sigmoid", "binary_cross_entropy", initializer="he"
    )
    spe = -(-len(ds.y_train) // cfg.batch_size)  # steps per epoch: ceil(300 / 64) = 5
    out, curves = {}, {}
    for label, opt_name, lr0, interval in cfg.runs:
        sched = jbp.schedules.inverse_time(
            lr0, cfg.decay_rate, steps_per_epoch=spe, time_interval=interval
        )
        opt, source = common.optimizer(opt_name, sched)
        states, hist = common.fit_seeds(
            net, opt, ds, batch_size=cfg.batch_size, epochs=cfg.epochs, seeds=range(cfg.n_seeds)
        )
        acc = common.accuracy_per_seed(net, states, ds.x_train, ds.y_train)
        cost = hist["train_loss"]
        out[label] = {
            "optimizer": opt_name,
            "implementation": source,
            "lr0": lr0,
            "time_interval": interval,
            "train_accuracy": acc.tolist(),
            "train_accuracy_mean": float(acc.mean()),
            "train_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "train_accuracy_min": float(acc.min()),
            "train_accuracy_max": float(acc.max()),
            # the notebook's §7.1 table: cost and α at epochs 0, 1000, …, 5000
            "cost_mean_at": {
                int(e): float(cost[min(e, cfg.epochs - 1)].mean())
                for e in range(0, cfg.epochs + 1, 1000)
            },
            "lr_at": {
                int(e): float(hist["lr"][min(e, cfg.epochs - 1), 0])
                for e in range(0, cfg.epochs + 1, 1000)
            },
        }
        curves[label] = (cost, hist["lr"][:, 0])
        print(
            f"moons {label}: {acc.mean():.3f} ± {out[label]['train_accuracy_std']:.3f}, "
            f"cost {cost[0].mean():.3f} -> {cost[-1].mean():.3f}",
            file=sys.stderr,
        )
    return out, curves


def fashion_schedules(cfg, steps_per_epoch):
    lr0, e = cfg.fm_lr0, cfg.fm_epochs
    s = jbp.schedules
    return {
        "constant": s.constant(lr0),
        "inverse-time (rate 0.5)": s.inverse_time(lr0, 0.5, steps_per_epoch),
        "exponential (0.8^epoch)": s.exponential(lr0, 0.8, steps_per_epoch),
        "inverse-sqrt": s.inverse_sqrt(lr0, 1.0, steps_per_epoch),
        f"staircase (×0.5 every {max(1, e // 3)})": s.staircase(
            lr0, 0.5, max(1, e // 3), steps_per_epoch
        ),
        "piecewise (÷4 at 40 %, ÷20 at 70 %)": s.piecewise(
            [max(1, int(0.4 * e)), max(2, int(0.7 * e))], [lr0, lr0 / 4, lr0 / 20], steps_per_epoch
        ),
    }


def fashion(cfg):
    data_name, ds = common.image_data(cfg.fm_train, cfg.fm_test)
    n_in, n_out = ds.x_train.shape[1], int(ds.y_train.max()) + 1
    net = jbp.MLP(
        (n_in, cfg.fm_hidden, n_out), "relu", "softmax", "cross_entropy", initializer="he"
    )
    spe = -(-len(ds.y_train) // cfg.fm_batch)
    out, curves = {"data": data_name}, {}
    for label, sched in fashion_schedules(cfg, spe).items():
        if cfg.fm_only and not label.startswith(cfg.fm_only):
            continue
        opt, source = common.optimizer("sgd", sched)
        states, hist = common.fit_seeds(
            net, opt, ds, batch_size=cfg.fm_batch, epochs=cfg.fm_epochs, seeds=range(cfg.fm_seeds)
        )
        full_loss = np.mean(
            [
                float(net.loss(p, ds.x_train, ds.y_train))
                for p in _unstack(states.params, cfg.fm_seeds)
            ]
        )
        out[label] = {
            "implementation": source,
            "train_loss_end_mean": full_loss,  # the whole training set, after the last epoch
            "test_accuracy_final_mean": float(hist["test_accuracy"][-1].mean()),
            "test_loss_final_mean": float(hist["test_loss"][-1].mean()),
            "lr_per_epoch": hist["lr"][:, 0].tolist(),
        }
        curves[label] = (hist["train_loss"].mean(axis=1), hist["lr"][:, 0])
        print(
            f"{data_name} {label}: train loss {full_loss:.4f}, test acc "
            f"{out[label]['test_accuracy_final_mean']:.4f}",
            file=sys.stderr,
        )
    return out, curves


def _unstack(tree, n):
    import jax

    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


def plot(cfg, out, curves, fm_out, fm_curves):
    fig, axes = common.figure(1, 3, size=(5.0, 4.0))
    colors = ["tab:gray", "tab:blue", "tab:orange", "tab:red"]
    ep = np.arange(1, cfg.epochs + 1)
    ax, ax_lr = axes[0, 0], axes[0, 1]
    for (label, (cost, lr)), c in zip(curves.items(), colors, strict=False):
        o = out[label]
        ax.plot(
            ep,
            cost.mean(axis=1),
            color=c,
            label=f"{label}: {o['train_accuracy_mean']:.1%} ± {o['train_accuracy_std']:.1%}",
        )
        ax_lr.plot(
            ep,
            lr,
            color=c,
            ls="--" if "momentum" in label else "-",  # GD's line under it
            label=f"{label} (α₀ = {o['lr0']:g})",
        )
    ax.set_ylim(0, 0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cost (mean over seeds)")
    ax.set_title("Moons: cost (legend: train accuracy,\nmean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=7)
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate α")
    ax_lr.set_title("α₀ / (1 + ⌊epoch / interval⌋)", fontsize=10)
    ax_lr.legend(fontsize=7)

    ax = axes[0, 2]
    for label, (cost, _) in fm_curves.items():
        ax.plot(
            np.arange(1, len(cost) + 1),
            cost,
            marker="o",
            ms=3,
            label=f"{label}: acc {fm_out[label]['test_accuracy_final_mean']:.3f}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("training cost (epoch mean)")
    ax.set_title(f"{fm_out['data']}, SGD α₀ = {cfg.fm_lr0} (legend: test acc)", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def main(argv=None):
    args = common.parse_args(argv, __doc__)
    cfg = QUICK if args.quick else Config()
    out, curves = moons(cfg)
    fm_out, fm_curves = fashion(cfg)
    every, fixed = out["gd, every epoch"], out["gd, every 1000"]
    claims = {
        # §7.1: α after 1000 epochs is α₀/1001 ≈ 1e-4 and the cost barely moves
        "every_epoch_lr_at_1000_is_1e-4": abs(every["lr_at"][1000] - 0.1 / 1001) < 1e-6
        if cfg.epochs > 1000
        else None,
        # after epoch 1000 the cost moves by less than 0.05 (the notebook: 0.662 -> 0.655)
        "every_epoch_cost_stalls": every["cost_mean_at"][1000]
        - every["cost_mean_at"][cfg.epochs // 1000 * 1000]
        < 0.05,
        "fixed_interval_beats_every_epoch_by_10_points": fixed["train_accuracy_mean"]
        - every["train_accuracy_mean"]
        >= 0.10,
        # reported, not asserted in CI: the notebook's single run reached 94.6 %
        "fixed_interval_gd_above_90": fixed["train_accuracy_mean"] > 0.90,
    }
    fig = plot(cfg, out, curves, fm_out, fm_curves)
    return common.save(
        args.out,
        NAME,
        {"config": cfg, "quick": args.quick, "moons": out, "fashion": fm_out, "claims": claims},
        fig,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
