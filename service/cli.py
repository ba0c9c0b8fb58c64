"""The `terdguard` command: `serve` and `demo` here, plus the core's `scan`, `zoo` and `eval`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from terdguard.core.cli import add_core_commands, run_command

ROLES = ("guard", "sampler")
APP_FACTORIES = {
    "guard": "terdguard.service.app:create_app",
    "sampler": "terdguard.service.sampler:create_sampler_app",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Set up the root logger once, for the whole process."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .settings import Settings

    configure_logging(args.log_level)
    try:
        Settings()  # fail here with a readable message instead of inside uvicorn's start-up
    except ValidationError as error:
        print(f"terdguard serve: invalid settings:\n{error}", file=sys.stderr)
        return 2
    uvicorn.run(APP_FACTORIES[args.role], factory=True, host=args.host, port=args.port, log_config=None,
                log_level=args.log_level, access_log=False)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(url=args.url, model=args.model, out=args.out, api_key=args.api_key, sampler=args.sampler,
                    num_inference_steps=args.steps, seed=args.seed, wait_seconds=args.wait)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terdguard", description="Find noise-space backdoors in diffusion "
                                     "models and guard generation requests against them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server (settings come from TERDGUARD_* variables)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument("--role", choices=ROLES, default="guard",
                       help="guard: the full service; sampler: only POST /v1/sample, for a guard's "
                       "TERDGUARD_SAMPLER_URL (default: %(default)s)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="send one clean and one poisoned request to a running guard")
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="guard base URL (default: %(default)s)")
    demo.add_argument("--model", default="baddiffusion-sparse",
                      help="a backdoored zoo model registered on the guard (default: %(default)s)")
    demo.add_argument("--out", type=Path, default=Path("terdguard-demo"),
                      help="folder for the generated image and the trigger PNG (default: %(default)s)")
    demo.add_argument("--api-key", default=None, help="inference key, when the guard requires one")
    demo.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="(default: %(default)s)")
    demo.add_argument("--steps", type=int, default=50, help="denoising steps (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the demo noise (default: %(default)s)")
    demo.add_argument("--wait", type=float, default=600.0,
                      help="seconds to wait for the model to become ready (default: %(default)s)")
    demo.set_defaults(handler=_demo)

    add_core_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args)
