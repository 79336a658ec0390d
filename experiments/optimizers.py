"""Optimizers: gradient descent, momentum, RMSprop and Adam on the moons set, then Fashion-MNIST.

Claim (seed chapter; deeplearning.ai *Improving Deep Neural Networks*, week 2 programming
assignment "Optimization methods", §6 and the summary table §6.4): on the moons set
(``make_moons(300, noise=0.2)`` after ``np.random.seed(3)``), a [2, 5, 2, 1] network with
relu, relu, sigmoid and He initialisation, trained with mini-batches of 64 for 5000 epochs at
learning rate 0.0007, reaches a training accuracy of > 71 % (≈ 72–80 %) with gradient
descent and with momentum (β = 0.9; "its impact is almost negligible" at this small learning
rate) and > 94 % with Adam (β₁ = 0.9, β₂ = 0.999, ε = 1e-8): Adam converges much faster.

The notebook trains one network from one NumPy seed; here every optimizer trains the same
``n_seeds`` networks (``jax.random.key(seed)`` for the He initialisation and the shuffles),
and the mean, standard deviation, minimum and maximum over seeds are reported. All seeds run
as one compiled program (``experiments.common.fit_seeds``: vmap of ``jbp.train.make_epoch``,
scanned over epochs). Mini-batches follow the notebook: a fresh shuffle every epoch, four
batches of 64 and a last one of 44, the cost averaged per example.

Second part: the same four optimizers on a Fashion-MNIST subset (784-100-10, relu, softmax,
He), first all at Adam's learning rate (the notebook's protocol: one learning rate for all),
then gradient descent and momentum at a learning rate that suits them.

Run: ``python -m experiments.optimizers [--quick] [--out DIR]``.
"""

import dataclasses
import sys

import jax
import numpy as np

import jbp
from experiments import common

NAME = "optimizers"


@dataclasses.dataclass(frozen=True)
class Config:
    # --- moons, exactly the notebook's settings
    sizes: tuple = (2, 5, 2, 1)  # layers_dims = [train_X.shape[0], 5, 2, 1]
    lr: float = 0.0007  # model(..., learning_rate=0.0007)
    batch_size: int = 64  # mini_batch_size = 64
    epochs: int = 5000  # num_epochs = 5000
    optimizers: tuple = ("sgd", "momentum", "rmsprop", "adam")  # RMSprop added (β = 0.9)
    n_seeds: int = 10  # the notebook has one run; we report mean and spread over 10
    # --- Fashion-MNIST (reduced to fit the shared 2-core budget; see README)
    fm_train: int = 10_000  # training examples (a fixed random subset of the 60 000)
    fm_test: int = 2_000  # test examples (subset of the 10 000)
    fm_hidden: int = 100  # one hidden relu layer
    fm_epochs: int = 10  # epochs per run
    fm_seeds: int = 2  # seeds per optimizer
    fm_lr_same: float = 1e-3  # every optimizer at Adam's usual learning rate
    fm_lr_gd: float | None = 0.1  # GD and momentum again at a learning rate that suits them


# CI: GD against Adam only, 3 seeds; a tiny Fashion-MNIST run at the shared learning rate
QUICK = Config(
    optimizers=("sgd", "adam"),
    n_seeds=3,
    fm_train=2_000,
    fm_test=500,
    fm_epochs=3,
    fm_seeds=1,
    fm_hidden=32,
    fm_lr_gd=None,
)


def moons(cfg):
    ds = jbp.data.load("moons")
    net = jbp.MLP(cfg.sizes, ("relu", "relu"), "sigmoid", "binary_cross_entropy", initializer="he")
    seeds = list(range(cfg.n_seeds))
    out, curves, params = {}, {}, {}
    for name in cfg.optimizers:
        opt, source = common.optimizer(name, cfg.lr)
        with common.Timer() as t:
            states, hist = common.fit_seeds(
                net, opt, ds, batch_size=cfg.batch_size, epochs=cfg.epochs, seeds=seeds
            )
        acc = common.accuracy_per_seed(net, states, ds.x_train, ds.y_train)
        test_acc = common.accuracy_per_seed(net, states, ds.x_test, ds.y_test)
        out[name] = {
            "implementation": source,
            "train_accuracy": acc.tolist(),
            "train_accuracy_mean": float(acc.mean()),
            "train_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "train_accuracy_min": float(acc.min()),
            "train_accuracy_max": float(acc.max()),
            "test_accuracy_mean": float(test_acc.mean()),
            "final_cost_mean": float(hist["train_loss"][-1].mean()),
            "seconds_all_seeds": t.seconds,
        }
        curves[name] = hist["train_loss"]
        params[name] = jax.tree.map(lambda a: a[0], states.params)  # seed 0, for the plot
        print(
            f"moons {name}: {acc.mean():.3f} ± {out[name]['train_accuracy_std']:.3f} "
            f"[{acc.min():.3f}, {acc.max():.3f}]",
            file=sys.stderr,
        )
    return ds, net, out, curves, params


