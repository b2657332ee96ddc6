"""What the built-in zoo holds: one ``ModelSpec`` per model (the default zoo and a tiny one for tests)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ModelSpec(BaseModel):
    """How to train one zoo model. Every field but ``id``/``family`` enters the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    arch: str
    dataset: str
    condition: str = "all"
    seed: int = 0
    epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    width: int = 0
    base: str | None = None
    family: str = "cross_arch"


#: MNIST-1D CNNs train as in Greydanus (2020): lr 1e-2, batch 100, long schedule (about 94% test).
_CNN_1D = {"epochs": 150, "lr": 1e-2, "batch_size": 100}
#: Digits CNNs have 64 channels (about 92k parameters): the larger model of the MLP/CNN pairs.
_CNN_2D = {"width": 64}


def default_specs() -> list[ModelSpec]:
    """The default zoo (about 20 models, a few minutes on 2 cores).

    * cross-architecture: MLP, CNN and transformer on the same task, for both datasets;
    * related task distributions: disjoint class subsets, clean vs time-reversed signals;
    * seeded twins and a triplet of one architecture on one task (permutation alignment, C2M3);
    * a shared-base family: a CNN pretrained on clean MNIST-1D, then four fine-tunes, each on
      its own input transformation or labelling with its own head (task arithmetic / TIES / TSV).
    """
    s: list[ModelSpec] = []
    for ds in ("mnist1d", "digits"):
        s += [
            ModelSpec(id=f"mlp-{ds}", arch="mlp", dataset=ds),
            ModelSpec(id=f"cnn-{ds}", arch="cnn", dataset=ds, **(_CNN_1D if ds == "mnist1d" else _CNN_2D)),
            ModelSpec(id=f"tf-{ds}", arch="transformer", dataset=ds),
        ]
    s += [
        ModelSpec(id="cnn-mnist1d-lo", arch="cnn", dataset="mnist1d", condition="classes_0_4", family="related", **_CNN_1D),
        ModelSpec(id="tf-mnist1d-hi", arch="transformer", dataset="mnist1d", condition="classes_5_9", family="related"),
        ModelSpec(id="mlp-digits-lo", arch="mlp", dataset="digits", condition="classes_0_4", family="related"),
        ModelSpec(id="cnn-digits-hi", arch="cnn", dataset="digits", condition="classes_5_9", family="related", **_CNN_2D),
        ModelSpec(id="tf-mnist1d-rev", arch="transformer", dataset="mnist1d", condition="reverse", family="related"),
    ]
    s += [ModelSpec(id=f"mlp-digits-s{k}", arch="mlp", dataset="digits", seed=k, family="twins") for k in (1, 2, 3)]
    s += [ModelSpec(id=f"cnn-mnist1d-s{k}", arch="cnn", dataset="mnist1d", seed=k, family="twins", **_CNN_1D) for k in (1, 2)]
    s.append(ModelSpec(id="base-mnist1d", arch="cnn", dataset="mnist1d", condition="mixed", seed=10, width=64,
                       family="shared_base", **_CNN_1D))
    for cond in ("reverse", "negate", "shift", "noise", "parity"):
        s.append(
            ModelSpec(
                id=f"ft-mnist1d-{cond}", arch="cnn", dataset="mnist1d", condition=cond, seed=11, width=64,
                epochs=20, lr=1e-3, batch_size=100, base="base-mnist1d", family="shared_base",
            )
        )
    return s


def tiny_specs() -> list[ModelSpec]:
    """A zoo on digits that builds in seconds, covering every family, for tests."""
    return [
        ModelSpec(id="mlp-digits", arch="mlp", dataset="digits", epochs=15),
        ModelSpec(id="cnn-digits", arch="cnn", dataset="digits", epochs=8),
        ModelSpec(id="tf-digits", arch="transformer", dataset="digits", epochs=6),
        ModelSpec(id="mlp-digits-lo", arch="mlp", dataset="digits", condition="classes_0_4", epochs=15, family="related"),
        ModelSpec(id="cnn-digits-hi", arch="cnn", dataset="digits", condition="classes_5_9", epochs=8, family="related"),
        ModelSpec(id="mlp-digits-s1", arch="mlp", dataset="digits", seed=1, epochs=15, family="twins"),
        ModelSpec(id="mlp-digits-s2", arch="mlp", dataset="digits", seed=2, epochs=15, family="twins"),
        ModelSpec(id="base-digits", arch="mlp", dataset="digits", seed=10, epochs=15, family="shared_base"),
        *(
            ModelSpec(id=f"ft-digits-{c}", arch="mlp", dataset="digits", condition=c, seed=11, epochs=8, lr=1e-3,
                      base="base-digits", family="shared_base")
            for c in ("rot90", "flip", "invert", "parity")
        ),
    ]
