"""Methods without Ray: validation of method × task × ZeRO combinations, sweepable method parameters, parameter
groups for layer-wise lr decay and gradual unfreezing, bottleneck adapters and 4-bit QLoRA layers."""

from __future__ import annotations

import pytest
import torch

from rayft.config import build_config
from rayft.config.validate import check_sweep
from rayft.errors import ConfigError
from rayft.methods import METHODS, MethodContext, get_method, method_problems, method_summary
from rayft.train import engine as E
from rayft.train.recipe import Recipe
from tests.support import cls_config


def _cfg(tiny_bert, sentiment_csv, tmp_path, method: dict, **sections):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, **sections)
    raw["method"] = method
    return build_config(raw)


def _ctx(task_type: str = "SEQ_CLS", stage: int = 2) -> MethodContext:
    return MethodContext(task="t", peft_task_type=task_type, zero_stage=stage, num_workers=2, dtype="float32")


def test_every_method_declares_how_it_is_stored_and_served():
    for name in METHODS:
        method = get_method(name)
        assert method.artifact in ("adapter", "full", "modules")
        assert method.is_peft == (method.artifact == "adapter")
        assert not method.hot_swappable or method.artifact == "adapter"
    assert {n for n in METHODS if get_method(n).hot_swappable} == {"lora", "dora"}


@pytest.mark.parametrize("name", ["prompt", "ptuning"])
@pytest.mark.parametrize("task_type", ["TOKEN_CLS", "QUESTION_ANS"])
def test_prompt_methods_are_refused_on_token_level_heads(name, task_type):
    method = get_method(name)
    problems = method_problems(method, method.params(), _ctx(task_type))
    assert [p[0] for p in problems] == ["method.name"]
    assert "prepends virtual tokens" in problems[0][2] and "'prefix'" in problems[0][2]
    assert method_problems(method, method.params(), _ctx("SEQ_CLS")) == []
    assert method_problems(get_method("prefix"), get_method("prefix").params(), _ctx(task_type)) == []


def test_qlora_is_refused_at_zero3_and_without_bitsandbytes(tiny_bert, sentiment_csv, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "qlora"}, scaling={"zero_stage": 3})
    assert [e.path for e in err.value.errors] == ["scaling.zero_stage"]
    assert "ZeRO stage 0-2" in str(err.value) and "lora" in str(err.value)
    _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "qlora"}, scaling={"zero_stage": 2})  # accepted

    import rayft.methods.qlora as qlora

    monkeypatch.setattr(qlora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "qlora"})
    assert "needs bitsandbytes" in str(err.value) and 'rayft[qlora]' in str(err.value)


def test_method_parameter_errors_name_the_field(tiny_bert, sentiment_csv, tmp_path):
    with pytest.raises(ConfigError) as err:
        _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "adapter", "size": 0, "placement": "middle"})
    assert sorted(e.path for e in err.value.errors) == ["method.placement", "method.size"]
    with pytest.raises(ConfigError) as err:
        _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "lora", "layer_decay": 0.9})
    assert "unknown parameter for method 'lora'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "ia3", "target_modules": ["key"],
                                                  "feedforward_modules": ["output.dense"]})
    assert [e.path for e in err.value.errors] == ["method.feedforward_modules"]


@pytest.mark.parametrize("method,space", [
    ("dora", {"method.r": {"int": [2, 16]}, "method.alpha": {"uniform": [4, 32]},
              "method.dropout": {"uniform": [0.0, 0.2]},
              "method.target_modules": {"choice": [["query"], "all-linear"]}}),
    ("prompt", {"method.num_virtual_tokens": {"int": [4, 32]}}),
    ("adapter", {"method.size": {"choice": [8, 16, 64]}, "method.placement": {"choice": ["houlsby", "pfeiffer"]}}),
    ("unfreeze", {"method.every": {"int": [1, 3]}, "method.layer_decay": {"uniform": [0.6, 1.0]}}),
    ("full", {"method.layer_decay": {"uniform": [0.7, 0.95]}, "method.head_lr": {"loguniform": [1e-4, 1e-2]}}),
])
def test_method_parameters_are_searchable(method, space):
    assert check_sweep({"method": {"name": method}, "sweep": {"space": space}}) == []


def test_sweep_rejects_parameters_and_values_a_method_does_not_take():
    errors = check_sweep({"method": {"name": "lora"}, "sweep": {"space": {"method.size": {"int": [4, 8]}}}})
    assert [e.path for e in errors] == ["sweep.space.method.size"] and "method.r" in errors[0].expected
    errors = check_sweep({"method": {"name": "adapter"}, "sweep": {"space": {"method.size": {"choice": [0, 8]}}}})
    assert [(e.path, e.value) for e in errors] == [("sweep.space.method.size", 0)]


