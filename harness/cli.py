"""The ``bnbench`` command: run, plan, report, plugins. Errors become messages and exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python
from tabulate import tabulate

import bnbench
from bnbench.errors import BnbenchError, ManifestError, StoreError, terminal_text
from bnbench.hookspecs import DISABLE_ENV, KINDS, disabled_plugins

if TYPE_CHECKING:
    from bnbench.manifest import Manifest
    from bnbench.plan import Plan
    from bnbench.registry import Entry
    from bnbench.report import Report
    from bnbench.session import Session

# The commands import what they use when they run: `bnbench --help` (and a mistyped command)
# answers without importing torch.

FORMATS = ("github", "latex", "plain", "csv")
"""Table formats of the report (tabulate's names, and csv)."""


def _add_manifest_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="manifest TOML file (e.g. benchmarks.toml)")
    parser.add_argument("--profile", "-p", help="overlay this named profile (e.g. smoke)")
    parser.add_argument("--study", "-s", action="append", help="only this study (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnbench", description="Benchmark harness for normalization studies.")
    parser.add_argument("--version", action="version", version=f"bnbench {bnbench.__version__}")
    parser.add_argument(
        "--disable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help=f"do not load this installed plugin (package or entry-point name; repeatable; or {DISABLE_ENV}=a,b)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every pending run of a manifest, then print the report")
    _add_manifest_args(run)
    run.add_argument("--rerun", action="store_true", help="run again runs that already have a result")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override [harness] device")
    run.add_argument(
        "--executor",
        metavar="NAME|TABLE",
        help="override [harness] executor: a name (pool) or a TOML table ('{ name = \"pool\", workers = 4 }')",
    )
    run.add_argument(
        "--track",
        action="append",
        metavar="NAME|TABLE",
        help="also send the runs' curves to this tracker (tensorboard, mlflow, or a TOML table with options; "
        "repeatable; adds to [harness] trackers)",
    )
    run.add_argument("--format", choices=FORMATS, default="github", help="report table format")
    run.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    run.add_argument("--yes", "-y", action="store_true", help="do not ask before a sweep larger than max_runs")
    run.add_argument(
        "--verbose", "-v", action="store_true", help="off a terminal, a line per epoch too (default: one per run)"
    )

    plan = commands.add_parser("plan", help="list every run of a manifest and whether it has a result")
    _add_manifest_args(plan)
    plan.add_argument(
        "--resolved",
        action="store_true",
        help="print each study's fully resolved run spec instead, every default filled in, and its swept values",
    )

    rep = commands.add_parser("report", help="print comparison tables from a manifest or a results store")
    rep.add_argument("source", type=Path, help="manifest TOML or results SQLite file")
    rep.add_argument("--profile", "-p", help="with a manifest: the profile it was run with")
    rep.add_argument("--study", "-s", action="append", help="only this study (repeatable)")
    rep.add_argument("--format", "-f", choices=FORMATS, default="github")
    rep.add_argument(
        "--verbose", "-v", action="store_true", help="the claims table with every column (claim text, source, ...)"
    )
    rep.add_argument("--figures", type=Path, metavar="DIR", help="also write the analyses' figures (PNG) here")
    rep.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write the report as one self-contained HTML page (figures inside)",
    )

    export = commands.add_parser(
        "export", help="write every recorded value as a long table (CSV or Parquet): run x epoch x metric"
    )
    export.add_argument("source", type=Path, help="manifest TOML or results SQLite file")
    export.add_argument("output", type=Path, help="the file to write: .csv, or .parquet (needs bnbench[data])")
    export.add_argument("--profile", "-p", help="with a manifest: the profile it was run with")
    export.add_argument("--study", "-s", action="append", help="only this study (repeatable)")
    export.add_argument(
        "--runs", action="store_true", help="one row per run instead (status, duration, error, axes, spec)"
    )

    plugins = commands.add_parser("plugins", help="list registered plugins by kind")
    plugins.add_argument("--kind", choices=KINDS, action="append", help="only this kind (repeatable)")
    plugins.add_argument("--manifest", type=Path, help="also load the plugins this manifest names")
    plugins.add_argument("--json", action="store_true", help="print JSON (for tools) instead of tables")

    from bnbench.scaffold import KINDS as SKELETON_KINDS  # no torch: the parser stays light

    scaffold = commands.add_parser(
        "new-plugin", help="write the skeleton of a plugin package (normalizer, metric, model or dataset)"
    )
    scaffold.add_argument(
        "name",
        help="e.g. my-norm: distribution bnbench-my-norm, module bnbench_my_norm, component my-norm "
        "(a bnbench- or bnbench_ prefix is not doubled)",
    )
    scaffold.add_argument(
        "--kind", choices=SKELETON_KINDS, default="normalizer", help="what the plugin adds (default: normalizer)"
    )
    scaffold.add_argument("--distribution", help="the package's name on the index and in pip (default: bnbench-NAME)")
    scaffold.add_argument("--module", help="the Python module it imports as (default: bnbench_NAME, - as _)")
    scaffold.add_argument("--component", help="the name a manifest writes (default: NAME)")
    scaffold.add_argument(
        "--directory", type=Path, default=Path(), help="where to create the package's folder (default: here)"
    )
    return parser


