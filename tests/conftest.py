"""Test-wide settings: one torch thread, passive OpenMP waits, a private cache, the tiny zoo."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session gets its own cache dir (``EVOMERGE_TEST_CACHE`` reuses one across sessions)."""
    os.environ["EVOMERGE_CACHE"] = os.environ.get("EVOMERGE_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_zoo(_private_cache: None):
    """A zoo on digits covering every family (cross-arch, related, twins, shared base), built in seconds."""
    from evomerge.zoo.catalog import Zoo
    from evomerge.zoo.specs import tiny_specs

    zoo = Zoo(seed=0, specs=tiny_specs())
    zoo.build(workers=1)
    return zoo


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    """The LM family in miniature (``tiny_family``: four Llama fine-tunes of a base and a GPT-2), built in
    seconds; ``trained`` holds the training seconds of each model."""
    from evomerge.zoo.lm.catalog import LMZoo
    from evomerge.zoo.lm.family import tiny_family

    zoo = LMZoo(seed=0, cache_dir_=tmp_path_factory.mktemp("lmcache"), spec=tiny_family())
    zoo.trained = zoo.build(workers=1)
    return zoo
