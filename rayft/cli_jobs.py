"""``rayft submit`` / ``jobs`` / ``logs`` / ``stop``: experiments as Ray Jobs on a cluster (Ray Jobs SDK).

:func:`add_job_commands` adds these subcommands to the parser that :mod:`rayft.cli` builds and parses.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from rayft.errors import RayftError


def cmd_submit(args: argparse.Namespace) -> int:
    from rayft import jobs

    if args.resume and args.run == "validate":
        raise RayftError("--resume continues a sweep or a training run: use it with --run sweep or --run train")
    extra = [*args.args, *(["--resume"] if args.resume and "--resume" not in args.args else [])]
    sub = jobs.build_submission(args.config, args.overrides, working_dir=args.working_dir, command=args.run,
                                extra_args=extra, pip=args.pip or (), submission_id=args.submission_id,
                                python=args.python)
    for warning in sub.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    job_id = jobs.submit(args.address, sub, token=args.token)
    print(f"submitted {job_id} to {args.address}: {sub.entrypoint}", flush=True)
    print(f"follow it with: rayft logs {job_id} --address {args.address} --follow", flush=True)
    if not (args.wait or args.follow):
        return 0
    status = (jobs.logs(args.address, job_id, token=args.token, follow=True) if args.follow
              else jobs.wait(args.address, job_id, token=args.token))
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from rayft import jobs

    rows = jobs.jobs(args.address, token=args.token)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['id']}\t{row['status']}\t{row['started']}\t{row['experiment'] or '-'}\t{row['entrypoint']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from rayft import jobs

    status = jobs.logs(args.address, args.job_id, token=args.token, follow=args.follow,
                       write=lambda text: print(text, flush=True))
    if args.follow:
        print(f"job {args.job_id}: {status}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from rayft import jobs

    stopped = jobs.stop(args.address, args.job_id, token=args.token)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def add_job_commands(sub: Any, with_config: Callable[..., argparse.ArgumentParser]) -> None:
    """``submit`` / ``jobs`` / ``logs`` / ``stop``: sweeps as Ray Jobs on a cluster (Ray Jobs SDK)."""
    from rayft.options import job_address

    def cluster_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=job_address(), required=not job_address(),
                       help="the head's dashboard URL, e.g. http://HEAD:8265 (env: RAY_JOB_ADDRESS)")
        p.add_argument("--token", help="cluster auth token (default: RAY_AUTH_TOKEN or ~/.ray/auth_token)")

    p = with_config("submit", cmd_submit, "run an experiment on a Ray cluster as a Ray Job")
    cluster_args(p)
    p.add_argument("--run", choices=["sweep", "train", "validate"], default="sweep",
                   help="what the job runs (default: sweep; validate checks the config on the cluster)")
    p.add_argument("--working-dir", help="folder shipped to the cluster with the config and its files (default: .)")
    p.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")
    p.add_argument("--pip", action="append", help="extra pip requirement for the job (repeatable)")
    p.add_argument("--submission-id", help="job id to use (resubmitting a finished id is refused by Ray)")
    p.add_argument("--arg", dest="args", action="append", default=[], help="extra argument for the job's "
                   "command, e.g. --arg=--resume (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the experiment's latest sweep (or run) where "
                   "its output_dir keeps it, e.g. after `rayft stop` or a lost head-side driver")
    p.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p = sub.add_parser("jobs", help="list the jobs of a Ray cluster")
    cluster_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_jobs)
    for name, fn, help_ in (("logs", cmd_logs, "print (or --follow) a job's logs"), ("stop", cmd_stop, "stop a job")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("job_id")
        cluster_args(p)
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true")
        p.set_defaults(fn=fn)
