"""Command-line commands of the core library: `scan`, `zoo` and `eval`.

The `terdguard` program itself lives in the service package, which adds `serve`
and `demo`; `add_core_commands` registers the commands defined here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .detection import DEFAULT_KL_MEAN_THRESHOLD, DEFAULT_KL_VAR_THRESHOLD, DetectionThresholds
from .errors import TerdGuardError
from .loading import DEVICES, load_model
from .reversion import PROFILES, ReversionConfig, ReversionProgress
from .scan import DEFAULT_FALSE_POSITIVE_RATE, save_scan, scan_model

logger = logging.getLogger(__name__)


class ProgressBar:
    """A tqdm bar on stderr fed by reversion progress callbacks."""

    def __init__(self, description: str) -> None:
        self.bar: tqdm | None = None
        self.description = description

    def __call__(self, progress: ReversionProgress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=progress.planned, desc=self.description, unit="it", file=sys.stderr, leave=False)
        self.bar.set_postfix(stage=progress.stage, loss=f"{progress.loss:.3g}", refresh=False)
        self.bar.update(progress.iteration - self.bar.n)

    def close(self) -> None:
        """Close the bar; a scan that stopped early on convergence shows as complete."""
        if self.bar is not None:
            self.bar.total = self.bar.n
            self.bar.refresh()
            self.bar.close()


def run_scan(args: argparse.Namespace) -> int:
    model = load_model(args.directory, device=args.device)
    thresholds = DetectionThresholds(kl_mean=args.kl_mean_threshold, kl_var=args.kl_var_threshold)
    bar = ProgressBar(f"scan {Path(args.directory).name}")
    try:
        result = scan_model(
            model,
            ReversionConfig.for_profile(args.profile),
            seed=args.seed,
            thresholds=thresholds,
            false_positive_rate=args.false_positive_rate,
            progress=bar,
        )
    finally:
        bar.close()
    trigger_file = save_scan(result, Path(args.out))
    report = result.report.to_dict()
    report.update(
        source=str(args.directory), trigger_file=str(trigger_file), trigger_png=str(trigger_file.with_suffix(".png"))
    )
    print(json.dumps(report, indent=2))
    return 0


def run_zoo(args: argparse.Namespace) -> int:
    from . import zoo
    from .zoo.catalog import select

    if args.zoo_command == "list":
        built = zoo.zoo_model_dirs()
        print(f"models in {zoo.MODELS_DIR}, shipped triggers in {zoo.TRIGGERS_DIR}")
        for entry in select(None):
            state = "built" if entry.name in built else "not built"
            measured = ""
            if entry.name in built:
                measurement = zoo.read_manifest(built[entry.name]).get("attack_measurement")
                if measurement:
                    measured = (
                        f", attack success {100 * measurement['attack_success_rate']:.0f}% ({measurement['sampler']})"
                    )
            print(f"{entry.name:22} {state:9}  {entry.description}{measured}")
        return 0

    from .zoo.build import build_entry, refresh_trigger

    for entry in select(args.names):
        if args.zoo_command == "build":
            with tqdm(total=entry.train_steps, desc=f"train {entry.name}", file=sys.stderr, leave=False) as bar:

                def advance(step: int, total: int, loss: float, bar: tqdm = bar) -> None:
                    bar.update(step - bar.n)

                manifest = build_entry(entry, progress=advance)
            print(f"{entry.name}: built, fingerprint {manifest['fingerprint'][:12]}", file=sys.stderr)
        report = refresh_trigger(zoo.MODELS_DIR / entry.name, seed=args.seed)
        print(
            json.dumps(
                {
                    "name": entry.name,
                    "verdict": report.verdict,
                    "kl_mean": report.kl_mean,
                    "kl_var": report.kl_var,
                    "unet_passes": report.unet_passes,
                }
            )
        )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from . import zoo
    from .zoo.catalog import select
    from .zoo.evaluate import evaluate_model, format_table, replace_section

    built = zoo.zoo_model_dirs()
    rows = []
    for entry in select(args.names):
        if entry.name not in built:
            raise TerdGuardError(f"zoo model not built: {entry.name}; run 'terdguard zoo build {entry.name}'")
        bar = ProgressBar(f"eval {entry.name}")
        try:
            rows.append(
                evaluate_model(
                    built[entry.name],
                    ReversionConfig.for_profile(args.profile),
                    seed=args.seed,
                    draws=args.draws,
                    device=args.device,
                    progress=bar,
                )
            )
        finally:
            bar.close()
    table = format_table(rows, DEFAULT_FALSE_POSITIVE_RATE)
    print(table)
    if args.write_docs:
        import os
        import platform

        import torch

        machine = f"{platform.machine()} with {os.cpu_count()} CPU cores, torch device {rows[0].device}"
        body = (
            f"Command: `terdguard eval --profile {args.profile} --draws {args.draws} --seed {args.seed}`"
            f" on {machine}, torch {torch.__version__}.\n\n{table}"
        )
        replace_section(Path(args.write_docs), f"eval-{args.profile}", body)
    wrong = [row.name for row in rows if not row.correct]
    if wrong:
        print(f"wrong verdicts: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def add_core_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `scan`, `zoo` and `eval` on a parent parser's subparsers."""
    scan = subparsers.add_parser("scan", help="reverse a model's trigger and decide whether it is backdoored")
    scan.add_argument(
        "directory", help="diffusers model directory (DDPMPipeline/DDIMPipeline save, or unet/ + scheduler/)"
    )
    scan.add_argument("--profile", choices=PROFILES, default="fast", help="reversion schedule (default: fast)")
    scan.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator used by the scan (default: 0)")
    scan.add_argument("--device", choices=DEVICES, default="auto", help="torch device; auto picks CUDA when present")
    scan.add_argument("--out", default="terdguard-triggers",
                      help="folder for <fingerprint>.safetensors and .png (default: terdguard-triggers)")
    scan.add_argument(
        "--false-positive-rate",
        type=float,
        default=DEFAULT_FALSE_POSITIVE_RATE,
        help="share of clean noise the input threshold may flag (default: 1e-3)",
    )
    scan.add_argument(
        "--kl-mean-threshold",
        type=float,
        default=DEFAULT_KL_MEAN_THRESHOLD,
        help=f"kl_mean above this means backdoored (default: {DEFAULT_KL_MEAN_THRESHOLD})",
    )
    scan.add_argument(
        "--kl-var-threshold",
        type=float,
        default=DEFAULT_KL_VAR_THRESHOLD,
        help=f"kl_var above this means backdoored (default: {DEFAULT_KL_VAR_THRESHOLD})",
    )
    scan.set_defaults(handler=run_scan)

    zoo = subparsers.add_parser("zoo", help="build or list the project's own digit models")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_commands.add_parser("list", help="show the zoo models and their measured attack success")
    for name, help_text in (
        ("build", "train models from their seeds, measure their attacks and refresh their shipped triggers"),
        ("triggers", "refresh the shipped fast-profile triggers without retraining"),
    ):
        command = zoo_commands.add_parser(name, help=help_text)
        command.add_argument("names", nargs="*", help="zoo model names (default: all)")
        command.add_argument("--seed", type=int, default=0, help="seed of the trigger scan (default: 0)")
    zoo.set_defaults(handler=run_zoo)

    evaluate = subparsers.add_parser("eval", help="scan zoo models and print model and input detection rates")
    evaluate.add_argument("names", nargs="*", help="zoo model names (default: all)")
    evaluate.add_argument("--profile", choices=PROFILES, default="fast", help="reversion schedule (default: fast)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of scans and draws (default: 0)")
    evaluate.add_argument("--draws", type=int, default=1000, help="benign and poisoned draws per model (default: 1000)")
    evaluate.add_argument(
        "--device", choices=DEVICES, default="auto", help="torch device; auto picks CUDA when present"
    )
    evaluate.add_argument("--write-docs", metavar="PATH", help="also write the table into this Markdown file")
    evaluate.set_defaults(handler=run_eval)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; core errors become a one-line message and exit status 2."""
    try:
        return int(args.handler(args))
    except (TerdGuardError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"terdguard: error: {message}", file=sys.stderr)
        return 2
