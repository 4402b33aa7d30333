"""Serving internals without Ray: mixed-adapter batches, pinning against eviction, streaming text, alias and
registration records, compatibility checks, admin tokens, sweep export, and the eval/promote CLI's errors."""

from __future__ import annotations

import json

import pytest
import torch

from rayft.serve.api import ServeError
from tests.support import REPO, cls_config
from tests.support.serve_helpers import LABELS, cls_adapter, config, manifest, merged_model


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert, sentiment_csv):
    from rayft.store import AdapterStore

    tmp = tmp_path_factory.mktemp("admin")
    st = AdapterStore(tmp / "store")
    cfg = config(cls_config(tiny_bert, sentiment_csv, tmp))
    for i, name in enumerate(["a", "b"]):
        st.put(cls_adapter(tiny_bert, tmp / name, seed=i), manifest(name, tiny_bert, "sequence_classification",
                                                                   cfg, LABELS))
    st.put(merged_model(tiny_bert, tmp / "a", tmp / "merged"),
           manifest("merged", tiny_bert, "sequence_classification", cfg, LABELS, kind="full", method="full"))
    return st


def test_mixed_adapter_batch_matches_one_request_at_a_time(store):
    from rayft.serve import infer, runtime

    pool = runtime.ModelPool(store)
    a, b, f = pool.load("a@1"), pool.load("b@1"), pool.load("merged@1")
    texts = [["great fun", "dull and boring plot"], ["a charming film"], ["tedious", "superb cast", "awful"]]
    items = [(a, texts[0]), (b, texts[1]), (a, texts[2]), (f, texts[0]), (b, texts[2])]
    assert all(lm.acquire() for lm, _ in items)
    model, names = infer._prepare([i for i in items if i[0].entry is not None])
    assert names == [a.adapter] * 2 + [b.adapter] + [a.adapter] * 3 + [b.adapter] * 3  # one mixed forward pass
    batched = infer.classify_many(items)
    for (lm, inputs), rows in zip(items, batched):
        alone = infer.classify(lm, inputs)
        assert [r["label"] for r in rows] == [r["label"] for r in alone]
        for got, want in zip(rows, alone):
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    merged_rows = batched[3]  # the merged full model answers like its adapter
    assert [r["probabilities"] for r in merged_rows] == [pytest.approx(r["probabilities"], abs=1e-4)
                                                          for r in batched[0]]
    for lm, _ in items:
        lm.release()


def test_an_evicted_model_stays_until_its_requests_finish(store):
    from rayft.serve import runtime

    pool = runtime.ModelPool(store)
    a = pool.load("a@1")
    assert a.acquire()
    a.close()  # Serve's LRU evicts it while a request holds it
    assert not a.closed and not a.acquire() and a.run(lambda lm, m: "ran") == "ran"
    a.release()
    assert a.closed and a.run(lambda lm, m: "ran") is runtime.EVICTED


def test_alias_and_registration_records(store):
    from rayft.errors import StoreError
    from rayft.store.records import (alias_record, aliases, remove_alias, set_alias, set_registered,
                                     unregistered)

    assert aliases(store) == {}
    assert set_alias(store, "production", "a")["previous"] is None
    assert set_alias(store, "production", "b")["previous"] == "a"
    assert aliases(store) == {"production": "b"} and alias_record(store, "production")["target"] == "b"
    for bad in [("../x", "a"), ("prod", "../../etc"), ("a", "b"), ("/abs", "a")]:
        with pytest.raises(StoreError):
            set_alias(store, *bad)
    assert not list((store.root / ".serving" / "aliases").glob(".*"))  # no temporary files left behind
    assert remove_alias(store, "production") and not remove_alias(store, "production")
    set_registered(store, "b", False)
    assert unregistered(store) == {"b"} and "b" in {m.adapter_id for m in store.list()}
    set_registered(store, "b", True)
    assert unregistered(store) == set()


def test_compatibility_checks_name_what_differs(store, tiny_bert):
    from rayft.store.compat import BaseInfo, IncompatibleError, check_compatible

    base = BaseInfo.of(str(tiny_bert))
    assert base.model_type == "bert"
    bases = {base.name: base}
    check_compatible(store, store.manifest("a"), bases)
    check_compatible(store, store.manifest("merged"), bases)
    cases = [
        (dict(base_fingerprint="ffff"), "base_mismatch", "ffff"),
        (dict(base_model="other-base"), "base_not_served", "other-base"),
        (dict(task="sft"), "task_mismatch", "SEQ_CLS"),
        (dict(task="token_classification"), "unsupported_task", "token_classification"),
        (dict(kind="lora-ish"), "unsupported_kind", "lora-ish"),
    ]
    for change, reason, named in cases:
        m = store.manifest("a")
        for k, v in change.items():
            setattr(m, k, v)
        with pytest.raises(IncompatibleError) as info:
            check_compatible(store, m, bases)
        assert info.value.reason == reason and named in str(info.value)
    llama = BaseInfo(base.name, base.fingerprint, "llama")
    with pytest.raises(IncompatibleError) as info:
        check_compatible(store, store.manifest("merged"), {base.name: llama})
    assert info.value.reason == "architecture_mismatch" and "'bert'" in str(info.value)