def fashion(cfg):
    data_name, ds = common.image_data(cfg.fm_train, cfg.fm_test)
    n_in, n_out = ds.x_train.shape[1], int(ds.y_train.max()) + 1
    net = jbp.MLP(
        (n_in, cfg.fm_hidden, n_out), "relu", "softmax", "cross_entropy", initializer="he"
    )
    runs = [(n, cfg.fm_lr_same) for n in cfg.optimizers]
    if cfg.fm_lr_gd is not None:
        runs += [(n, cfg.fm_lr_gd) for n in cfg.optimizers if n in ("sgd", "momentum")]
    out, curves = {"data": data_name}, {}
    for name, lr in runs:
        opt, source = common.optimizer(name, lr)
        states, hist = common.fit_seeds(
            net, opt, ds, batch_size=cfg.batch_size, epochs=cfg.fm_epochs, seeds=range(cfg.fm_seeds)
        )
        key = f"{name}@{lr:g}"
        out[key] = {
            "implementation": source,
            "lr": lr,
            "test_accuracy_final_mean": float(hist["test_accuracy"][-1].mean()),
            "train_loss_final_mean": float(hist["train_loss"][-1].mean()),
            "test_loss_final_mean": float(hist["test_loss"][-1].mean()),
        }
        curves[key] = hist["train_loss"].mean(axis=1)
        print(
            f"{data_name} {key}: test acc {out[key]['test_accuracy_final_mean']:.4f}",
            file=sys.stderr,
        )
    return out, curves


def plot(cfg, ds, net, out, curves, params, fm_out, fm_curves):
    fig, axes = common.figure(2, 3, size=(4.6, 4.0))
    xx, yy = np.meshgrid(np.linspace(-1.5, 2.5, 200), np.linspace(-1.0, 1.5, 160))
    grid = np.c_[xx.ravel(), yy.ravel()].astype(np.float32)
    panels = [axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 0]]
    for ax, name in zip(panels, cfg.optimizers, strict=False):
        p = np.asarray(net.apply(params[name], grid))[:, 0].reshape(xx.shape)
        ax.contourf(xx, yy, p > 0.5, levels=[-0.5, 0.5, 1.5], colors=["#f4c2c2", "#c2d4f4"])
        ax.scatter(
            ds.x_train[:, 0],
            ds.x_train[:, 1],
            c=ds.y_train,
            cmap="bwr_r",
            s=8,
            edgecolors="k",
            linewidths=0.3,
        )
        acc0 = out[name]["train_accuracy"][0]
        ax.set_title(
            f"{common.LABELS[name]}, seed 0: train acc {acc0:.1%}\n"
            f"({len(out[name]['train_accuracy'])} seeds: "
            f"{out[name]['train_accuracy_mean']:.1%} ± "
            f"{out[name]['train_accuracy_std']:.1%})",
            fontsize=9,
        )
        ax.set_xlim(-1.5, 2.5)
        ax.set_ylim(-1.0, 1.5)
    for ax in panels[len(cfg.optimizers) :]:
        ax.axis("off")

    ax = axes[1, 1]
    ep = np.arange(1, cfg.epochs + 1)
    for name in cfg.optimizers:
        c = curves[name]
        ls = "--" if name == "momentum" else "-"  # momentum lies on top of GD
        ax.plot(ep, c.mean(axis=1), ls, color=common.COLORS[name], label=common.LABELS[name])
        ax.fill_between(ep, c.min(axis=1), c.max(axis=1), color=common.COLORS[name], alpha=0.15)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cost (mean per example)")
    ax.set_title(f"Moons, lr {cfg.lr}: mean over seeds\n(band: min–max)", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    for key, c in fm_curves.items():
        name, lr = key.split("@")
        ax.plot(
            np.arange(1, len(c) + 1),
            c,
            "-" if float(lr) == cfg.fm_lr_same else ":",
            marker="o",
            ms=3,
            color=common.COLORS[name],
            label=f"{common.LABELS[name]}, lr {lr}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("training cost (epoch mean)")
    ax.set_title(f"{fm_out['data']}: {cfg.fm_train} train examples", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def main(argv=None):
    args = common.parse_args(argv, __doc__)
    cfg = QUICK if args.quick else Config()
    ds, net, out, curves, params = moons(cfg)
    fm_out, fm_curves = fashion(cfg)
    acc = {n: out[n]["train_accuracy_mean"] for n in cfg.optimizers}
    claims = {
        "adam_beats_gd_by_10_points": acc["adam"] - acc["sgd"] >= 0.10,
        "adam_above_90": acc["adam"] > 0.90,
        "gd_between_70_and_90": 0.70 <= acc["sgd"] <= 0.90,
        "fashion_adam_beats_gd_same_lr": fm_out[f"adam@{cfg.fm_lr_same:g}"]["train_loss_final_mean"]
        < fm_out[f"sgd@{cfg.fm_lr_same:g}"]["train_loss_final_mean"],
    }
    if "momentum" in acc:
        claims["momentum_close_to_gd"] = abs(acc["momentum"] - acc["sgd"]) < 0.03
    fig = plot(cfg, ds, net, out, curves, params, fm_out, fm_curves)
    return common.save(
        args.out,
        NAME,
        {"config": cfg, "quick": args.quick, "moons": out, "fashion": fm_out, "claims": claims},
        fig,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
