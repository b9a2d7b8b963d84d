"""The command line: the only place that parses argv.

shield run   --config FILE       serve
shield check --config FILE       validate; exit 1 listing FILE:LINE:COL: message per problem
shield demo                      the demo service with Shield in front of it
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from shield import __version__
from shield.config import ShieldConfig, config_schema, load_config
from shield.errors import ConfigError, ConfigIssue

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


def _load_or_report(path: str) -> ShieldConfig | None:
    """The config at ``path`` with its rules compiled once, or None after printing every error."""
    from shield.reload import build_runtime

    warnings: list[ConfigIssue] = []
    try:
        config = load_config(path, warnings)
        build_runtime(config, "")
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return None
    except Exception as error:  # the rules validated but do not compile: report, never crash
        print(ConfigIssue(path, 1, 1, f"cannot compile the rules: {error}"), file=sys.stderr)
        return None
    for issue in warnings:
        print(issue, file=sys.stderr)
    return config


def cmd_check(args: argparse.Namespace) -> int:
    """Like ``nginx -t``: exit 0 with a one-line summary, or 1 with every error."""
    config = _load_or_report(args.config)
    if config is None:
        return 1
    print(
        f"{args.config}: ok: {len(config.rules)} rules, listen {config.listen.host}:{config.listen.port} "
        f"-> {config.upstream.url}, admin {config.admin.listen.host}:{config.admin.listen.port}, "
        f"{config.workers} worker(s)"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from shield.runner import run

    config = _load_or_report(args.config)
    if config is None:
        return 1
    return run(config, config_path=args.config, worker=args.worker, stats_dir=args.stats_dir)


def cmd_explain(args: argparse.Namespace) -> int:
    from shield.explain import explain

    config = _load_or_report(args.config)
    if config is None:
        return 1
    try:
        lines = explain(config, args.method, args.url, args.header, args.ip, cookie_args=args.cookie)
    except ValueError as error:
        print(f"shield explain: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from shield.demo_runner import run_demo

    path = args.config or str(DEMO_CONFIG)
    config = _load_or_report(path)
    if config is None:
        return 1
    return run_demo(config, config_path=path, upstream_port=args.upstream_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shield", description="A reverse proxy that shields a web service from abuse."
    )
    parser.add_argument("--version", action="version", version=f"shield {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve with a config file")
    run.add_argument("-c", "--config", required=True, help="the YAML config file")
    run.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--stats-dir", default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check", help="validate a config file and exit")
    check.add_argument("-c", "--config", required=True, help="the YAML config file")
    check.set_defaults(func=cmd_check)

    explain = commands.add_parser("explain", help="show what Shield would do with one request, and why")
    explain.add_argument("-c", "--config", required=True, help="the YAML config file")
    explain.add_argument("method", help="GET, POST, ...")
    explain.add_argument("url", help="a path (/api/register) or a URL (http://host/api/register)")
    explain.add_argument(
        "-H", "--header", action="append", default=[], help="a request header, 'Name: value' (repeatable)"
    )
    explain.add_argument(
        "-b", "--cookie", action="append", default=[], help="a cookie, 'name=value' (repeatable)"
    )
    explain.add_argument(
        "--ip",
        default="127.0.0.1",
        help="the TCP peer's address (default 127.0.0.1); behind trusted proxies the client is "
        "read from the forwarding header given with -H",
    )
    explain.set_defaults(func=cmd_explain)

    schema = commands.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(func=cmd_schema)

    demo = commands.add_parser("demo", help="run the demo service with Shield in front of it")
    demo.add_argument("-c", "--config", default=None, help="config (default: config/demo.yaml)")
    demo.add_argument(
        "--upstream-port",
        type=int,
        default=None,
        help="demo service port (default: the config's upstream port)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