def test_admin_bearer_token():
    from rayft.serve.admin import check_bearer, token_digest

    digest = token_digest("s3cret-token-0123456789")
    check_bearer("Bearer s3cret-token-0123456789", digest)
    check_bearer("bearer  s3cret-token-0123456789 ", digest)
    for header, status in [(None, 401), ("", 401), ("Basic abc", 401), ("Bearer ", 401), ("Bearer nope", 403)]:
        with pytest.raises(ServeError) as info:
            check_bearer(header, digest)
        assert info.value.status == status
    with pytest.raises(ServeError) as info:
        check_bearer("Bearer s3cret-token-0123456789", None)  # no token configured: admin disabled
    assert info.value.status == 403 and "disabled" in info.value.message


ADMIN_ROUTES = [("GET", "/admin/models", None), ("GET", "/admin/aliases", None),
                ("POST", "/admin/adapters", {"model": "a"}), ("DELETE", "/admin/adapters/a", None),
                ("PUT", "/admin/aliases/production", {"model": "a"}), ("DELETE", "/admin/aliases/production", None)]


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES)
def test_every_admin_route_checks_the_token_in_one_dependency(monkeypatch, method, path, body):
    """The gateway's FastAPI app in process (no Ray): ``require_admin`` answers before the route runs."""
    pytest.importorskip("ray.serve")
    from types import SimpleNamespace

    import ray.serve
    from fastapi.testclient import TestClient

    from rayft.serve.admin import token_digest
    from rayft.serve.app import api

    token = "s3cret-token-0123456789"
    ran = []
    gateway = SimpleNamespace(admin_digest=token_digest(token), catalog=SimpleNamespace(
        refresh=lambda force=False: ran.append(path), aliases={}, entries={}, withdrawn=set(), refused={}))
    monkeypatch.setattr(ray.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=gateway))
    client = TestClient(api, raise_server_exceptions=False)
    for headers, status, code in [({}, 401, "missing_token"), ({"Authorization": "Bearer nope"}, 403, "invalid_token"),
                                  ({"Authorization": token}, 401, "missing_token")]:
        resp = client.request(method, path, json=body, headers=headers)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), resp.text
        assert resp.headers.get("www-authenticate", "").startswith("Bearer") == (status == 401)
    if body:  # the token is checked before the body: no schema hints for callers without it
        assert client.request(method, path, json={"unknown": 1}).status_code == 401
    assert ran == []  # no route body ran
    gateway.admin_digest = None  # started without a token: admin routes disabled
    resp = client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert (resp.status_code, resp.json()["error"]["code"]) == (403, "admin_disabled")
    if method == "GET":  # with the token the route itself answers
        gateway.admin_digest = token_digest(token)
        assert client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200 and ran == [path]


def test_classify_in_process_refuses_an_evicted_model(store):
    from rayft.serve import infer, runtime

    loaded = runtime.ModelPool(store).load("a@1")
    assert [r["label"] for r in infer.classify(loaded, ["great fun"])] in (["neg"], ["pos"])
    loaded.close()
    with pytest.raises(ServeError) as info:
        infer.classify(loaded, ["great fun"])
    assert (info.value.status, info.value.code) == (503, "overloaded")


def test_export_sweep_exports_each_finished_trial_once(tmp_path, store, tiny_bert, sentiment_csv):
    import shutil

    from rayft.store import AdapterStore, export_sweep

    cfg = config(cls_config(tiny_bert, sentiment_csv, tmp_path, name="sw"))
    trials = []
    for i, status in enumerate(["TERMINATED", "TERMINATED", "ERROR", "TERMINATED"]):
        ckpt = tmp_path / f"ckpt{i}"
        if i != 3:  # the last trial left no checkpoint
            shutil.copytree(store.path("a"), ckpt / "model")
            (ckpt / "model" / "rayft.json").unlink()
            (ckpt / "rayft_state.json").write_text(json.dumps({"config": cfg, "labels": LABELS}))
        trials.append({"trial_id": f"t{i}", "status": status, "params": {}, "metrics": {"eval_accuracy": 0.5 + i / 10},
                       "checkpoint_path": str(ckpt) if i != 3 else None, "evaluations": 1})
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "rayft_sweep.json").write_text(json.dumps({"name": "sw-1", "trials": trials, "config": cfg}))
    out = AdapterStore(tmp_path / "served")
    assert export_sweep(str(sweep), out) == [("sw-t0", True), ("sw-t1", True)]
    assert export_sweep(str(sweep), out) == [("sw-t0", False), ("sw-t1", False)]
    m = out.manifest("sw-t1")
    assert (m.sweep_id, m.trial_id, m.metrics["eval_accuracy"], m.kind) == ("sw-1", "t1", 0.6, "adapter")


