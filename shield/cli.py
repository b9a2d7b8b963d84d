"""The command line: the only place that parses argv.

shield run   --config FILE       serve
shield check --config FILE       validate; exit 1 listing FILE:LINE:COL: message per problem
shield demo                      the demo service with Shield in front of it
shield ctl -c FILE status|close|queue|open|bans|unban   runtime overrides through the admin listener
shield ctl -c FILE top [--by ip] [--refused]      who is hitting Shield right now
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shield import __version__
from shield.config import ShieldConfig, config_schema, load_config
from shield.errors import ConfigError, ConfigIssue
from shield.ops.top import DIMENSIONS

if TYPE_CHECKING:
    from shield.app.reload import Runtime
    from shield.decide.decision import CtlQueue

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


def _load_or_report(path: str) -> ShieldConfig | None:
    """The config at ``path`` with its rules compiled once, or None after printing every error."""
    runtime = _runtime_or_report(path)
    return runtime.config if runtime is not None else None


def _runtime_or_report(path: str) -> Runtime | None:
    """The config at ``path`` compiled, with its databases and lists loaded, or None after
    printing every error (a list's own as ``list-file:line: ...``)."""
    from shield.app.reload import build_runtime
    from shield.decide.address_set import ListError
    from shield.feeds.geo import FeedError

    warnings: list[ConfigIssue] = []
    try:
        config = load_config(path, warnings)
        runtime = build_runtime(config, "")
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return None
    except (FeedError, ListError) as error:  # says its own file (and line)
        print(f"{error} (named in {path})", file=sys.stderr)
        return None
    except Exception as error:  # the rules validated but do not compile: report, never crash
        print(ConfigIssue(path, 1, 1, f"cannot compile the rules: {error}"), file=sys.stderr)
        return None
    for issue in warnings:
        print(issue, file=sys.stderr)
    return runtime


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
    if args.running is not None:
        return _check_against_running(args.config, config, args.running or _admin_url(config))
    return 0


def _check_against_running(path: str, config: ShieldConfig, admin: str) -> int:
    """Say which settings of the file a running Shield would take only on restart (exit 0), or
    that it cannot be asked (exit 2)."""
    from shield.config.reloadable import pending_against
    from shield.ops import ctl_client

    try:
        running = ctl_client.running_config(admin)
    except ctl_client.CtlError as error:
        print(f"{path}: cannot compare with the running Shield: {error}", file=sys.stderr)
        return 2
    settings = running.get("settings")
    if not isinstance(settings, dict):
        print(
            f"{path}: cannot compare with the running Shield: {admin}/config is not its report",
            file=sys.stderr,
        )
        return 2
    pending = pending_against(settings, config)
    where = f"the Shield at {admin} (config version {running.get('version', '?')})"
    if pending:
        print(f"{path}: warning: {where} takes these on restart only: {', '.join(pending)}")
    else:
        print(f"{path}: {where} reloads every change in this file live")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from shield.app.processes import run

    config = _load_or_report(args.config)
    if config is None:
        return 1
    return run(config, config_path=args.config, worker=args.worker, stats_dir=args.stats_dir)


def _ctl_overrides(
    config: ShieldConfig,
) -> tuple[dict[str, str], dict[str, CtlQueue], dict[str, int]] | None:
    """The running Shield's ctl closures (rule -> description), ctl waiting rooms (rule -> the
    waiting room) and the lines of every waiting room (rule -> the last ticket let in), or None
    if it cannot be asked."""
    from shield.config.rules import parse_limit
    from shield.decide.decision import CtlQueue
    from shield.ops import ctl_client

    assert config.admin.ctl is not None
    try:
        answer = ctl_client.call(
            _admin_url(config), config.admin.ctl.token.decode(), "GET", "/status", timeout=0.5
        )
    except ctl_client.CtlError:
        return None
    closures = {c["rule"]: f"{c['message']!r} for {c['remaining']:.0f}s more" for c in answer["closures"]}
    queues = {
        q["rule"]: CtlQueue(q["rule"], q["admit"], *parse_limit(q["admit"]), q["message"], q["until"])
        for q in answer.get("queues", [])
    }
    lines = {
        q["rule"]: int(q["admitted_up_to"])
        for q in [*answer.get("queues", []), *answer.get("queued_by_file", [])]
        if q.get("admitted_up_to") is not None
    }
    return closures, queues, lines


def _admin_url(config: ShieldConfig) -> str:
    listen = config.admin.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else "::1" if listen.host == "::" else listen.host
    return f"http://{f'[{host}]' if ':' in host else host}:{listen.port}"


def cmd_explain(args: argparse.Namespace) -> int:
    from shield.ops.explain import explained

    runtime = _runtime_or_report(args.config)
    if runtime is None:
        return 1
    config = runtime.config
    overrides = _ctl_overrides(config) if config.admin.ctl is not None else None
    closures, queues, queue_lines = overrides if overrides is not None else (None, None, None)
    try:
        lines, _ = explained(
            config,
            args.method,
            args.url,
            args.header,
            args.ip,
            cookie_args=args.cookie,
            closures=closures,
            queues=queues,
            ctl=config.admin.ctl is not None,
            policy=runtime.policy,
            queue_lines=queue_lines,
        )
    except ValueError as error:
        print(f"shield explain: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from shield.demo.runner import run_demo

    path = args.config or str(DEMO_CONFIG)
    config = _load_or_report(path)
    if config is None:
        return 1
    return run_demo(config, config_path=path, upstream_port=args.upstream_port)


def _ctl_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """The admin URL and token: flags and environment first, then the config file."""
    admin, token = args.admin, os.environ.get("SHIELD_CTL_TOKEN")
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    if args.config and (admin is None or token is None):
        config = _load_or_report(args.config)
        if config is None:
            return None
        listen = config.admin.listen
        host = (
            "127.0.0.1" if listen.host in ("0.0.0.0", "") else "::1" if listen.host == "::" else listen.host
        )
        admin = admin or f"http://{f'[{host}]' if ':' in host else host}:{listen.port}"
        if token is None and config.admin.ctl is not None:
            token = config.admin.ctl.token.decode()
    if admin is None or token is None:
        print(
            "shield ctl: give -c CONFIG (with admin.ctl), or --admin URL and a token "
            "(--token-file or SHIELD_CTL_TOKEN)",
            file=sys.stderr,
        )
        return None
    return admin, token


def cmd_ctl(args: argparse.Namespace) -> int:
    from shield.ops import ctl_client

    target = _ctl_target(args)
    if target is None:
        return 2
    base, token = target
    try:
        match args.ctl_command:
            case "close":
                lines = ctl_client.close(base, token, args.rule, args.duration, args.message)
            case "queue":
                lines = ctl_client.queue(base, token, args.rule, args.admit, args.duration, args.message)
            case "open":
                lines = ctl_client.open_(base, token, args.rule)
            case "bans":
                lines = ctl_client.bans(base, token)
            case "unban":
                lines = ctl_client.unban(base, token, args.client)
            case "top":
                answer = ctl_client.top_answer(base, token, args.by, args.refused, args.window, args.limit)
                lines = [json.dumps(answer, indent=1)] if args.json else ctl_client.top_lines(answer)
            case _:
                lines = ctl_client.status(base, token)
    except ctl_client.CtlError as error:
        print(f"shield ctl: {error}", file=sys.stderr)
        return 2 if error.status == 0 else 1
    print("\n".join(lines))
    return 0


class _Version(argparse.Action):
    """``shield --version``: the version, and whether the hot path is compiled (mypyc)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from shield import build

        print(f"shield {__version__} ({build()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shield", description="A reverse proxy that shields a web service from abuse."
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and the build")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve with a config file")
    run.add_argument("-c", "--config", required=True, help="the YAML config file")
    run.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--stats-dir", default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check", help="validate a config file and exit")
    check.add_argument("-c", "--config", required=True, help="the YAML config file")
    check.add_argument(
        "--running",
        nargs="?",
        const="",
        default=None,
        metavar="ADMIN_URL",
        help="also ask the Shield running with this file (its admin listener, from the file unless "
        "given) which changed settings a reload would leave for a restart",
    )
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

    ctl = commands.add_parser(
        "ctl", help="close, queue or open rules for a while, list or lift bans, status, top offenders"
    )
    ctl.add_argument("-c", "--config", default=None, help="the config file (admin address and ctl token)")
    ctl.add_argument("--admin", default=None, help="the admin listener's URL, e.g. http://127.0.0.1:9090")
    ctl.add_argument("--token-file", default=None, help="file holding the ctl token (or SHIELD_CTL_TOKEN)")
    actions = ctl.add_subparsers(dest="ctl_command", required=True)
    close = actions.add_parser("close", help="close a rule (503 page) for a while")
    close.add_argument("rule")
    close.add_argument(
        "--for", dest="duration", default=None, help="e.g. 30m (default: admin.ctl.default_duration)"
    )
    close.add_argument("--message", default=None, help="the text shown to clients")
    queue = actions.add_parser("queue", help="put a rule's requests through a waiting room for a while")
    queue.add_argument("rule")
    queue.add_argument(
        "--admit", required=True, help="new visitors let in, across every replica with Redis, e.g. 20/minute"
    )
    queue.add_argument(
        "--for", dest="duration", default=None, help="e.g. 1h (default: admin.ctl.default_duration)"
    )
    queue.add_argument("--message", default=None, help="the text the waiting page shows")
    reopen = actions.add_parser("open", help="lift a ctl closure or waiting room")
    reopen.add_argument("rule")
    actions.add_parser("bans", help="list banned clients")
    unban = actions.add_parser("unban", help="lift a client's ban")
    unban.add_argument("client", help="an IP address (or IPv6 prefix) as `ctl bans` lists it")
    actions.add_parser("status", help="ctl closures and waiting rooms, the file's, bans")
    top = actions.add_parser("top", help="the heaviest clients, networks, agents, paths or rules right now")
    top.add_argument("--by", choices=DIMENSIONS, default="ip", help="what to rank (default: ip)")
    top.add_argument(
        "--refused",
        action="store_true",
        help="refused requests only (throttled, blocked, closed, banned, challenged, shed, capped)",
    )
    top.add_argument("--window", default="5m", help="how far back, e.g. 30s, 5m (default 5m; top.window_max)")
    top.add_argument("--limit", type=int, default=20, help="rows at most (default 20; top.capacity)")
    top.add_argument("--json", action="store_true", help="print the API's JSON answer")
    ctl.set_defaults(func=cmd_ctl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
