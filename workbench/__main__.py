"""`python -m workbench …`: stack up, one flow, wallets, a run, a report, a notebook run, compare.

Subcommands import their modules lazily so `--help` is instant. Exit codes: 0 ok, 99 criteria
failed (`--fail-on-criteria`) or a regression (`--fail-on-regression`), 1 the run broke,
2 bad input (see `workbench.errors`).
"""

from __future__ import annotations

import argparse
import sys

from workbench.errors import EXIT_BAD_INPUT, WorkbenchError


def _stack(args: argparse.Namespace) -> int:
    from workbench.cli.stack import stack_up

    return stack_up(args.profile, args.json, args.vana_addresses)


def _flow(args: argparse.Namespace) -> int:
    from workbench.cli.flow import flow_command

    return flow_command(args.profile, args.json)


def _wallets(args: argparse.Namespace) -> int:
    from workbench.cli.wallets import wallets_command

    return wallets_command(args)


def _run(args: argparse.Namespace) -> int:
    from workbench.cli.run import run_command

    return run_command(args)


def _report(args: argparse.Namespace) -> int:
    from workbench.cli.report import main

    return main([args.results_dir, *(["--criteria", args.criteria] if args.criteria else [])])


def _notebook(args: argparse.Namespace) -> int:
    from workbench.cli.notebook import notebook_command

    return notebook_command(args)


def _preflight(args: argparse.Namespace) -> int:
    from workbench.cli.preflight import preflight_command

    return preflight_command(args.target, args.timeout_s)


def _compare(args: argparse.Namespace) -> int:
    from workbench.cli.compare import compare_command

    return compare_command(args.run_a, args.run_b, args.fail_on_regression, args.tolerance)


def _cleanup(args: argparse.Namespace) -> int:
    from workbench.cli.cleanup import cleanup_command

    return cleanup_command(args.results_dir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start the embedded local stack and keep it up")
    s.add_argument("action", choices=["up"])
    s.add_argument("--profile", default="fast", help="fast | moksha | path to a profile YAML")
    s.add_argument("--json", action="store_true", help="print one JSON line with the endpoints")
    s.add_argument(
        "--vana-addresses",
        action="store_true",
        dest="vana_addresses",
        help="chain id 14800 and the contracts at Vana's SDK addresses (test wallets only)",
    )
    s.set_defaults(func=_stack)

    f = sub.add_parser("flow", help="run one timed flow on a fresh local stack")
    f.add_argument("--profile", default="fast")
    f.add_argument("--json", action="store_true", help="last line is the flow outcome as JSON")
    f.set_defaults(func=_flow)

    w = sub.add_parser("wallets", help="generate, fund, check or sweep test wallets")
    w.add_argument(
        "--generate", type=int, metavar="N", help="derive N wallets into the wallet file"
    )
    w.add_argument("--fund", action="store_true", help="top every wallet up to --amount-eth")
    w.add_argument("--check", action="store_true", help="validate the wallets and their funding")
    w.add_argument("--sweep", action="store_true", help="return all funds to the funder")
    w.add_argument("--count", type=int, help="how many wallets to fund/check/sweep (default all)")
    w.add_argument("--amount-eth", type=float, default=0.01)
    w.add_argument("--wallet-file", help="default .wallets/wallets.json or $WORKBENCH_WALLET_FILE")
    w.add_argument("--rpc-url", help="chain to fund on (e.g. from `stack up --json`)")
    w.set_defaults(func=_wallets)

    r = sub.add_parser("run", help="run a load shape of concurrent flows and write a results dir")
    r.add_argument(
        "--params", help="a params YAML: a name in params/ (run-ms03) or a path; flags override it"
    )
    r.add_argument("--users", type=int)
    r.add_argument("--profile")
    r.add_argument("--target", help="local (default) or a target YAML")
    r.add_argument("--shape", help="staggered | burst | hold | poisson | steps")
    r.add_argument("--ramp-s", type=float, dest="ramp_s")
    r.add_argument("--duration-s", type=float, dest="duration_s")
    r.add_argument("--rate-per-s", type=float, dest="rate_per_s")
    r.add_argument("--data-size", dest="data_size", help="small | medium | large | mixed")
    r.add_argument("--criteria")
    r.add_argument("--faults")
    r.add_argument("--output-dir", dest="output_dir")
    r.add_argument("--seed", type=int)
    r.add_argument(
        "--relay", help="app (gasless via the app's /api/relay) | direct (user's own tx)"
    )
    r.add_argument("--client", help="client timing preset: tight | sdk | upstream")
    r.add_argument(
        "--rpc-rate-limit",
        type=float,
        dest="rpc_rate_limit",
        help="at most this many RPC calls per second to each RPC URL (a client-side throttle)",
    )
    r.add_argument(
        "--workers", type=int, help="0: in this process (default); N: a local Dask cluster of N"
    )
    r.add_argument("--scheduler", help="an existing Dask cluster: tcp://host:8786")
    r.add_argument(
        "--fail-on-criteria",
        action="store_true",
        dest="fail_on_criteria",
        default=None,
        help="exit 99 when the verdict is FAILED",
    )
    r.add_argument("--no-report", action="store_true", help="skip rendering report.html")
    r.set_defaults(func=_run)

    rep = sub.add_parser("report", help="render report.html again from a results dir alone")
    rep.add_argument("results_dir")
    rep.add_argument("--criteria", help="judge against another criteria file")
    rep.set_defaults(func=_report)

    nb = sub.add_parser("notebook", help="execute a notebook with papermill; print the report path")
    nb.add_argument("notebook", nargs="?", default="notebooks/run.ipynb")
    nb.add_argument("--users", type=int)
    nb.add_argument("--profile")
    nb.add_argument("--output-dir", dest="output_dir", help="default outputs (or -p output_dir)")
    nb.add_argument(
        "-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE")
    )
    nb.add_argument(
        "-f", "--params", help="a params YAML (params/run-*.yaml), as papermill -f; -p overrides it"
    )
    nb.set_defaults(func=_notebook)

    pf = sub.add_parser("preflight", help="check every endpoint of a target file, change nothing")
    pf.add_argument("target", help="a name under params/targets/ (moksha) or a YAML path")
    pf.add_argument("--timeout-s", type=float, default=10.0, dest="timeout_s")
    pf.set_defaults(func=_preflight)

    cmp = sub.add_parser("compare", help="compare run B against run A (a CI gate with a flag)")
    cmp.add_argument("run_a", help="the baseline's results dir")
    cmp.add_argument("run_b", help="the candidate's results dir")
    cmp.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 99 when B's flows are significantly slower or its success rate lower",
    )
    cmp.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="a slowdown must also exceed this fraction of A's median (0.05: 5%%) to fail",
    )
    cmp.set_defaults(func=_compare)

    cl = sub.add_parser("cleanup", help="delete a run's uploaded objects from its storage")
    cl.add_argument("results_dir")
    cl.set_defaults(func=_cleanup)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