def test_layer_decay_and_head_lr_make_one_group_per_depth(tiny_bert, sentiment_csv, tmp_path):
    from rayft.data import prepare_data

    cfg = _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "full", "layer_decay": 0.5, "head_lr": 0.1},
               train={"lr": 1e-2, "weight_decay": 0.01})
    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, prepare_data(cfg))
    groups = E.param_groups(model, recipe)
    lrs = {(g["depth"], g["weight_decay"] > 0): g["lr"] for g in groups}
    assert lrs[(0, True)] == pytest.approx(1e-2 * 0.5 ** 3)  # embeddings, 2 blocks below the top
    assert lrs[(1, True)] == pytest.approx(1e-2 * 0.5 ** 2) and lrs[(2, True)] == pytest.approx(1e-2 * 0.5)
    head = [g for g in groups if g["lr"] == pytest.approx(0.1)]
    assert {id(p) for g in head for p in g["params"]} == {id(model.classifier.weight), id(model.classifier.bias)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    biases = [g for g in groups if any(p is model.bert.encoder.layer[0].output.dense.bias for p in g["params"])]
    assert biases[0]["weight_decay"] == 0.0


def test_gradual_unfreezing_opens_one_block_at_a_time(tiny_bert, sentiment_csv, tmp_path):
    from transformers import get_scheduler

    from rayft.data import prepare_data

    cfg = _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": "unfreeze", "every": 2, "unit": "epoch"},
               train={"lr": 1e-2, "scheduler": "constant"})
    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, prepare_data(cfg))
    info = method_summary(get_method("unfreeze"), model, recipe.method_params)
    assert 0 < info["trainable_pct"] < 10  # the head (and pooler) only, at the start
    optimizer = torch.optim.AdamW(E.param_groups(model, recipe), lr=1e-2)
    sched = E.gate_schedule(get_scheduler("constant", optimizer), model, recipe, steps_per_epoch=3)
    open_depths = []
    for _ in range(13):  # 2 blocks + embeddings open at epochs 2, 4, 6 = steps 6, 12, 18
        open_depths.append(sorted({g["depth"] for g in optimizer.param_groups if g["lr"] > 0}))
        optimizer.step()
        sched.step()
    assert open_depths[0] == open_depths[5] == [3] and open_depths[6] == [2, 3] and open_depths[12] == [1, 2, 3]
    import pickle

    pickle.dumps(sched.state_dict())  # DeepSpeed checkpoints the scheduler's state with torch.save


def test_bottleneck_adapters_start_at_the_base_and_reload(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    method = get_method("adapter")
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    expected = base(input_ids=ids).logits
    for placement, per_block in (("pfeiffer", 1), ("houlsby", 2)):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        model = method.apply(model, method.params(placement=placement, size=4), "SEQ_CLS").eval()
        assert len(model.bottleneck_adapters) == 2 * per_block
        assert torch.allclose(model(input_ids=ids).logits, expected)  # zero-initialized up-projection
    torch.nn.init.normal_(model.bottleneck_adapters["bert__encoder__layer__1__output__dense"].up.weight)
    trained = model(input_ids=ids).logits
    assert not torch.allclose(trained, expected)
    from rayft.methods.adapter import adapters_disabled

    with adapters_disabled(model):
        assert torch.allclose(model(input_ids=ids).logits, expected)  # the base, e.g. as a frozen reference
    method.save(model, str(tmp_path / "a"))
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert torch.allclose(method.load(fresh, str(tmp_path / "a")).eval()(input_ids=ids).logits, trained)


def test_qlora_quantizes_the_backbone_and_counts_logical_sizes(tiny_bert):
    import bitsandbytes as bnb
    from transformers import AutoModelForSequenceClassification

    method = get_method("qlora")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    total = sum(p.numel() for p in model.parameters())
    model = method.apply(model, method.params(r=2, target_modules=["query"]), "SEQ_CLS")
    inner = model.base_model.model
    assert isinstance(inner.bert.encoder.layer[0].intermediate.dense, bnb.nn.Linear4bit)
    assert type(inner.classifier.original_module) is torch.nn.Linear  # the head stays full precision
    info = method_summary(method, model, method.params())
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    head = sum(p.numel() for p in inner.classifier.modules_to_save.parameters())
    assert info["total_params"] == total + lora + head and info["trainable_params"] == lora + head


def test_server_hot_swaps_lora_and_serves_other_methods_on_their_own(tmp_path, tiny_bert, sentiment_csv):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rayft.config.schema import ExperimentConfig
    from rayft.models import fingerprint
    from rayft.serve import infer, runtime
    from rayft.store import AdapterStore, Manifest
    from rayft.tasks.sequence_classification import predict_proba

    store, texts = AdapterStore(tmp_path / "store"), ["great fun", "dull and boring"]
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    want = {}
    for name, params in [("lora", {"r": 2, "target_modules": ["query"]}), ("prompt", {"num_virtual_tokens": 3}),
                         ("adapter", {"size": 4})]:
        raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
        raw["method"] = {"name": name, **params}
        config = ExperimentConfig.model_validate(raw)
        method = get_method(name)
        torch.manual_seed(1)
        model = method.apply(AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
                             method.params(**params), "SEQ_CLS")
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.2)  # "trained": outputs differ from the base
        want[name] = predict_proba(model.eval(), tok, texts, 32)
        if method.artifact == "modules":
            method.save(model, str(tmp_path / name))
        else:
            model.save_pretrained(str(tmp_path / name))
        swap = None if name == "lora" else method.hot_swappable  # a manifest from before the flag existed
        store.put(tmp_path / name, Manifest(name, method.artifact, str(tiny_bert), fingerprint(str(tiny_bert)), name,
                                            "sequence_classification", ["neg", "pos"], {},
                                            config.model_dump(mode="json"), max_length=32, hot_swappable=swap))
    pool = runtime.ModelPool(store)
    for name in want:
        loaded = pool.load(f"{name}@x")
        assert (loaded.entry is not None) == (name == "lora")  # only LoRA attaches to the shared base
        rows = infer.classify(loaded, texts)
        got = torch.tensor([[r["probabilities"]["neg"], r["probabilities"]["pos"]] for r in rows])
        assert torch.allclose(got, want[name], atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_models_train_with_dropout_from_the_first_step(tiny_bert, sentiment_csv, tmp_path, method):
    """from_pretrained hands back an eval-mode base: without .train() dropout stayed off until the first eval."""
    from rayft.data import prepare_data

    cfg = _cfg(tiny_bert, sentiment_csv, tmp_path, {"name": method})
    model = E.build_model(Recipe.of(cfg), prepare_data(cfg))
    assert all(m.training for m in model.modules())
