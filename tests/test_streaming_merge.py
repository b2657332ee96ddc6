"""Streaming merges: lazy sharded reads, the byte-bounded writer, `evomerge merge` on mergekit configs
(tensor parity with mergekit itself), recipe JSON, and bad inputs that exit 2 leaving no output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from evomerge.cli import main
from evomerge.core.merge import merge
from evomerge.core.merge.dare import key_generator
from evomerge.core.merge.generalized import generalized_task_arithmetic, linear
from evomerge.core.merge.ties import elect_sign
from evomerge.errors import UserError
from evomerge.io.tensors import TensorSource
from evomerge.io.writer import ShardedWriter, atomic_folder, parse_size
from llama_fixtures import save_llama_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base, fts = save_llama_family(root, n=3)
    return root, base, fts


def read_folder(path: Path) -> dict[str, torch.Tensor]:
    src = TensorSource(path)
    return {k: src.get(k) for k in src.names()}


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*argv: str) -> int:
    return main(["merge", *map(str, argv), "--no-progress"])


# -- io -------------------------------------------------------------------------------------------
def test_sharded_safetensors_and_bin_read_lazily_in_stored_dtype(tmp_path):
    from transformers import LlamaForCausalLM

    from llama_fixtures import tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "st", max_shard_size="20KB")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "st" / "model.safetensors.index.json").exists()
    st = TensorSource(tmp_path / "st")
    assert len(st.files) > 1
    expect = model.state_dict()
    for src in (st, TensorSource(tmp_path / "bin")):
        assert set(src.names()) == set(expect)
        w = src.get("model.layers.1.mlp.up_proj.weight")
        assert w.dtype == torch.bfloat16 and torch.equal(w, expect["model.layers.1.mlp.up_proj.weight"])
        assert src.info("lm_head.weight").shape == (64, 32)


def test_bin_with_arbitrary_pickle_is_refused(tmp_path):
    torch.save({"w": torch.ones(2), "obj": Path("x")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="weights_only"):
        TensorSource(tmp_path)


def test_writer_respects_budget_and_writes_hf_index(tmp_path):
    tensors = {f"t{i}": torch.full((250,), float(i)) for i in range(10)}  # 1000 bytes each
    with atomic_folder(tmp_path / "out") as tmp:
        w = ShardedWriter(tmp, max_shard_bytes=2500)
        for k, v in tensors.items():
            w.add(k, v)
        files = w.finish()
    assert len(files) == 5 and [f.name for f in files][0] == "model-00001-of-00005.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 10_000 and len(index["weight_map"]) == 10
    for f in (tmp_path / "out").glob("model-*.safetensors"):
        assert f.stat().st_size < 2500 + 1000
    got = read_folder(tmp_path / "out")
    assert all(torch.equal(got[k], v) for k, v in tensors.items())
    assert parse_size("2GiB") == 2**31 and parse_size("500MB") == 500 * 10**6
    with pytest.raises(UserError, match="--max-shard-size"):
        parse_size("lots")


def test_atomic_folder_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


# -- per-tensor maths -----------------------------------------------------------------------------
def test_generalized_task_arithmetic_known_answers():
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, -2.0, 3.0, 1.0]), torch.tensor([1.0, 2.0, -1.0, -1.0])
    # task arithmetic: base + lam * sum w_t tau_t
    got = generalized_task_arithmetic(base, [a.clone(), b.clone()], [0.5, 1.0], [1, 1], lam=2.0)
    torch.testing.assert_close(got, 2 * (0.5 * a + b))
    # TIES consensus with weights 1: signs elected on the sum; entries 1 and 3 tie at exactly 0 and
    # mergekit elects +1 there (evomerge's recipes elect 0 and keep the base)
    got = generalized_task_arithmetic(base, [a.clone(), b.clone()], [1, 1], [1, 1], consensus="sum", normalize=True)
    torch.testing.assert_close(got, torch.tensor([1.0, 2.0, 3.0, 1.0]))
    assert elect_sign(torch.stack([a, b])).tolist() == [1.0, 0.0, 1.0, 0.0]
    # magnitude trim keeps max(1, floor(density * n)) entries: floor(0.6 * 4) = 2
    got = generalized_task_arithmetic(base, [a.clone()], [1], [0.6], sparsify="magnitude")
    torch.testing.assert_close(got, torch.tensor([0.0, -2.0, 3.0, 0.0]))
    torch.testing.assert_close(linear([a, b], [1.0, 3.0]), (a + 3 * b) / 4)


def test_dare_keeps_density_share_and_l1_norm_reproducibly():
    base, x = torch.zeros(20_000), torch.randn(20_000)
    out = [generalized_task_arithmetic(base, [x.clone()], [1], [0.3], sparsify="random", rescale=True,
                                       generators=[key_generator(7, "w", 0)]) for _ in range(2)]  # fmt: skip
    assert torch.equal(out[0], out[1])
    kept = (out[0] != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.02
    torch.testing.assert_close(out[0].abs().sum(), x.abs().sum())


# -- parity with mergekit -------------------------------------------------------------------------
def mergekit_configs(base: Path, fts: list[Path]) -> dict[str, dict]:
    grad = [0.2, 0.5, 1.0]
    return {
        "linear": dict(merge_method="linear", dtype="float32",
                       models=[dict(model=str(f), parameters=dict(weight=w)) for f, w in zip(fts, [1.0, grad, 0.5])]),
        "task_arithmetic": dict(merge_method="task_arithmetic", base_model=str(base), dtype="float32", tokenizer_source="base",
                                parameters=dict(**{"lambda": 0.8}),
                                models=[dict(model=str(f), parameters=dict(weight=w)) for f, w in zip(fts, [0.3, grad, -0.4])]),
        "ties": dict(merge_method="ties", base_model=str(base), dtype="float32",
                     models=[dict(model=str(f), parameters=dict(weight=w, density=[dict(filter="mlp", value=0.3), dict(value=[0.5, 0.9])]))
                             for f, w in zip(fts, [1.0, 0.7, 0.5])]),
        # density 1: DARE's deterministic part (consensus, weights, normalisation); the drops use other RNGs
        "dare_ties": dict(merge_method="dare_ties", base_model=str(base), dtype="float32", parameters=dict(normalize=True),
                          models=[dict(model=str(f), parameters=dict(weight=w, density=1.0)) for f, w in zip(fts, [1.0, 0.4, 0.6])]),
        "dare_linear": dict(merge_method="dare_linear", base_model=str(base), dtype="float32",
                            models=[dict(model=str(f), parameters=dict(weight=w, density=1.0)) for f, w in zip(fts, [0.5, 0.25, 0.25])]),
        "passthrough": dict(merge_method="passthrough", dtype="float32",
                            slices=[dict(sources=[dict(model=str(fts[0]), layer_range=[0, 3])]),
                                    dict(sources=[dict(model=str(fts[1]), layer_range=[1, 4], parameters=dict(scale=[dict(filter="o_proj", value=0.5)]))]),
                                    dict(sources=[dict(model=str(base), layer_range=[3, 4])])]),
    }  # fmt: skip


@pytest.fixture(scope="module")
def parity(family, tmp_path_factory):
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    root, base, fts = family
    work = tmp_path_factory.mktemp("parity")
    results = {}
    for name, cfg in mergekit_configs(base, fts).items():
        path = write_yaml(work / f"{name}.yaml", cfg)
        run_merge(MergeConfiguration.model_validate(cfg), str(work / f"mk-{name}"), MergeOptions(quiet=True, random_seed=0))
        assert run_cli(path, "--out", work / f"ours-{name}") == 0
        results[name] = (read_folder(work / f"mk-{name}"), read_folder(work / f"ours-{name}"), work / f"ours-{name}")
    return results


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "passthrough"])
def test_same_tensors_as_mergekit(parity, name):
    theirs, ours, _ = parity[name]
    assert set(ours) == set(theirs)
    for k in theirs:
        assert ours[k].shape == theirs[k].shape, k
        assert (ours[k].float() - theirs[k].float()).abs().max().item() <= 1e-6, k


def test_passthrough_slices_renumber_layers_and_config(parity, family):
    _, ours, out = parity["passthrough"]
    _, base, fts = family
    src = [read_folder(fts[0]), read_folder(fts[1]), read_folder(base)]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 7
    torch.testing.assert_close(ours["model.layers.2.mlp.up_proj.weight"], src[0]["model.layers.2.mlp.up_proj.weight"])
    torch.testing.assert_close(ours["model.layers.3.mlp.up_proj.weight"], src[1]["model.layers.1.mlp.up_proj.weight"])
    torch.testing.assert_close(ours["model.layers.4.self_attn.o_proj.weight"], 0.5 * src[1]["model.layers.2.self_attn.o_proj.weight"])
    torch.testing.assert_close(ours["model.layers.6.input_layernorm.weight"], src[2]["model.layers.3.input_layernorm.weight"])
    torch.testing.assert_close(ours["lm_head.weight"], src[2]["lm_head.weight"])  # post weights from the last slice


def test_output_loads_with_tokenizer(parity):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = parity["ties"][2]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 3, 64)
    assert (out / "mergekit_config.yml").exists()


# -- recipes, dry run, shards -----------------------------------------------------------------------
def test_recipe_json_tsv_equals_in_memory_merge(family, tmp_path):
    _, base, fts = family
    recipe = {"kind": "weights", "base": str(base), "models": [str(f) for f in fts], "method": "tsv", "params": {"alpha": 0.7}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert run_cli(tmp_path / "r.json", "--out", tmp_path / "out", "--max-shard-size", "30KB") == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    expect = merge("tsv", read_folder(base), [read_folder(f) for f in fts], {"alpha": 0.7})
    got = read_folder(tmp_path / "out")
    assert set(got) == set(expect)
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, msg=k)


def test_dry_run_prints_plan_and_bound_and_writes_nothing(family, tmp_path, capsys):
    root, base, fts = family
    cfg = write_yaml(tmp_path / "c.yaml", mergekit_configs(base, fts)["ties"])
    assert run_cli(cfg, "--out", tmp_path / "out", "--dry-run", "--max-shard-size", "1MB") == 0
    text = capsys.readouterr().out
    assert "expected peak memory" in text and "model.layers.3.mlp.down_proj.weight" in text
    assert not (tmp_path / "out").exists()


def test_bf16_output_dtype(family, tmp_path):
    _, base, fts = family
    cfg = mergekit_configs(base, fts)["task_arithmetic"] | {"dtype": "bfloat16"}
    assert run_cli(write_yaml(tmp_path / "c.yaml", cfg), "--out", tmp_path / "o") == 0
    got = read_folder(tmp_path / "o")
    assert all(v.dtype == torch.bfloat16 for v in got.values())
    assert json.loads((tmp_path / "o" / "config.json").read_text())["dtype"] == "bfloat16"


# -- bad inputs: exit 2, the file or field named, no output folder ------------------------------------
def bad(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert run_cli(*argv, "--out", out) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())
    return err


def test_truncated_shard(family, tmp_path, capsys):
    _, base, fts = family
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(fts[0], broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    cfg = write_yaml(tmp_path / "c.yaml", dict(merge_method="task_arithmetic", base_model=str(base),
                                               models=[dict(model=str(broken), parameters=dict(weight=1.0))]))  # fmt: skip
    bad(tmp_path, capsys, [cfg], "model.safetensors: unreadable safetensors file")


def test_missing_tensor_in_one_source(family, tmp_path, capsys):
    _, base, fts = family
    sd = read_folder(fts[1])
    del sd["model.layers.2.mlp.gate_proj.weight"]
    (tmp_path / "m").mkdir()
    save_file(sd, tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text((fts[1] / "config.json").read_text())
    cfg = write_yaml(tmp_path / "c.yaml", dict(merge_method="linear", models=[dict(model=str(fts[0]), parameters=dict(weight=1)),
                                                                              dict(model=str(tmp_path / "m"), parameters=dict(weight=1))]))  # fmt: skip
    bad(tmp_path, capsys, [cfg], "no tensor 'model.layers.2.mlp.gate_proj.weight'")


def test_mismatched_shapes(family, tmp_path, capsys):
    _, base, fts = family
    sd = read_folder(fts[1])
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    (tmp_path / "m").mkdir()
    save_file(sd, tmp_path / "m" / "model.safetensors")
    cfg = write_yaml(tmp_path / "c.yaml", dict(merge_method="ties", base_model=str(base), models=[dict(model=str(tmp_path / "m"), parameters=dict(weight=1))]))
    bad(tmp_path, capsys, [cfg], "'model.layers.0.mlp.up_proj.weight': shapes differ")


def test_different_vocabularies_need_backbone_only(family, tmp_path, capsys):
    _, base, _ = family
    other_base, (wide,) = save_llama_family(tmp_path / "wide", n=1, vocab_size=80)
    cfg = write_yaml(tmp_path / "c.yaml", dict(merge_method="task_arithmetic", base_model=str(base),
                                               models=[dict(model=str(wide), parameters=dict(weight=0.5))]))  # fmt: skip
    bad(tmp_path, capsys, [cfg], "vocabularies differ")
    assert run_cli(cfg, "--out", tmp_path / "bb", "--backbone-only") == 0
    got, b, w = read_folder(tmp_path / "bb"), read_folder(base), read_folder(wide)
    assert torch.equal(got["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], b["lm_head.weight"])
    k = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(got[k], b[k] + 0.5 * (w[k] - b[k]))
    assert run_cli(cfg, "--out", tmp_path / "kw", "--keep-embeddings-from", wide) == 0
    assert json.loads((tmp_path / "kw" / "config.json").read_text())["vocab_size"] == 80
    assert read_folder(tmp_path / "kw")["lm_head.weight"].shape == (80, 32)


def test_unknown_method_and_field(family, tmp_path, capsys):
    _, base, fts = family
    cfg = write_yaml(tmp_path / "c.yaml", dict(merge_method="slerpy", models=[dict(model=str(fts[0]))]))
    bad(tmp_path, capsys, [cfg], "c.yaml: field 'merge_method'")
    cfg = write_yaml(tmp_path / "c.yaml", dict(merge_method="linear", models=[dict(model=str(fts[0]), paramters=dict(weight=1))]))
    bad(tmp_path, capsys, [cfg], "c.yaml: field 'models.0.paramters'")
    cfg = write_yaml(tmp_path / "c.yaml", dict(merge_method="task_arithmetic", base_model=str(base), models=[dict(model=str(fts[0]))]))
    bad(tmp_path, capsys, [cfg], "field 'parameters.weight'")


def test_merge_pretrained_keeps_lm_head_and_tokenizer(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.hf_merge import merge_pretrained

    _, base, fts = family
    out = merge_pretrained("ties", base, fts, tmp_path / "m", {"density": 0.5}, max_shard_size="40KB")
    expect = merge("ties", read_folder(base), [read_folder(f) for f in fts], {"density": 0.5})
    model = AutoModelForCausalLM.from_pretrained(out)
    got = model.state_dict()
    torch.testing.assert_close(got["lm_head.weight"], expect["lm_head.weight"])
    assert not torch.equal(got["lm_head.weight"], read_folder(base)["lm_head.weight"])
    assert len(AutoTokenizer.from_pretrained(out)) == 64


def test_parameter_settings_resolve_as_in_mergekit():
    mk = pytest.importorskip("mergekit.config")
    from evomerge.io.mergekit_config import MergekitConfig
    from evomerge.recipe.stream import evaluate_setting

    settings = [0.5, [0.0, 1.0], [0.1, 0.4, 0.2, 0.9], [True, False],
                [{"filter": "mlp", "value": [0.2, 0.6]}, {"filter": "*", "value": 0.1}], {"filter": "attn", "value": 3}]  # fmt: skip
    for raw in settings:
        ours = MergekitConfig.model_validate({"merge_method": "linear", "models": [{"model": "a"}], "parameters": {"p": raw}}).parameters["p"]
        theirs = mk.MergeConfiguration.model_validate({"merge_method": "linear", "models": [{"model": "a"}], "parameters": {"p": raw}}).parameters["p"]
        for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
            for t in (0.0, 0.3, 0.5, 2 / 3, 1.0):
                validate = (lambda v: v) if raw == [True, False] else float
                assert evaluate_setting(ours, name, t, validate) == mk.evaluate_setting(name, theirs, t, validate=validate), (raw, name, t)


def test_unavailable_device_is_a_user_error(family, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _, base, fts = family
    cfg = write_yaml(tmp_path / "c.yaml", mergekit_configs(base, fts)["linear"])
    bad(tmp_path, capsys, [cfg, "--device", "cuda"], "--device cuda: no CUDA device")