def _print_report(
    session: Session, fmt: str, figures: Path | None = None, page: Path | None = None, verbose: bool = False
) -> None:
    from bnbench.report import from_manifest

    with session.store(read_only=True) as store:
        report = from_manifest(session.manifest, store, session.registry)
    _emit(report, fmt, figures, page, verbose)


def _emit(report: Report, fmt: str, figures: Path | None, page: Path | None = None, verbose: bool = False) -> None:
    print(terminal_text(report.render(fmt, verbose=verbose)), end="")
    if figures is not None:
        written = report.save_figures(figures)
        print(terminal_text(f"{len(written)} figures written to {figures}"), file=sys.stderr)
    if page is not None:
        from bnbench.files import write_atomically
        from bnbench.report_html import render_html

        write_atomically(page, render_html(report))
        print(terminal_text(f"HTML report written to {page}"), file=sys.stderr)


def _confirm_size(plan: Plan, assume_yes: bool) -> None:
    """Ask before a sweep with more pending runs than ``[harness] max_runs`` (or refuse without a terminal)."""
    limit = plan.manifest.settings.max_runs
    if len(plan.pending) <= limit or assume_yes:
        return
    question = f"{len(plan.pending)} runs to run, more than max_runs = {limit}."
    if not sys.stdin.isatty():
        raise ManifestError(
            f"{question} Pass --yes to run them, or raise [harness] max_runs.", file=str(plan.manifest.path)
        )
    answer = input(f"{question} Run them all? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise BnbenchError("nothing run")


RUNS_FAILED = 4
"""Exit status of ``bnbench run`` when the sweep finished but some runs failed (scripts and CI notice)."""


def cmd_run(args: argparse.Namespace) -> int:
    from bnbench.plan import make_plan
    from bnbench.session import open_session
    from bnbench.sweep import run_plan

    session = open_session(args.manifest, args.profile, studies=args.study, executor=args.executor, trackers=args.track)
    manifest = session.manifest
    plan = make_plan(manifest, session.registry, rerun=args.rerun, device=args.device)
    _confirm_size(plan, args.yes)
    summary = run_plan(plan, device=args.device, verbose=args.verbose, handle_signals=True)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.statuses.items())) or "nothing run"
    if summary.busy:
        counts += f", {summary.busy} being run by another process"
    if summary.finished_elsewhere:
        counts += f", {summary.finished_elsewhere} finished meanwhile by another process"
    if summary.rerunning:
        counts += f", {summary.rerunning} of them being run again by another process (their results are kept meanwhile)"
    if summary.stopped:
        counts += f", {summary.stopped} interrupted"
    if summary.not_started:
        counts += f", {summary.not_started} not started"
    print(
        terminal_text(
            f"{summary.planned} runs planned, {summary.skipped} already had results; {counts}. "
            f"Results: {manifest.results_path}"
        ),
        file=sys.stderr,
    )
    if not args.no_report:
        _print_report(session, args.format)
    if summary.interrupted:
        left = summary.stopped + summary.not_started
        print(
            f"Stopped before the sweep finished ({left} run{'s' * (left != 1)} left): "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    failed = summary.statuses.get("failed", 0)
    if failed:
        print(
            f"{failed} run{'s' * (failed != 1)} failed (each error is in the store; `bnbench report` shows them, "
            "and the next `bnbench run` retries them): exit status 4.",
            file=sys.stderr,
        )
        return RUNS_FAILED
    return 0


def _print_resolved(manifest: Manifest) -> None:
    """Each study's first run as the runner sees it (every default filled in), and what its sweep varies."""
    for study in manifest.studies:
        swept = {axis: list(dict.fromkeys(str(r.axes.get(axis)) for r in study.runs)) for axis in study.axes}
        seeds = [str(seed) for seed in dict.fromkeys(r.spec.seed for r in study.runs)]
        print(f"## {study.name}: {len(study.runs)} runs")
        for axis, values in {**swept, "seed": seeds}.items():
            print(f"#   {axis} in {', '.join(values)}")
        spec = study.runs[0].spec.model_dump(mode="json", exclude_none=True)
        print(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def cmd_plan(args: argparse.Namespace) -> int:
    from bnbench.plan import make_plan
    from bnbench.session import open_session

    session = open_session(args.manifest, args.profile, studies=args.study)
    plan = make_plan(session.manifest, session.registry)
    if args.resolved:
        _print_resolved(plan.manifest)
        return 0
    rows = [
        [
            r.run_id,
            r.study,
            ", ".join(f"{k}={v}" for k, v in r.axes.items()) or "—",
            r.spec.seed,
            plan.statuses.get(r.run_id, "pending"),
        ]
        for r in plan.manifest.runs()
    ]
    print(terminal_text(tabulate(rows, headers=["run id", "study", "axes", "seed", "status"], tablefmt="github")))
    print(terminal_text(f"\n{plan.summary()}. Results store: {plan.manifest.results_path}"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bnbench.registry import load_registry
    from bnbench.report import from_manifest, from_store, other_profiles_note
    from bnbench.session import open_session
    from bnbench.store import Store, is_store_file

    if is_store_file(args.source):
        with Store(args.source, read_only=True) as store:
            report = from_store(store, load_registry())
        if args.study:
            report.studies = [s for s in report.studies if s.name in args.study]
        if not report.studies:
            raise BnbenchError(f"results store {args.source} holds no studies")
        _emit(report, args.format, args.figures, args.html, args.verbose)
        return 0
    if args.source.suffix in (".sqlite", ".sqlite3", ".db") and args.source.is_file():
        raise StoreError(f"{args.source} is not a SQLite database (its header is damaged?): cannot report from it")
    session = open_session(args.source, args.profile, studies=args.study)
    manifest = session.manifest
    if not manifest.results_path.is_file():
        raise BnbenchError(
            f"no results yet at {manifest.results_path}; run `bnbench run {args.source}"
            f"{' --profile ' + args.profile if args.profile else ''}` first"
        )
    with session.store(read_only=True) as store:
        report = from_manifest(manifest, store, session.registry)
        note = other_profiles_note(manifest, store, session.registry, args.source)
    _emit(report, args.format, args.figures, args.html, args.verbose)
    if note:
        print(terminal_text(note), file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bnbench import frames
    from bnbench.store import is_store_file

    if not is_store_file(args.source) and args.source.suffix != ".toml":
        raise BnbenchError(f"{args.source} is neither a results store (SQLite) nor a manifest (.toml)")
    load = frames.load_runs if args.runs else frames.load_results
    frame = load(args.source, profile=args.profile, studies=args.study)
    frames.export(frame, args.output)
    what = "runs" if args.runs else "values"
    print(terminal_text(f"{len(frame)} {what} written to {args.output}"), file=sys.stderr)
    return 0


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def describe_entry(entry: Entry) -> dict[str, Any]:
    """A registered component as plain data: provider, description, options with defaults, traits."""
    from bnbench.api import resolve_traits

    options = []
    for name, field in entry.options.model_fields.items():
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        options.append(
            {
                "name": name,
                "type": _type_name(field.annotation),
                "required": required,
                "default": to_jsonable_python(default),
                "description": field.description or "",
            }
        )
    described: dict[str, Any] = {
        "kind": entry.kind,
        "name": entry.name,
        "plugin": entry.plugin.name,
        "package": entry.plugin.package,
        "version": entry.plugin.version,
        "description": entry.description,
        "options": options,
    }
    if entry.kind == "normalizer":
        try:  # traits may depend on the options: describe them at the defaults
            traits = resolve_traits(entry.extras.get("traits"), entry.options.model_validate({}))
            described["traits"] = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(traits).items()}
        except (TypeError, ValueError):  # required options (no defaults), or a broken traits function
            described["traits"] = None
        described["traits_depend_on_options"] = callable(entry.extras.get("traits"))
    return described


def _options_cell(options: list[dict[str, Any]]) -> str:
    """Each option with its default (or required) and its description."""
    lines = []
    for option in options:
        head = f"{option['name']} (required)" if option["required"] else f"{option['name']} = {option['default']!r}"
        lines.append(f"{head}: {option['description']}" if option["description"] else head)
    return "\n".join(lines) or "—"


def _traits_cell(traits: dict[str, Any] | None, depend_on_options: bool = False) -> str:
    if traits is None:
        return "?"
    if depend_on_options:
        return "depends on the options; at the defaults:\n" + _traits_cell(traits)
    words = []
    if traits["site_kinds"] != ["conv", "fc"]:
        words.append(f"{'/'.join(traits['site_kinds'])} sites only")
    flags = {
        "batch_dependent": "batch-dependent",
        "running_stats": "running stats",
        "needs_source": "needs source layer",
    }
    words += [text for key, text in flags.items() if traits[key]]
    if not traits["train_batch_of_one"]:
        words.append("batch ≥ 2 in training")
    if not traits["mixed_precision"]:
        words.append("no autocast")
    return "\n".join(words) or "per example"


PLURALS = {"analysis": "analyses"}


def cmd_plugins(args: argparse.Namespace) -> int:
    from bnbench.registry import load_registry
    from bnbench.session import open_session

    registry = open_session(args.manifest).registry if args.manifest else load_registry()
    kinds = args.kind or KINDS
    if args.json:
        components = [describe_entry(e) for kind in kinds for e in registry.entries(kind)]
        listing = {"bnbench": bnbench.__version__, "components": components, "broken": registry.broken}
        print(json.dumps(listing, indent=2))
        return 0
    for kind in kinds:
        rows = []
        for entry in registry.entries(kind):
            described = describe_entry(entry)
            package = f"{entry.plugin.package} {entry.plugin.version}" if entry.plugin.package else entry.plugin.name
            row = [entry.name, package, entry.description, _options_cell(described["options"])]
            if kind == "normalizer":
                row.append(_traits_cell(described["traits"], described["traits_depend_on_options"]))
            rows.append(row)
        headers = ["name", "package", "description", "options"]
        if kind == "normalizer":
            headers.append("traits")
        print(f"{PLURALS.get(kind, kind + 's')}:")
        print(tabulate(rows, headers=headers, tablefmt="simple", maxcolwidths=[None, 30, 40, 60, 24][: len(headers)]))
        print()
    for plugin, why in registry.broken.items():
        print(f"warning: plugin {plugin} failed to register: {why}", file=sys.stderr)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from bnbench.scaffold import new_plugin

    written = new_plugin(
        args.name,
        args.directory,
        kind=args.kind,
        distribution=args.distribution,
        module=args.module,
        component=args.component,
    )
    root = written[0].parent
    print("\n".join(str(path) for path in written))
    print(f"\nNext: pip install -e {root} && bnbench plugins --kind {args.kind} && python -m pytest {root / 'tests'}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "plan": cmd_plan,
    "report": cmd_report,
    "export": cmd_export,
    "plugins": cmd_plugins,
    "new-plugin": cmd_new_plugin,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.disable_plugin:  # in the environment, so that worker processes leave them out too
        os.environ[DISABLE_ENV] = ",".join(sorted(disabled_plugins() | set(args.disable_plugin)))
    try:
        return COMMANDS[args.command](args)
    except BnbenchError as exc:
        print(terminal_text(f"bnbench: error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except sqlite3.DatabaseError as exc:  # a store damaged after it opened (a page of random bytes), or unwritable
        if isinstance(exc, sqlite3.OperationalError):
            error = StoreError(f"cannot use the results store: {exc} (is its folder writable? the disk full?)")
        else:
            error = StoreError(f"the results store is damaged or unreadable ({type(exc).__name__}: {exc})")
        print(terminal_text(f"bnbench: error: {error}"), file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("bnbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
