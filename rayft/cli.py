"""``rayft`` command line: thin subcommands over the stages. The only module that reads argv.

The Ray Jobs subcommands (``submit``, ``jobs``, ``logs``, ``stop``) are defined in :mod:`rayft.cli_jobs`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rayft.config.schema import default as schema_default
from rayft.errors import RayftError
from rayft.options import startup_options


def _config(args: argparse.Namespace):
    from rayft.config import load_config

    return load_config(args.config, args.overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from rayft.sweep import metric_and_mode

    metric, mode = metric_and_mode(cfg)
    what = (f"tasks {', '.join(f'{t.name} ({t.task}, {t.data.source or t.data.named_splits()})' for t in cfg.tasks)}"
            if cfg.tasks else f"task {cfg.task.name}")
    data = "" if cfg.tasks else f", data {cfg.data.source or cfg.data.named_splits()}"
    print(f"{args.config}: ok — model {cfg.model.name}, {what}, method {cfg.method.name}{data}; "
          f"sweep {cfg.sweep.num_trials} trials over "
          f"{', '.join(cfg.sweep.space) or 'no parameters'} ({mode} {metric})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rayft.console import Console
    from rayft.store import AdapterStore, export_checkpoint
    from rayft.train import run_training

    cfg = _config(args)
    _stop_on_sigterm()
    with Console(verbose=args.verbose) as console:
        out = run_training(cfg, resume=args.resume, address=args.address, options=startup_options(),
                           console=console)
        shown = {k: round(v, 4) for k, v in out.metrics.items()
                 if k.startswith(("eval_", "test_", "previous_", "forgetting_")) and isinstance(v, float)}
        console.line(f"trained {out.metrics.get('step')} steps in {out.seconds:.0f}s: {shown}")
        console.line(f"run: {out.run_dir}\ncheckpoint: {out.checkpoint_path}")
        if args.export and out.checkpoint_path:
            m = export_checkpoint(out.checkpoint_path, cfg, AdapterStore(args.store or cfg.store.path),
                                  adapter_id=args.id, overwrite=True)
            console.line(f"exported {m.adapter_id} to {args.store or cfg.store.path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rayft.console import Console
    from rayft.sweep import run_sweep

    cfg = _config(args)
    _stop_on_sigterm()
    with Console(verbose=args.verbose) as console:
        out = run_sweep(cfg, address=args.address, resume=args.resume, console=console,
                        options=startup_options(warm_pool=False if args.no_warm_pool else None))
        _sweep_outcome(args, cfg, out, console.line, console.stream)
    if out.best is None:
        print("no trial produced a checkpoint with the objective metric; nothing exported", file=sys.stderr)
        return 1
    return 0


def _sweep_outcome(args: argparse.Namespace, cfg: Any, out: Any, say: Callable[[str], None], stream: Any) -> None:
    """The sweep's final table and summary lines; the best trial exported unless told not to."""
    from rayft.store import AdapterStore, export_checkpoint
    from rayft.track import print_table, trials_table

    print_table(trials_table(out.trials, out.metric, out.mode, out.best.trial_id if out.best else None), file=stream)
    say(f"sweep {out.name}: {len(out.trials)} trials in {out.seconds:.0f}s; results in {out.path}")
    if out.pareto:
        say(f"Pareto front ({', '.join(f'{mode} {m}' for m, mode in out.objectives)}): {', '.join(out.pareto)}")
    say(f"report: rayft report {out.path}")
    if cfg.tracking.wandb and cfg.tracking.resolved_mode() == "offline":
        from rayft.track.wandb_files import sync_hint

        say(sync_hint(Path(cfg.tracking.dir or Path(out.path) / "wandb"), [t.trial_id for t in out.trials]))
    if out.best is None:
        return
    best = out.best
    # the held-out figure: the objective's own on test (test_score of a multi-task run), else accuracy, else loss
    own = "test_" + out.metric.removeprefix("eval_") if out.metric.startswith("eval_") else None
    held = next((k for k in (own, "test_accuracy", "test_loss") if k and k in best.metrics), None)
    say(f"best trial {best.trial_id}: {out.metric}={best.metrics[out.metric]:.4f}" +
        (f", held-out {held}={best.metrics[held]:.4f}" if held else ""))
    if cfg.sweep.export_best and not args.no_export:
        m = export_checkpoint(best.checkpoint_path, None, AdapterStore(args.store or cfg.store.path),
                              adapter_id=args.id, sweep_id=out.name, trial_id=best.trial_id,
                              metrics=best.metrics, overwrite=True)
        say(f"exported best trial as {m.adapter_id!r} to {AdapterStore(args.store or cfg.store.path).root}")


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a job scheduler) stops a command as Ctrl-C does: its local Ray is shut down with it."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)