def test_eval_and_promote_cli_errors(tmp_path, capsys, monkeypatch):
    from rayft.cli import main

    monkeypatch.delenv("RAYFT_ADMIN_TOKEN", raising=False)
    data = tmp_path / "d.csv"
    data.write_text("review,sentiment\ngreat,pos\n")
    assert main(["eval", "--endpoint", "http://127.0.0.1:9", "--data", str(data)]) == 2
    assert "no column 'text', 'label'; columns: review, sentiment" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path / "missing.csv")]) == 2
    assert main(["promote", "--endpoint", "http://127.0.0.1:9", "m"]) == 2
    assert "admin token" in capsys.readouterr().err
    (tmp_path / "r.json").write_text(json.dumps({"winner": None, "ranking": []}))
    assert main(["promote", "--ranking", str(tmp_path / "r.json"), "--token", "x"]) == 2
    assert main(["serve", "--sweep", str(tmp_path)]) == 2
    assert "rayft_sweep.json" in capsys.readouterr().err


@pytest.mark.parametrize("config_file", ["app.yaml", "autoscaling.yaml"])
def test_shipped_configs_build_one_deployment_per_base(tmp_path, config_file):
    pytest.importorskip("ray.serve")
    
    import yaml
    from ray.serve._private.build_app import build_app as serve_build
    from ray.serve.schema import ServeDeploySchema

    from rayft.serve.app import app_builder

    path = REPO / "serving" / config_file
    (app,) = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).applications
    args = {**app.args, "store": str(tmp_path), "bases": app.args.get("bases") or ["minilm-l6", "smollm2-135m"]}
    built = serve_build(app_builder(args), name="rayft")
    models = {d.name: d for d in built.deployments if "-models-" in d.name}
    assert built.ingress_deployment_name == "rayft-gateway" and len(models) == 2
    small = next(d for n, d in models.items() if "minilm" in n)
    if config_file == "autoscaling.yaml":
        scaling = {n: d._deployment_config.autoscaling_config for n, d in models.items()}
        assert {s.max_replicas for s in scaling.values()} == {4, 2}
        assert small.ray_actor_options["num_cpus"] == 2
        smol = next(d for n, d in models.items() if "smollm2" in n)
        # every request the decode engine may hold (32 running + 128 queued) reaches the replica, which then
        # answers 429 itself; autoscaling counts those running and waiting
        assert smol._deployment_config.max_ongoing_requests >= 32 + 128
        assert scaling[smol.name].target_ongoing_requests == 32
    else:
        assert small.num_replicas == 1 and small._deployment_config.autoscaling_config is None
    with pytest.raises(ValueError, match="max_adapters"):
        app_builder({**args, "max_adapters": 0})


def test_evicted_adapters_become_slots_for_the_next_ones(store):
    from rayft.serve import infer, runtime

    def probs(loaded):
        rows = infer.classify(loaded, ["great fun", "dull"])
        return torch.tensor([[r["probabilities"][k] for k in LABELS] for r in rows])

    want = {k: probs(runtime.ModelPool(store).load(f"{k}@1")) for k in ("a", "b")}
    pool = runtime.ModelPool(store, spare_slots=1)
    a = pool.load("a@1")
    slot = a.adapter
    a.close()  # evicted: its modules stay as a free slot
    b = pool.load("b@1")
    assert b.adapter == slot and list(b.entry.peft.peft_config) == [slot]
    assert torch.allclose(probs(b), want["b"], atol=1e-6)
    a2 = pool.load("a@2")  # no free slot: loaded the usual way next to b
    assert a2.adapter != slot and torch.allclose(probs(a2), want["a"], atol=1e-6)
    b.close()
    a2.close()  # one spare slot only: this one is deleted
    assert sorted(b.entry.peft.peft_config) == [slot]
    assert torch.allclose(probs(pool.load("a@3")), want["a"], atol=1e-6)


def test_refilling_a_free_slot_does_not_wait_for_a_forward_pass(store):
    """Churn: an adapter copied into a free slot loads while another adapter's forward pass holds the model."""
    import threading

    from rayft.serve import runtime

    pool = runtime.ModelPool(store, spare_slots=2)
    a = pool.load("a@1")
    pool.load("b@1").close()  # b's modules become a free slot
    busy, done = threading.Event(), threading.Event()

    def forward_in_progress(lm, model):
        busy.set()
        done.wait(60)

    runner = threading.Thread(target=a.run, args=(forward_in_progress,))
    assert a.acquire()
    runner.start()
    try:
        assert busy.wait(60)
        loaded = []
        loader = threading.Thread(target=lambda: loaded.append(pool.load("b@2")))
        loader.start()
        loader.join(30)
        assert loaded and loaded[0].adapter != a.adapter  # loaded while the forward pass still ran
        assert not done.is_set() and runner.is_alive()
    finally:
        done.set()
        runner.join(60)
        a.release()


def test_slot_signature_ignores_repeated_and_reordered_module_names(tmp_path):
    from rayft.serve.runtime import _signature

    def write(name, **cfg):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, **cfg}))
        return _signature(folder)

    one = write("one", target_modules=["query", "value"], modules_to_save=["classifier", "score"])
    two = write("two", target_modules=["value", "query"], modules_to_save=["classifier", "score"] * 2)
    assert one == two and one != write("three", target_modules=["query"], modules_to_save=["classifier"])


def test_catalog_serves_aliases_refuses_misfits_and_ignores_bad_ids(store, tiny_bert, monkeypatch):
    from rayft.serve.catalog import Catalog
    from rayft.store.compat import BaseInfo
    from rayft.store.records import remove_alias, set_alias, set_registered

    base = BaseInfo.of(str(tiny_bert))
    wrong = store.manifest("b")
    wrong.adapter_id, wrong.base_fingerprint = "b-elsewhere", "0000"
    store.put(store.path("b"), wrong)
    set_alias(store, "production", "a")
    set_registered(store, "merged", False)
    try:
        cat = Catalog(store, {base.name: base}, ttl=60)
        assert cat.resolve("production").alias_of == "a" and cat.resolve("production").key == cat.resolve("a").key
        for model, status in [("b-elsewhere", 409), ("merged", 404), ("nope", 404), ("../a", 404)]:
            with pytest.raises(ServeError) as info:
                cat.resolve(model)
            assert info.value.status == status, model
        reads = []
        monkeypatch.setattr(store, "list", lambda real=store.list: reads.append(1) or real())
        for bad in ["../etc/passwd", "/abs", "%2e%2e", "nope-never-stored"]:
            with pytest.raises(ServeError):
                cat.resolve(bad)
        assert reads == []  # misses that cannot exist never re-read the store
    finally:
        remove_alias(store, "production")
        set_registered(store, "merged", True)
        import shutil

        shutil.rmtree(store.path("b-elsewhere"))


def test_overwriting_a_result_leaves_no_partial_or_stale_folder(store, tmp_path):
    from rayft.store import AdapterStore

    st = AdapterStore(tmp_path / "st")
    m = store.manifest("a")
    st.put(store.path("a"), m)
    m.metrics = {"eval_accuracy": 0.9}
    st.put(store.path("b"), m, overwrite=True)
    assert st.manifest("a").metrics == {"eval_accuracy": 0.9}
    assert (st.path("a") / "adapter_model.safetensors").read_bytes() == \
        (store.path("b") / "adapter_model.safetensors").read_bytes()
    assert [p.name for p in st.root.iterdir()] == ["a"]


def test_generation_scores():
    from rayft.serve.evaluate import _token_f1, _words

    assert _words("Paris .") == _words("paris") == ["paris"]
    assert _token_f1("the capital is Paris", "Paris") == pytest.approx(2 * 0.25 * 1 / 1.25)
    assert _token_f1("", "") == 1.0 and _token_f1("rome", "paris") == 0.0


def test_a_symlink_out_of_the_store_is_never_served(store, tmp_path, tiny_bert):
    import shutil

    from rayft.serve.catalog import Catalog
    from rayft.store.compat import BaseInfo

    outside = tmp_path / "outside"
    shutil.copytree(store.path("a"), outside)
    (store.root / "evil").symlink_to(outside, target_is_directory=True)
    try:
        base = BaseInfo.of(str(tiny_bert))
        cat = Catalog(store, {base.name: base})
        with pytest.raises(ServeError) as info:
            cat.resolve("evil")
        assert info.value.status == 404 and "evil" not in {m.adapter_id for m in store.list()}
    finally:
        (store.root / "evil").unlink()


def test_models_command_shows_aliases_and_unregistered(store, capsys):
    from rayft.cli import main
    from rayft.store.records import remove_alias, set_alias, set_registered

    set_alias(store, "production", "a")
    set_registered(store, "b", False)
    try:
        assert main(["models", "--store", str(store.root)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert "production\talias -> a" in lines
        assert any(line.startswith("b\t") and line.endswith("unregistered") for line in lines)
    finally:
        remove_alias(store, "production")
        set_registered(store, "b", True)