def cmd_export(args: argparse.Namespace) -> int:
    from rayft.store import AdapterStore, export_trials, sweep_summary

    store = AdapterStore(args.store)
    if args.top_k or args.all:
        if args.format != "adapter":
            raise RayftError(f"--top-k and --all export adapters; --format {args.format} takes one SOURCE at a time")
        if sweep_summary(args.source) is not None:
            for m in export_trials(args.source, store, top_k=args.top_k, overwrite=args.overwrite):
                print(f"exported {m.adapter_id!r} ({m.kind}, {m.method}, trial {m.trial_id}) to {store.root}")
            return 0
    from rayft.export import ExportRequest, export_entry

    m = export_entry(store, ExportRequest(args.source, args.format, args.id, args.overwrite, args.prune,
                                          args.allow_drift, args.parity_rows, args.trial))
    made = f", from {m.source.get('id') or m.source.get('path')}" if m.source else ""
    print(f"exported {m.adapter_id!r} ({m.format or m.kind}, {m.method}, {m.task}{made}) to {store.root}")
    if m.drift:
        print(f"WARNING: {m.adapter_id!r} is flagged drift=true: it failed parity with its source", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rayft.sweep.results import read_summary
    from rayft.track.report import print_summary, write_report

    path = write_report(args.sweep, args.out)
    print_summary(read_summary(args.sweep))
    print(f"report: {path.resolve() if isinstance(path, Path) else path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from rayft import serve
    from rayft.exits import shutdown_ray
    from rayft.storage import resolve

    # Background jobs of a script ignore SIGINT: stop on SIGTERM too, shutting Serve (and its Ray) down cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    if args.sweep:
        _export_sweeps(args.sweep, args.store)
    url = serve.start(args.store, host=args.host, port=args.port, max_adapters=args.max_adapters,
                      num_replicas=args.replicas, address=args.address, admin_token=args.admin_token,
                      max_batch_size=args.max_batch_size, max_running=args.max_running,
                      max_queued=args.max_queued, request_timeout_s=args.request_timeout)
    print(f"serving {resolve(args.store).uri()} at {url} (Ctrl-C or SIGTERM to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        shutdown_ray()  # and every process of a Ray started here, within seconds
    return 0


def _export_sweeps(sweeps: list[str], store_dir: str) -> None:
    from rayft.store import AdapterStore, export_sweep

    store = AdapterStore(store_dir)
    for sweep in sweeps:
        done = export_sweep(sweep, store)
        if not done:
            raise RayftError(f"--sweep {sweep}: no finished trial left a checkpoint to serve")
        fresh = sum(new for _, new in done)
        print(f"{sweep}: serving {len(done)} trials ({fresh} newly exported to {store.root}): "
              f"{', '.join(i for i, _ in done)}", flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from rayft.serve import Client
    from rayft.serve.evaluate import evaluate_endpoint, load_heldout, ranking_table, write_ranking
    from rayft.track import print_table

    if args.prompt_column or args.response_column:
        data = load_heldout(args.data, args.prompt_column or "prompt", args.response_column or "response",
                            args.limit, task="sft")
    else:
        data = load_heldout(args.data, args.text_column, args.label_column, args.limit)
    client = Client(args.endpoint, timeout=120)
    models = [m for part in args.models or [] for m in part.split(",") if m]

    def progress(score: Any) -> None:
        shown = (", ".join(f"{k} {v:.4f}" for k, v in score.metrics.items()) if score.main is not None
                 else f"skipped: {score.error}")
        print(f"  {score.model}: {shown}", file=sys.stderr, flush=True)

    print(f"scoring on {len(data.texts)} held-out rows of {args.data} via {args.endpoint}", file=sys.stderr)
    scores = evaluate_endpoint(client, data, models or None, args.batch_size, progress, args.max_tokens)
    print_table(ranking_table(scores, data))
    if args.output:
        write_ranking(args.output, scores, data, args.endpoint)
        print(f"ranking written to {args.output}")
    return 0 if any(s.main is not None for s in scores) else 1


def cmd_promote(args: argparse.Namespace) -> int:
    from rayft.options import admin_token
    from rayft.serve import Client

    model = args.model
    if args.ranking:
        model = json.loads(Path(args.ranking).read_text()).get("winner")
        if not model:
            raise RayftError(f"--ranking {args.ranking}: no model was scored, nothing to promote")
    if not model:
        raise RayftError("name the model to promote, or pass --ranking from `rayft eval --output`")
    token = args.token or admin_token()
    if not token:
        raise RayftError("promote needs the server's admin token: --token or $RAYFT_ADMIN_TOKEN")
    out = Client(args.endpoint, admin_token=token).set_alias(args.alias, model)
    print(f"{args.alias} -> {out['model']} (was {out['previous'] or 'unset'})")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from rayft.serve import Client

    client = Client(args.url)
    model = args.model or _only_model(client)
    task = next((m.get("task") for m in client.models() if m["id"] == model), None)
    if task == "sft" or args.complete:
        for prompt in args.inputs:
            reply = client.complete(model, prompt, max_tokens=args.max_tokens)
            print(json.dumps({"prompt": prompt, "completion": reply["choices"][0]["text"]}))
        return 0
    for item, text in zip(client.classify(model, args.inputs)["data"], args.inputs):
        probs = ", ".join(f"{k}={v:.3f}" for k, v in item["probabilities"].items())
        print(f"{item['label']:>10}  ({probs})  {text}")
    return 0


def _only_model(client: Any) -> str:
    ids = [m["id"] for m in client.models()]
    if len(ids) != 1:
        raise RayftError(f"--model is required when the server has {len(ids)} models: {', '.join(ids)}")
    return ids[0]


def cmd_models(args: argparse.Namespace) -> int:
    from rayft.store import AdapterStore
    from rayft.store.records import listing

    for line in listing(AdapterStore(args.store)):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rayft.cli_jobs import add_job_commands

    parser = argparse.ArgumentParser(prog="rayft", description="Ray-native fine-tuning experiments.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help="experiment YAML")
        p.add_argument("overrides", nargs="*", metavar="key.path=value",
                       help="override config fields (anywhere on the line)")
        p.set_defaults(fn=fn, command_parser=p)
        return p

    with_config("validate", cmd_validate, "check an experiment config and report every problem")
    p = with_config("train", cmd_train, "train once with Ray Train + DeepSpeed")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's, DeepSpeed's and W&B's output live "
                   "(always kept in rayft.log in the run's folder)")
    p.add_argument("--resume", action="store_true", help="continue the latest run of this experiment")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--export", action="store_true", help="export the result to the store")
    p.add_argument("--store", help="adapter store (default: store.path)")
    p.add_argument("--id", help="adapter id for --export")
    p = with_config("sweep", cmd_sweep, "run the experiment's sweep (Ray Tune + Optuna + ASHA)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's, Tune's, DeepSpeed's and W&B's output "
                   "live (always kept in rayft.log in the sweep's folder)")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--store", help="adapter store for the best trial (default: store.path)")
    p.add_argument("--id", help="adapter id of the exported best trial")
    p.add_argument("--no-export", action="store_true", help="do not export the best trial")
    p.add_argument("--resume", action="store_true",
                   help="continue this experiment's latest sweep after the driver stopped (Ctrl-C, kill)")
    p.add_argument("--no-warm-pool", action="store_true",
                   help="start every trial in fresh processes (default: prestart the next trials' workers; "
                        "env: RAYFT_WARM=0)")

    p = sub.add_parser("report", help="write a sweep's HTML report (plots, Pareto front, table) and print a summary")
    p.add_argument("sweep", help="sweep folder (runs/<experiment>/sweep-<time>)")
    p.add_argument("--out", help="HTML file (default: <sweep>/report.html)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("export", help="export a store entry, a sweep's best (or chosen) trial or a run's checkpoint "
                                      "as an adapter, a merged model, an ONNX graph or an int8 ONNX graph")
    p.add_argument("source", help="store id, sweep folder, run folder or checkpoint folder")
    p.add_argument("--format", default="adapter", metavar="FORMAT",
                   help="adapter (default), merged, onnx, onnx-int8 or gguf (checked for parity with SOURCE)")
    p.add_argument("--store", default=schema_default("store.path"))
    p.add_argument("--trial", help="trial id (default: the sweep's best)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--top-k", type=int, metavar="K", help="export the sweep's K best trials (<sweep>-<trial> ids)")
    which.add_argument("--all", action="store_true", help="export every trial of the sweep that has a checkpoint")
    p.add_argument("--id", help="entry id (default: <experiment>-<trial>, or <source>-<format> for other formats)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--prune", type=float, metavar="FRACTION",
                   help="zero this share of the smallest weights first (unstructured magnitude pruning; "
                        "merged/onnx/onnx-int8), reporting the accuracy change")
    p.add_argument("--allow-drift", action="store_true",
                   help="write the export even if it fails parity with SOURCE, flagged drift=true")
    p.add_argument("--parity-rows", type=int, default=256, metavar="N",
                   help="validation rows the export is compared with SOURCE on")
    p.set_defaults(fn=cmd_export)

    from rayft.serve import defaults as serving  # one source for the serving defaults

    p = sub.add_parser("serve", help="serve the store's adapters over an OpenAI-compatible HTTP API")
    p.add_argument("--store", default=schema_default("store.path"))
    p.add_argument("--host", default=serving.HOST)
    p.add_argument("--port", type=int, default=serving.PORT)
    p.add_argument("--max-adapters", type=int, default=serving.MAX_ADAPTERS, help="adapters resident per replica (LRU)")
    p.add_argument("--replicas", type=int, default=serving.NUM_REPLICAS)
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--sweep", action="append", metavar="SWEEP_DIR",
                   help="export every finished trial of this sweep to --store and serve it (repeatable)")
    p.add_argument("--admin-token", help="bearer token of the admin routes (default: $RAYFT_ADMIN_TOKEN; "
                                         "none: admin routes disabled)")
    p.add_argument("--max-batch-size", type=int, default=serving.MAX_BATCH_SIZE,
                   help="classification requests batched per forward")
    p.add_argument("--max-running", type=int, default=serving.GenerationLimits.max_running,
                   help="sequences each replica decodes at once (per base model); more requests wait")
    p.add_argument("--max-queued", type=int, default=serving.GenerationLimits.max_queued,
                   help="requests that may wait per base model; beyond them the server answers 429")
    p.add_argument("--request-timeout", type=float, default=serving.GenerationLimits.request_timeout_s,
                   help="seconds after which an unfinished generation request ends with 504")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("eval", help="score every served model on held-out data over HTTP and rank them")
    p.add_argument("--endpoint", default=serving.URL, help="URL of a running rayft serve")
    p.add_argument("--data", required=True, help="held-out csv / jsonl / parquet file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--prompt-column", help="score sft models: prompts in this column (default: prompt)")
    p.add_argument("--response-column", help="score sft models: reference answers in this column (default: response)")
    p.add_argument("--max-tokens", type=int, default=serving.CHAT_MAX_TOKENS, help="answer length for sft models")
    p.add_argument("--models", action="append", help="only these model ids (comma-separated, repeatable)")
    p.add_argument("--limit", type=int, help="score only the first N rows")
    p.add_argument("--batch-size", type=int, default=serving.EVAL_BATCH_SIZE, help="texts per request")
    p.add_argument("--output", help="write the ranking as JSON (input of `rayft promote --ranking`)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("promote", help="point an alias (default: production) at a model on a running server")
    p.add_argument("model", nargs="?", help="model id to promote")
    p.add_argument("--endpoint", default=serving.URL)
    p.add_argument("--alias", default="production")
    p.add_argument("--ranking", help="promote the winner of a `rayft eval --output` ranking")
    p.add_argument("--token", help="admin token (default: $RAYFT_ADMIN_TOKEN)")
    p.set_defaults(fn=cmd_promote)

    p = sub.add_parser("query", help="send inputs to a running server")
    p.add_argument("inputs", nargs="+", help="texts to classify or prompts to complete")
    p.add_argument("--url", default=serving.URL)
    p.add_argument("--model", help="model id (default: the only one served)")
    p.add_argument("--complete", action="store_true", help="use /v1/completions")
    p.add_argument("--max-tokens", type=int, default=serving.COMPLETION_MAX_TOKENS)
    p.set_defaults(fn=cmd_query)

    p = sub.add_parser("models", help="list the adapter store")
    p.add_argument("--store", default=schema_default("store.path"))
    p.set_defaults(fn=cmd_models)
    add_job_commands(sub, with_config)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``key.path=value`` overrides may stand anywhere after a config's subcommand,
    before or after the config and the options (``rayft submit CONFIG --address URL train.lr=3e-4``).

    Exits 2 with the subcommand's usage for an argument that is neither one of its options nor an override.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not hasattr(args, "overrides"):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args
    for token in extra:
        if token.startswith("-"):
            args.command_parser.error(f"unrecognized arguments: {token}")
    tokens = [args.config, *args.overrides, *extra]  # in command-line order
    plain = [i for i, token in enumerate(tokens) if not _is_override(token)]
    config = plain[0] if plain else 0  # the one argument that is no key=value (a file name may hold a '=')
    for i in plain[1:]:
        args.command_parser.error(f"argument {tokens[i]!r} is neither an option of `rayft {args.command}` nor an "
                                  "override: overrides are key.path=value (e.g. train.lr=3e-4)")
    args.config, args.overrides = tokens[config], tokens[:config] + tokens[config + 1:]
    return args


def _is_override(token: str) -> bool:
    from rayft.config.loader import parse_override
    from rayft.errors import ConfigError

    try:
        parse_override(token)
    except ConfigError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rayft`` console script; user mistakes exit 2 with a message, no traceback."""
    args = parse_args(argv)
    try:
        return args.fn(args)
    except RayftError as exc:  # registry misses too (UnknownNameError lists the valid names)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
